"""Checkpoints: written atomically, loaded without unpickling code, checked against the model."""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sddcompress_export.atomic import atomic_write
from sddcompress_export.file_checks import describe_os_error, existing_file

from .. import __version__
from ..errors import UserError

FORMAT = "sddcompress-checkpoint-v1"
FOREIGN = "foreign"  # a state dict from elsewhere, see models/foreign_checkpoints.py


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save through a temp file beside `path`, flushed to disk and renamed over it (`atomic_write`).

    The bytes are serialised in memory first, so a full disk surfaces as an OSError (ENOSPC/EFBIG)
    from the write, not as torch's opaque zip-writer RuntimeError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda temp: temp.write_bytes(buffer.getbuffer()), durable=True)


class NonFiniteWeights(UserError):
    """A model holds NaN/inf weights: it is never saved, and a checkpoint holding them is refused."""


def nonfinite_tensors(state_dict: dict) -> list[str]:
    """Names of the floating-point tensors in `state_dict` that hold a NaN or an inf."""
    return [k for k, v in state_dict.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def require_finite_weights(state_dict: dict, epochs_done: int) -> None:
    """NonFiniteWeights if any weight is NaN/inf: such a model is never saved."""
    bad = nonfinite_tensors(state_dict)
    if bad:
        raise NonFiniteWeights(
            f"the weights became non-finite ({len(bad)} tensors, e.g. {bad[0]}) after {epochs_done} finished "
            "epoch(s); nothing was saved, so the last good checkpoint is intact; lower --lr, use --precision no, "
            "or allow fewer --skip-nonfinite steps")


class CheckpointWriteError(UserError):
    """The file system refused a checkpoint (disk full, read-only, permission); the last one is intact."""


def save_checkpoint(record: dict, paths: list[Path]) -> None:
    """Atomically write `record` to each path, unless its model weights are non-finite (NonFiniteWeights)."""
    require_finite_weights(record["model"]["state_dict"], record.get("epoch", 0))
    for path in paths:
        try:
            atomic_save(record, path)
        except OSError as exc:
            exc.filename = exc.filename or str(path)
            raise CheckpointWriteError(describe_os_error(exc, "cannot save checkpoint") + " (the last good "
                                       "checkpoint is intact; re-running the command resumes from it)") from None


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint without unpickling code; a missing, unreadable, corrupt or unsafe file is a UserError.

    Our own checkpoints come back as written. Any other file holding a state dict (plain, nested under
    model/state_dict/net, `module.`-prefixed, .safetensors, the CIFAR teacher zoo) comes back as
    {"format": "foreign", "model": {"state_dict": ...}, "facts": {...}}; `load_model_weights` maps it.
    """
    from ..models.foreign_checkpoints import find_state_dict, read_weights_file

    path = existing_file(path, "checkpoint", "pass the .pt file written by train/distill (RUN/checkpoints/best.pt)",
                         error=UserError)
    try:
        ckpt = read_weights_file(path)
    except OSError as exc:
        raise UserError(describe_os_error(exc, "cannot read checkpoint")) from None
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
        if not isinstance(ckpt.get("model"), dict) or not isinstance(ckpt["model"].get("state_dict"), dict):
            raise UserError(f"checkpoint '{path}' is damaged (no model weights); use another checkpoint")
        return ckpt
    state, facts = find_state_dict(ckpt, path)
    return {"format": FOREIGN, "model": {"state_dict": state}, "facts": facts}


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_record(name: str, model: nn.Module, num_classes: int, input_size: int, imagenet_stem: bool = False) -> dict:
    """`imagenet_stem`: the network was built as published (pretrained layout), not as its small-input variant."""
    record = {"name": name, "num_classes": num_classes, "input_size": input_size,
              "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    if imagenet_stem:
        record["imagenet_stem"] = True
    return record


def load_model_weights(model: nn.Module, ckpt: dict, expected_name: str, num_classes: int, path: str,
                       class_fix: str | None = None) -> None:
    """Copy checkpoint weights into `model`; architecture or class-count mismatch is a UserError (naming
    `class_fix` as the fix for a state dict with another class count, when given)."""
    if ckpt.get("format") == FOREIGN:
        from ..models.foreign_checkpoints import fit_state_dict

        state, layout = fit_state_dict(model, expected_name, num_classes, ckpt["model"]["state_dict"], path,
                                       class_fix)
        ckpt["layout"] = layout
        _require_floating(model, state, expected_name, path)
        model.load_state_dict(state)
        return
    record = ckpt["model"]
    saved_name = record.get("name")
    if saved_name is not None and saved_name != expected_name:
        raise UserError(f"checkpoint '{path}' holds a '{saved_name}', not a '{expected_name}'; pass the "
                        f"matching model name or checkpoint")
    saved_classes = record.get("num_classes")
    if saved_classes is not None and saved_classes != num_classes:
        raise UserError(f"checkpoint '{path}' has {saved_classes} classes but the data has {num_classes}; "
                        "use a checkpoint trained on this dataset")
    state = record["state_dict"]
    bad = nonfinite_tensors(state)
    if bad:
        raise NonFiniteWeights(f"checkpoint '{path}' holds non-finite weights ({len(bad)} tensors, e.g. {bad[0]}): "
                               "it comes from a diverged run; use an earlier checkpoint or train again")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape_bad = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shape_bad:
        detail = (f"{len(missing)} missing, {len(unexpected)} unexpected, {len(shape_bad)} wrong-shape tensors"
                  + (f" (e.g. {(missing + unexpected + shape_bad)[0]})"))
        raise UserError(f"checkpoint '{path}' does not fit '{expected_name}' with {num_classes} classes: {detail}")
    _require_floating(model, state, expected_name, path)
    model.load_state_dict(state)


def _require_floating(model: nn.Module, state: dict, expected_name: str, path: str) -> None:
    """A UserError if a tensor the model keeps in floating point is stored as integers or booleans:
    load_state_dict would cast it silently, and whatever the values were, the model would be dead."""
    own = model.state_dict()
    bad = [(k, v.dtype) for k, v in state.items()
           if k in own and own[k].is_floating_point() and isinstance(v, torch.Tensor) and not v.is_floating_point()]
    if bad:
        name, dtype = bad[0]
        raise UserError(f"checkpoint '{path}' stores {len(bad)} of the '{expected_name}' weights as integers (e.g. "
                        f"{name} as {str(dtype).replace('torch.', '')}) where the model's are floating point: the "
                        "file is damaged or was converted wrongly; save the weights as float32")


def rng_state() -> dict:
    """The state of every random generator this process uses (python, numpy, torch, cuda)."""
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def base_record(**fields: Any) -> dict:
    return {"format": FORMAT, "sddcompress_version": __version__, **fields}
