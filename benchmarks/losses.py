"""Forward+backward cost of KD, DKD, SDD-KD, SDD-DKD, MSDCRD and SDD-DKD+MSDCRD losses (B=64, K=100, N=21).

The logit losses take logits; the MSDCRD-style terms also take (B, N, D) region embeddings (D=256, a
wide teacher's width; the student's are normalised inside the step so their gradient is included)
and the teacher's region logits. Local logits are laid out as the networks give them (contiguous
(B, K, N), a Linear head's layout). Prints each as a ratio to KD measured in the same run, plus bytes
allocated per step (CUDA: peak memory), and the fused SDD-KD / SDD-DKD terms alone against the per-region
composition they replace (`sdd_loss` over the per-sample KD / DKD terms, as the official code computes them:
every region a row of one batch); the goal for SDD-DKD is at most 0.5x.
Run: python benchmarks/losses.py [--device cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import os

import torch
from torch.nn import functional as F

from sddcompress.benchmarking.timer import measure
from sddcompress.losses import (
    Objective, dkd_per_sample, kd_per_sample, make_method, sdd_dkd_loss, sdd_kd_loss, sdd_loss,
)


@contextlib.contextmanager
def quiet_stderr():
    """The CPU profiler's C++ side logs start/stop lines to fd 2; keep the table readable."""
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def allocated_bytes(step, device: str) -> int:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        step()
        return torch.cuda.max_memory_allocated()
    with quiet_stderr(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                profile_memory=True) as prof:
        step()
    return sum(max(e.self_cpu_memory_usage, 0) for e in prof.events())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--dim", type=int, default=256, help="MSDCRD embedding width")
    args = ap.parse_args()
    b, k, n, dev = args.batch, args.classes, 21, args.device
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, k, (b,), generator=g).to(dev)
    # local logits (B, K, N) as LocalLogits returns them for a Linear head: contiguous
    s_leaf = torch.randn(b, k, n, generator=g).to(dev).requires_grad_()
    t_local = torch.randn(b, k, n, generator=g).to(dev)
    s_raw = torch.randn(b, n, args.dim, generator=g).to(dev).requires_grad_()
    t_msd = {"embedding": F.normalize(torch.randn(b, n, args.dim, generator=g), dim=2).to(dev),
             "region_logits": t_local.transpose(1, 2).contiguous()}  # (B, N, K)
    sync = torch.cuda.synchronize if dev.startswith("cuda") else None

    rows = {}
    bare = {  # the SDD terms alone: the fused expressions, and the per-region composition they replace
        "sdd-kd, composed": lambda s: sdd_loss(s, t_local, y, lambda a, c, yy: kd_per_sample(a, c, 4.0), 2.0),
        "sdd-dkd, composed": lambda s: sdd_loss(s, t_local, y, lambda a, c, yy: dkd_per_sample(a, c, yy, 4.0, 1.0, 8.0),
                                                2.0),
        "sdd-kd, fused": lambda s: sdd_kd_loss(s, t_local, y, 4.0, 2.0),
        "sdd-dkd, fused": lambda s: sdd_dkd_loss(s, t_local, y, 4.0, 1.0, 8.0, 2.0)}
    for name, terms in bare.items():
        def composed_step(terms=terms) -> None:
            s_leaf.grad = None
            sum(terms(s_leaf).values()).backward()

        stats = measure(composed_step, warmup=10, min_iters=args.iters, sync=sync)
        rows[name] = (stats.p50, allocated_bytes(composed_step, dev))
    for name in ("kd", "dkd", "sdd-kd", "sdd-dkd", "msdcrd", "sdd-dkd+msdcrd"):
        method = make_method(name)
        objective, msd = Objective(method), method.uses_msd

        def step() -> None:
            s_leaf.grad = s_raw.grad = None
            s_local = s_leaf
            s_msd = {"embedding": F.normalize(s_raw, dim=2)} if msd else None
            out = objective(s_local[:, :, 0], y, teacher_logits=t_local[:, :, 0], student_local=s_local,
                            teacher_local=t_local, epoch_progress=100.0, student_msd=s_msd,
                            teacher_msd=t_msd if msd else None)
            out["loss"].backward()

        stats = measure(step, warmup=10, min_iters=args.iters, sync=sync)
        rows[name] = (stats.p50, allocated_bytes(step, dev))
    base = rows["kd"][0]
    print(f"loss fwd+bwd, B={b} K={k} N={n} on {dev} ({torch.get_num_threads()} threads), p50 of {args.iters}")
    print(f"{'method':<18}{'p50 ms':>10}{'x KD':>8}{'MB alloc':>10}")
    for name, (p50, mem) in rows.items():
        print(f"{name:<18}{p50:>10.3f}{p50 / base:>8.2f}{mem / 2**20:>10.2f}")
    for name in ("sdd-kd", "sdd-dkd"):
        print(f"{name} terms: fused / composed {rows[name + ', fused'][0] / rows[name + ', composed'][0]:.2f}")


if __name__ == "__main__":
    main()
