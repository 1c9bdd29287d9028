"""The options of `sddcompress export --qat-epochs` (kept apart from the training code: the CLI reads them
at start-up without importing torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class QatOptions:
    epochs: float = 0.0  # passes over the training images; 0 = no quantization-aware training
    lr: float = 3e-4  # SGD (momentum 0.9), cosine to 0, gradient norm clipped to 1
    batch_size: int = 64
    teacher_ckpt: str | None = None  # default: the teacher the run was distilled from

    def validate(self) -> None:
        if not (math.isfinite(self.epochs) and self.epochs >= 0):
            raise UserError(f"--qat-epochs must be a number >= 0, got {self.epochs}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"--qat-lr must be a number > 0, got {self.lr}")
        if self.batch_size < 1:
            raise UserError(f"--qat-batch-size must be >= 1, got {self.batch_size}")
