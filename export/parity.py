"""Compare an artefact's logits with the reference (PyTorch) logits on the same images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .atomic import atomic_write_text
from .errors import DeployError


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max / mean absolute logit difference and top-1 agreement (percent)."""
    if reference.shape != candidate.shape:
        raise DeployError(f"logit shapes differ: reference {reference.shape} vs artefact {candidate.shape}")
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    agree = (reference.argmax(1) == candidate.argmax(1)).mean() * 100.0
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "top1_agreement": float(agree), "count": int(len(reference)),
            "nonfinite_reference": int((~np.isfinite(reference)).sum()),
            "nonfinite_artifact": int((~np.isfinite(candidate)).sum())}


def nonfinite_reason(result: dict, what: str) -> str | None:
    """Why a comparison cannot pass because some logits are NaN/inf, or None if all are finite."""
    ref, art = result.get("nonfinite_reference", 0), result.get("nonfinite_artifact", 0)
    if not ref and not art and np.isfinite(result["max_abs_diff"]):
        return None
    side = (f"PyTorch gave {ref} non-finite logits" if ref else "") + (", " if ref and art else "") + \
        (f"{what} gave {art} non-finite logits" if art else "")
    return (side or f"{what}: non-finite logit difference") + "; the model's weights or the artefact are broken"


def check_parity(result: dict, atol: float, min_agreement: float, what: str) -> None:
    """Raise a DeployError if the artefact is further from PyTorch than the user allows."""
    reason = nonfinite_reason(result, what)
    if reason:
        raise DeployError(f"parity failure for {what}: {reason}")
    # written so that a NaN compares as a failure (`nan > atol` is False)
    if not (result["max_abs_diff"] <= atol and result["top1_agreement"] >= min_agreement):
        raise DeployError(
            f"parity failure for {what}: max |logit diff| {result['max_abs_diff']:.3g} (allowed {atol:g}), top-1 "
            f"agreement {result['top1_agreement']:.2f}% (required {min_agreement:g}%); raise --atol / lower "
            "--min-agreement if this is expected")


def write_report(path: str | Path, report: dict) -> Path:
    return atomic_write_text(path, json.dumps(report, indent=2, default=str))
