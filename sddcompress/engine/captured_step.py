"""The training step as one CUDA graph, and the device-side tally of an epoch that both step kinds share.

On a GPU a distillation step of small networks is bound by kernel launches and Python dispatch, not
arithmetic: hundreds of tiny kernels per step. `CapturedStep` records the whole step once -- teacher
forward, student forward, the objective (SDD regions, DKD, MSDCRD terms), backward, gradient
clipping and the epoch's running sums and non-finite flag -- as a `torch.cuda.CUDAGraph`, then replays
it for every batch: one launch instead of hundreds. The optimiser step follows the replay, outside the
graph (fused SGD on CUDA: one kernel over all parameters), so its learning rate stays a plain float
that the schedule changes freely.

What a replay reads and writes lives at fixed device addresses: the input batch is copied into static
buffers, the ramp of the distillation terms is computed on the device from the step index, and the
gradients are the ones the capture allocated (a replay overwrites them: nothing may set them to None).
Shapes are fixed by construction: the training loader drops the last partial batch.

Capture runs a few warm-up steps first (cuDNN autotuning, lazily built buffers), on a side stream
as CUDA requires; they change no weights (no optimiser step) and the batch-norm statistics and tally
they touch are restored afterwards, so a captured run trains on exactly the batches an eager one does.

Without `capture` (on a CPU) the same step runs eagerly, each call exactly what a replay computes:
the tests compare it with the trainer's eager step.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from .method_nets import distillation_terms


class CaptureFailed(RuntimeError):
    """The step could not be recorded as a CUDA graph; the message says why (one line)."""


class EpochTally:
    """The epoch's running sums of every loss term, its correct/seen/batch counts (seen: labelled images),
    the index of the first micro-batch whose loss was NaN/inf (-1: none) and the index of the next
    micro-batch: device tensors updated in place, so a captured step can keep them without a host sync."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.sums: dict[str, torch.Tensor] = {}
        self.bad_at = torch.full((), -1, dtype=torch.long, device=self.device)
        self.index = torch.zeros((), dtype=torch.long, device=self.device)

    def reset(self, start_index: int = 0, sums: dict[str, float] | None = None) -> None:
        """Start an epoch at micro-batch `start_index`, from `sums` (a resumed epoch's) or zeros; in place."""
        sums = sums or {}
        for name in set(sums) | set(self.sums):
            self._sum(name).fill_(float(sums.get(name, 0.0)))
        self.bad_at.fill_(-1)
        self.index.fill_(start_index)

    def _sum(self, name: str) -> torch.Tensor:
        if name not in self.sums:
            self.sums[name] = torch.zeros((), dtype=torch.float32, device=self.device)
        return self.sums[name]

    def add(self, terms: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        """Count one micro-batch: its terms, its labels, and whether its loss was finite."""
        for name, value in terms.items():
            self._sum(name).add_(value.detach().float())
        self._sum("seen").add_((labels >= 0).sum())  # train top-1 is over the labelled images (-1: unlabelled)
        self._sum("batches").add_(1)
        self.bad_at.copy_(torch.where((self.bad_at < 0) & ~torch.isfinite(terms["loss"].detach()), self.index,
                                      self.bad_at))
        self.index.add_(1)

    def skip(self) -> None:
        """A micro-batch that was not counted (a skipped non-finite loss)."""
        self.index.add_(1)

    def floats(self) -> dict[str, float]:
        """The sums as plain floats (one host-device sync)."""
        if not self.sums:
            return {}
        values = torch.stack(list(self.sums.values())).tolist()
        return dict(zip(self.sums, values))


class CapturedStep:
    """`step(images, labels) -> terms`: forward, objective, backward, clipping and tally of one batch.

    The caller runs the optimiser step after it. With `capture` (CUDA) the work is recorded as a CUDA
    graph at the first call and replayed afterwards; the returned terms are static tensors that the
    next call overwrites."""

    def __init__(self, student_net: nn.Module, teacher_net: nn.Module | None, objective: Callable,
                 tally: EpochTally, *, clip_grad_norm: float = 0.0, autocast_dtype: torch.dtype | None = None,
                 capture: bool = True, warmup_steps: int = 2, compile_student: bool = False) -> None:
        self.student_net, self.teacher_net, self.objective, self.tally = student_net, teacher_net, objective, tally
        self.params = [p for p in student_net.parameters() if p.requires_grad]
        self.clip_grad_norm = clip_grad_norm
        self.autocast_dtype = autocast_dtype
        self.capture, self.warmup_steps = capture, warmup_steps
        self._forward = torch.compile(student_net) if compile_student else student_net
        device = tally.device
        self.epoch = torch.zeros((), dtype=torch.float32, device=device)
        self.steps = torch.ones((), dtype=torch.float32, device=device)
        self.images: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.terms: dict[str, torch.Tensor] = {}
        self.graph: torch.cuda.CUDAGraph | None = None

    def set_epoch(self, epoch: int, steps: int) -> None:
        """The epoch being trained and its number of micro-batches (the ramp's progress is
        epoch + (index + 1) / steps, as in the eager step)."""
        self.epoch.fill_(float(epoch))
        self.steps.fill_(float(steps))

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        # no weight-cast cache: cached casts would be freed when the recorded context exits
        return torch.autocast(self.tally.device.type, dtype=self.autocast_dtype, cache_enabled=False)

    def _student(self, images: torch.Tensor):
        with self._autocast():
            return self._forward(images)

    def _body(self) -> dict[str, torch.Tensor]:
        progress = self.epoch + (self.tally.index + 1).float() / self.steps
        terms, s_logits = distillation_terms(self.objective, self._student, self.teacher_net, self.images,
                                             self.labels, progress, teacher_context=self._autocast())
        terms["loss"].backward()
        if self.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad_norm, foreach=True)
        terms["correct"] = (s_logits.detach().argmax(1) == self.labels).sum()
        self.tally.add(terms, self.labels)
        return {k: v.detach() for k, v in terms.items()}

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.images is None:
            self.images, self.labels = images.clone(), labels.clone()
            if self.capture:
                self._record()
        else:
            self.images.copy_(images, non_blocking=True)
            self.labels.copy_(labels, non_blocking=True)
        if self.graph is not None:
            self.graph.replay()
            return self.terms
        for p in self.params:  # as a replay: the gradients are written, not accumulated
            p.grad = None
        return self._body()

    def _record(self) -> None:
        """Warm up and capture one step on a side stream (the same one, so that library handles and
        workspaces exist before the capture), then restore what the warm-up changed. A capture that
        fails leaves the state as it found it and raises CaptureFailed."""
        buffers = list(self.student_net.buffers())
        saved_buffers = [b.clone() for b in buffers]
        start, sums = int(self.tally.index), self.tally.floats()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.stream(side):
                for _ in range(self.warmup_steps):
                    for p in self.params:
                        p.grad = None
                    self._body()
            for p in self.params:  # the capture allocates the gradients the replays will write
                p.grad = None
            with torch.cuda.graph(graph, stream=side):
                self.terms = self._body()
        except Exception as exc:  # noqa: BLE001 - any failure: the trainer falls back to the eager step
            for p in self.params:
                p.grad = None
            self.images = self.labels = None
            raise CaptureFailed(f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}") from exc
        finally:
            torch.cuda.current_stream().wait_stream(side)
            for buffer, value in zip(buffers, saved_buffers):
                buffer.copy_(value)
            self.tally.reset(start, sums)
        self.graph = graph
