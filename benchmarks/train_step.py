"""Cost of one optimisation step, as ratios measured in the same run:

  (a) student, cross-entropy only     (b) teacher forward alone (inference mode)
  (c) KD      (d) SDD-KD      (e) SDD-DKD           -- each includes the teacher forward
  (f) MSDCRD  (g) SDD-DKD+MSDCRD                    -- MSDCRD-style (reconstructed), with its projection

Same student, teacher, batch and data for all. The goal is (e) <= 1.05 x ((a) + (b)): the multi-scale
local logits and the SDD weighting should cost next to nothing beyond running both networks; and
(g) <= 1.10 x (e): the contrastive terms add at most 10% to an SDD-DKD step.
The five cases are measured in interleaved rounds and each reports its median over rounds, so slow
drift of a noisy machine hits all of them alike.

    python benchmarks/train_step.py [--teacher resnet56 --student resnet20 --batch 64 --size 32]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch.nn import functional as F

from sddcompress.benchmarking.timer import measure
from sddcompress.engine.method_nets import detach_outputs, method_networks, split_outputs
from sddcompress.losses import Objective, make_method
from sddcompress.models import build_model
from sddcompress.models.local_logits import LocalLogits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="resnet56")
    ap.add_argument("--student", default="resnet20")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=5, help="timed steps per case per round")
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, args.classes, (args.batch,))
    teacher = build_model(args.teacher, args.classes, args.size).eval().requires_grad_(False)
    teacher_local = LocalLogits(teacher, args.size, (1, 2, 4), args.teacher).eval()
    student = build_model(args.student, args.classes, args.size).train()
    student_local = LocalLogits(student, args.size, (1, 2, 4), args.student)
    opt = torch.optim.SGD(student.parameters(), lr=1e-4, momentum=0.9)  # tiny lr: weights barely move
    objectives = {m: Objective(make_method(m)) for m in ("kd", "sdd-kd", "sdd-dkd")}
    msd_nets = {}
    for m in ("msdcrd", "sdd-dkd+msdcrd"):
        s_net, t_net = method_networks(student, teacher, args.size, make_method(m), args.student, args.teacher)
        opt.add_param_group({"params": list(s_net.msd.parameters())})  # the projection trains with the student
        msd_nets[m] = (s_net.train(), t_net.eval(), Objective(make_method(m)))

    def ce_step() -> None:
        loss = F.cross_entropy(student(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def teacher_forward() -> None:
        with torch.inference_mode():
            teacher(x)

    def distill_step(method: str):
        local = method.startswith("sdd")

        def step() -> None:
            with torch.inference_mode():
                t_out = teacher_local(x) if local else (teacher(x), None)
            t_logits, t_loc = t_out[0].clone(), (t_out[1].clone() if local else None)
            s_logits, s_loc = student_local(x) if local else (student(x), None)
            terms = objectives[method](s_logits, y, teacher_logits=t_logits, student_local=s_loc,
                                       teacher_local=t_loc, epoch_progress=100.0)
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            opt.step()
        return step

    def msd_step(method: str):
        s_net, t_net, objective = msd_nets[method]

        def step() -> None:
            with torch.inference_mode():
                t_out = split_outputs(t_net(x))
            t_logits, t_loc, t_msd = detach_outputs(t_out)  # clones made outside inference mode, as the trainer does
            s_logits, s_loc, s_msd = split_outputs(s_net(x))
            terms = objective(s_logits, y, teacher_logits=t_logits, student_local=s_loc, teacher_local=t_loc,
                              epoch_progress=100.0, student_msd=s_msd, teacher_msd=t_msd)
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            opt.step()
        return step

    cases = {"(a) student CE": ce_step, "(b) teacher forward": teacher_forward, "(c) KD": distill_step("kd"),
             "(d) SDD-KD": distill_step("sdd-kd"), "(e) SDD-DKD": distill_step("sdd-dkd"),
             "(f) MSDCRD": msd_step("msdcrd"), "(g) SDD-DKD+MSDCRD": msd_step("sdd-dkd+msdcrd")}
    per_round: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(args.rounds):
        for name, fn in cases.items():
            per_round[name].append(measure(fn, warmup=2 if r == 0 else 1, min_iters=args.iters).p50)
    p50 = {k: statistics.median(v) for k, v in per_round.items()}
    a, b = p50["(a) student CE"], p50["(b) teacher forward"]
    print(f"one step, {args.student} <- {args.teacher}, batch {args.batch} at {args.size}px, {args.classes} classes, "
          f"{torch.get_num_threads()} threads; median over {args.rounds} rounds of the p50 of {args.iters} steps")
    print(f"{'case':<22}{'ms':>10}{'x (a)':>8}{'x (a)+(b)':>11}")
    for name, ms in p50.items():
        print(f"{name:<22}{ms:>10.2f}{ms / a:>8.2f}{ms / (a + b):>11.2f}")
    ratio = p50["(e) SDD-DKD"] / (a + b)
    print(f"goal (e) <= 1.05 x ((a)+(b)): {ratio:.3f} -> {'met' if ratio <= 1.05 else 'NOT met'}")
    msd_ratio = p50["(g) SDD-DKD+MSDCRD"] / p50["(e) SDD-DKD"]
    print(f"goal (g) <= 1.10 x (e): {msd_ratio:.3f} -> {'met' if msd_ratio <= 1.10 else 'NOT met'}")


if __name__ == "__main__":
    main()
