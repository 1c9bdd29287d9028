"""Which preprocessing record a train/distill run's images follow: the data's own, or what pretrained
weights in the run expect (the model's or student's `--pretrained`, the teacher's `--teacher-pretrained`,
or a teacher checkpoint trained on other statistics, e.g. fine-tuned from ImageNet weights). A teacher
checkpoint always counts: a pretrained student must not feed it images normalised otherwise."""

from __future__ import annotations

from pathlib import Path

from ..data import DataBundle
from ..data.preprocessing import ValidationPreprocessing, at_input_size, model_preprocessing
from ..errors import UserError
from ..models.pretrained import expected_preprocessing
from .checkpoint import load_checkpoint
from .config import TrainConfig, train_out


def weights_preprocessing(cfg: TrainConfig, uses_teacher: bool,
                          bundle: DataBundle) -> tuple[str, ValidationPreprocessing] | None:
    """(whose, record at the data's input size) when weights in this run expect other preprocessing than
    the data's; None when they do not. Teacher and student see the same images, so their statistics must
    agree (the teacher's record wins on geometry: it is fixed, the student learns)."""
    size = bundle.input_size
    wanted: list[tuple[str, ValidationPreprocessing]] = []
    if uses_teacher and cfg.teacher:
        path = cfg.teacher_ckpt or Path(train_out(cfg.teacher, cfg.data)) / "checkpoints" / "best.pt"
        if cfg.teacher_ckpt is None and cfg.teacher_pretrained:
            wanted.append((f"the pretrained teacher {cfg.teacher}", expected_preprocessing(cfg.teacher)))
        elif Path(path).is_file():  # a file that does not say (from elsewhere) is taken to expect the data's
            record = model_preprocessing(load_checkpoint(path)) or bundle.preprocessing
            wanted.append((f"the teacher checkpoint {path}", record))
    if cfg.pretrained:
        wanted.append((f"the pretrained {cfg.model}", expected_preprocessing(cfg.model)))
    if not wanted or (len(wanted) == 1 and at_input_size(wanted[0][1], size) == bundle.preprocessing):
        return None
    (first, spec), rest = wanted[0], wanted[1:]
    for who, other in rest:
        if (other.mean, other.std) != (spec.mean, spec.std):
            raise UserError(f"{first} expects images normalised with mean {spec.mean} / std {spec.std}, {who} with "
                            f"{other.mean} / {other.std}; teacher and student see the same images: pick weights "
                            "that agree (e.g. fine-tune the teacher with `train --pretrained` too, or start the "
                            "student from scratch)")
    return first, at_input_size(spec, size)
