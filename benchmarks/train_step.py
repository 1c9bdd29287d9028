"""Cost of one optimisation step, as ratios measured in the same run:

  (a) student, cross-entropy only     (b) teacher forward alone (inference mode)
  (c) KD      (d) SDD-KD      (e) SDD-DKD           -- each includes the teacher forward
  (f) MSDCRD  (g) SDD-DKD+MSDCRD                    -- MSDCRD-style (reconstructed), with its projection

Same student weights, teacher, batch and data for all (each case trains its own copy of the student,
so one case's optimiser never reads another's gradients). The goals are (e) <= 1.05 x ((a) + (b)) on
a CPU and <= 1.10 on a GPU: the multi-scale local logits and the SDD weighting should cost next to
nothing beyond running both networks; and (g) <= 1.10 x (e): the contrastive terms add at most 10% to
an SDD-DKD step. Cases are measured in interleaved rounds and each reports its median over rounds,
so slow drift of a noisy machine hits all of them alike.

Beside each time: the ATen operators one eager step dispatches (counted with a TorchDispatchMode; on
a GPU each is at least one kernel launch, so this is the launch cost visible on any machine), and the
goal that the SDD-DKD step dispatches at most 40 more than the KD step. With `--step graph` (the
default on CUDA) each case runs as the trainer runs it there: the step recorded once as a CUDA graph
(`CapturedStep`) and replayed, then the optimiser step -- launches per step: one replay plus the
operators outside the graph, also counted.

On a CPU the steps run with freed buffers kept on the heap, as the trainer runs them
(`--host-memory glibc-default` measures glibc's own thresholds instead; a process-wide setting, so the
two are separate runs).

    python benchmarks/train_step.py [--teacher resnet56 --student resnet20 --batch 64 --size 32]
    python benchmarks/train_step.py --device cuda --precision bf16 [--step eager]

The paper recipe's epochs and 240-epoch projection come from benchmarks/paper_recipe.py (the real trainer).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sddcompress.benchmarking.timer import measure
from sddcompress.engine.captured_step import CapturedStep, EpochTally
from sddcompress.engine.host_memory import keep_freed_memory
from sddcompress.engine.method_nets import distillation_terms, method_networks
from sddcompress.losses import Objective, make_method
from sddcompress.models import build_model

METHODS = {"(c) KD": "kd", "(d) SDD-KD": "sdd-kd", "(e) SDD-DKD": "sdd-dkd", "(f) MSDCRD": "msdcrd",
           "(g) SDD-DKD+MSDCRD": "sdd-dkd+msdcrd"}
OPS_GOAL = 40  # at most this many more ATen operators in an SDD-DKD step than in a KD step


class _CountOps(TorchDispatchMode):
    """Counts the ATen operators dispatched while active (views and in-place ops included)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn) -> int:
    with _CountOps() as counter:
        fn()
    return sum(counter.ops.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="resnet56")
    ap.add_argument("--student", default="resnet20")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=5, help="timed steps per case per round")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="no", choices=("no", "bf16"), help="autocast dtype on the GPU")
    ap.add_argument("--step", default=None, choices=("graph", "eager"),
                    help="graph: each step recorded as a CUDA graph and replayed, as the trainer does on CUDA "
                         "[default: graph on CUDA, eager elsewhere]")
    ap.add_argument("--host-memory", default="keep", choices=("keep", "glibc-default"),
                    help="on a CPU: keep freed buffers on the heap as the trainer does (keep), or glibc's own "
                         "thresholds, to measure what keeping them buys (run once each, in turn)")
    args = ap.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    graph = (args.step or ("graph" if cuda else "eager")) == "graph"
    if graph and not cuda:
        ap.error("--step graph needs --device cuda")
    if not cuda and args.host_memory == "keep":
        keep_freed_memory()  # as the trainer does on a CPU
    fmt = torch.channels_last if cuda else torch.contiguous_format
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    teacher = build_model(args.teacher, args.classes, args.size).eval().requires_grad_(False)
    teacher.to(device, memory_format=fmt)
    student0 = build_model(args.student, args.classes, args.size).train()
    autocast_dtype = torch.bfloat16 if cuda and args.precision == "bf16" else None
    autocast = (torch.autocast("cuda", dtype=autocast_dtype, cache_enabled=not graph) if autocast_dtype
                else contextlib.nullcontext())

    def case(method: str):
        """(step, ops of one eager step, ops outside the graph per replayed step or None) for `method`."""
        student = copy.deepcopy(student0)
        spec = make_method(method)
        s_net, t_net = method_networks(student, teacher if spec.uses_teacher else None, args.size, spec,
                                       args.student, args.teacher)
        s_net.to(device, memory_format=fmt).train()
        if t_net is not None:
            t_net.to(device, memory_format=fmt).eval()
        opt = torch.optim.SGD(s_net.parameters(), lr=1e-4, momentum=0.9, fused=cuda or None)  # tiny lr
        objective = Objective(spec)

        def eager() -> None:
            with autocast:
                terms, _ = distillation_terms(objective, s_net, t_net, x, y, 100.0)  # as the trainer computes
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            opt.step()

        eager()  # optimiser state and lazily built tables exist before counting
        ops = count_ops(eager)
        if not graph:
            return eager, ops, None
        captured = CapturedStep(s_net, t_net, objective, EpochTally(device), autocast_dtype=autocast_dtype)
        captured.set_epoch(100, 1)  # past every warm-up ramp, as the eager step above

        def replayed() -> None:
            captured(x, y)
            opt.step()

        replayed()  # records the graph
        return replayed, ops, count_ops(replayed)

    def teacher_forward() -> None:
        with torch.inference_mode(), autocast:
            teacher(x)

    teacher_case = (teacher_forward, count_ops(teacher_forward), None)
    if graph:
        static = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            teacher_forward()
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(static, stream=side):
            teacher_forward()
        teacher_case = (static.replay, teacher_case[1], 0)
    cases = {"(a) student CE": case("ce"), "(b) teacher forward": teacher_case,
             **{name: case(method) for name, method in METHODS.items()}}

    def synced(fn):
        def run() -> None:
            fn()
            if cuda:
                torch.cuda.synchronize()
        return run

    per_round: dict[str, list[float]] = {k: [] for k in cases}
    timed = {name: synced(fn) for name, (fn, _, _) in cases.items()}
    for r in range(args.rounds):
        for name, fn in timed.items():
            per_round[name].append(measure(fn, warmup=2 if r == 0 else 1, min_iters=args.iters).p50)
    p50 = {k: statistics.median(v) for k, v in per_round.items()}
    a, b = p50["(a) student CE"], p50["(b) teacher forward"]
    where = (torch.cuda.get_device_name(device) + (", bf16 autocast" if autocast_dtype else "")
             if cuda else f"{torch.get_num_threads()} threads, host memory {args.host_memory}")
    print(f"one step, {args.student} <- {args.teacher}, batch {args.batch} at {args.size}px, {args.classes} classes, "
          f"{where}, {'CUDA-graph' if graph else 'eager'} step; median over {args.rounds} rounds of the p50 of "
          f"{args.iters} steps")
    launches = "launches/step" if graph else ""
    print(f"{'case':<22}{'ms':>10}{'x (a)':>8}{'x (a)+(b)':>11}{'eager ops':>11}{launches:>15}")
    for name, ms in p50.items():
        outside = cases[name][2]
        launch = f"1 graph + {outside}" if outside is not None else ""
        print(f"{name:<22}{ms:>10.2f}{ms / a:>8.2f}{ms / (a + b):>11.2f}{cases[name][1]:>11}{launch:>15}")
    limit = 1.10 if cuda else 1.05
    ratio = p50["(e) SDD-DKD"] / (a + b)
    print(f"goal (e) <= {limit:.2f} x ((a)+(b)): {ratio:.3f} -> {'met' if ratio <= limit else 'NOT met'}")
    msd_ratio = p50["(g) SDD-DKD+MSDCRD"] / p50["(e) SDD-DKD"]
    print(f"goal (g) <= 1.10 x (e): {msd_ratio:.3f} -> {'met' if msd_ratio <= 1.10 else 'NOT met'}")
    extra = cases["(e) SDD-DKD"][1] - cases["(c) KD"][1]
    print(f"goal SDD-DKD step <= KD step + {OPS_GOAL} ATen operators (eager): +{extra} -> "
          f"{'met' if extra <= OPS_GOAL else 'NOT met'}")


if __name__ == "__main__":
    main()
