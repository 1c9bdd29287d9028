"""Where runs live: writable output folders, and the quickstart's summary that other commands default to."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError

QUICKSTART_DIR = Path("runs/quickstart")
SUMMARY_NAME = "summary.json"


def require_out_given(out: str | Path | None, flag: str = "--out") -> None:
    """A UserError for an empty or blank output path (an unset shell variable), which would mean the
    current folder."""
    if out is not None and not str(out).strip():
        raise UserError(f"{flag} is empty (an unset shell variable?); pass the output folder, e.g. {flag} runs/NAME")


def ensure_writable_dir(out: str | Path) -> Path:
    """Create `out` if needed and prove it can be written to; otherwise a one-line UserError."""
    require_out_given(out)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{id(out)}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"output dir '{out}' is not writable ({exc.strerror}); pass a writable --out") from None
    return out


def quickstart_checkpoints() -> dict[str, str] | None:
    """{"teacher": path, "student": path} from the default quickstart's summary, or None if there is none."""
    summary = QUICKSTART_DIR / SUMMARY_NAME
    if not summary.is_file():
        return None
    values = json.loads(summary.read_text())
    return {"teacher": values["teacher_checkpoint"], "student": values["student_checkpoint"]}


def export_dir_for(ckpt: str | Path) -> Path:
    """Where `sddcompress export` writes by default: RUN/export beside RUN/checkpoints/CKPT."""
    return Path(ckpt).resolve().parent.parent / "export"
