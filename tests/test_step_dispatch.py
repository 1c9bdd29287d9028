"""The eager SDD-DKD step dispatches at most `OPS_GOAL` ATen operators more than the KD step, counted as
`benchmarks/train_step.py` counts them (each is at least one kernel launch on a GPU; the count is exact)."""

from __future__ import annotations

import copy

import torch

from sddcompress.engine.method_nets import distillation_terms, method_networks
from sddcompress.losses import Objective, make_method
from sddcompress.models import build_model

from helpers import load_benchmark


def test_sdd_dkd_step_dispatches_at_most_the_goal_more_than_kd():
    bench = load_benchmark("train_step")
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 100, (2,))
    teacher = build_model("resnet56", 100, 32).eval().requires_grad_(False)
    student0 = build_model("resnet20", 100, 32).train()
    counts = {}
    for method in ("kd", "sdd-dkd"):
        spec = make_method(method)
        s_net, t_net = method_networks(copy.deepcopy(student0), teacher, 32, spec, "resnet20", "resnet56")
        opt = torch.optim.SGD(s_net.parameters(), lr=1e-4, momentum=0.9)
        objective = Objective(spec)

        def step() -> None:
            terms, _ = distillation_terms(objective, s_net, t_net, x, y, 100.0)
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            opt.step()

        step()  # optimiser state and cached tables exist before counting, as in the benchmark
        counts[method] = bench.count_ops(step)
    extra = counts["sdd-dkd"] - counts["kd"]
    assert 0 < extra <= bench.OPS_GOAL, counts
