"""Which output folders a train/distill run may write into, and what `--fresh` may remove from them.

A run marks the folder it takes with `.sddcompress-run` (JSON: the marker's format and the version
that wrote it). A folder is a run of ours when it holds that marker or, for runs written before the
marker existed, a `checkpoints/latest.pt` that loads as an sddcompress checkpoint. Any other folder
is taken only when it holds nothing but what a run itself leaves behind (the lock file, temp files of
a killed write). `--fresh` removes the files a run writes, by name, and never a folder's other contents.
"""

from __future__ import annotations

import json
from pathlib import Path

from sddcompress_export.atomic import atomic_write_text, is_temp_of

from .. import __version__
from ..errors import UserError
from .run_lock import LOCK_NAME

MARKER_NAME = ".sddcompress-run"
MARKER_FORMAT = "sddcompress-run-v1"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_NAMES = ("latest.pt", "best.pt")
METRICS_NAMES = ("metrics.jsonl", "metrics.csv")
WRITE_PROBE_PREFIX = ".write-test-"  # run_paths.ensure_writable_dir's probe


def _is_checkpoint_temp(name: str) -> bool:
    """A checkpoint's temp file (atomic_write's pattern; .latest.pt.XXXX.tmp from older versions too)."""
    return any(is_temp_of(name, c) or (name.startswith(f".{c}.") and name.endswith(".tmp")) for c in CHECKPOINT_NAMES)


def _is_top_level_temp(name: str) -> bool:
    """The temp files of the metrics logs and of the marker (atomic_write's pattern, and older versions')."""
    return (any(is_temp_of(name, m) or name == f".{m}.tmp" for m in METRICS_NAMES)
            or is_temp_of(name, MARKER_NAME) or (name.startswith(f".{MARKER_NAME}.") and name.endswith(".tmp")))


def _marker_is_ours(marker: Path) -> bool:
    try:
        values = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(values, dict) and values.get("format") == MARKER_FORMAT


def _is_our_checkpoint(path: Path) -> bool:
    from .checkpoint import FORMAT, load_checkpoint

    try:
        return load_checkpoint(path).get("format") == FORMAT
    except UserError:
        return False


def _others(out: Path) -> list[str]:
    """What `out` holds besides the lock file, write probes and temp files a run leaves (relative names)."""
    found = []
    for entry in sorted(out.iterdir()):
        name = entry.name
        if name == LOCK_NAME or name.startswith(WRITE_PROBE_PREFIX) or _is_top_level_temp(name):
            continue
        if name == CHECKPOINT_DIR and entry.is_dir() and not entry.is_symlink():
            found += [f"{CHECKPOINT_DIR}/{e.name}" for e in sorted(entry.iterdir()) if not _is_checkpoint_temp(e.name)]
            continue
        found.append(name + ("/" if entry.is_dir() else ""))
    return found


def recognise_run_folder(out: Path) -> str:
    """'new' (missing or holding nothing of anyone's), 'marked' (our marker), 'unmarked' (a run from before
    the marker), or a one-line UserError for a folder that is not an sddcompress run. Only reads."""
    if not out.exists() and not out.is_symlink():
        return "new"
    if not out.is_dir():
        raise UserError(f"output folder '{out}' is a file; pass another --out")
    marker = out / MARKER_NAME
    if marker.exists() or marker.is_symlink():
        if marker.is_file() and _marker_is_ours(marker):
            return "marked"
        raise UserError(f"'{marker}' is not a run marker sddcompress wrote; nothing was changed; pass another --out "
                        f"(or delete that file if '{out}' holds a run of yours)")
    try:
        others = _others(out)
    except OSError as exc:
        raise UserError(f"output folder '{out}' cannot be listed ({exc.strerror}); pass another --out") from None
    if not others:
        return "new"
    latest = out / CHECKPOINT_DIR / CHECKPOINT_NAMES[0]
    if latest.is_file() and not latest.is_symlink() and _is_our_checkpoint(latest):
        return "unmarked"
    shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
    raise UserError(f"output folder '{out}' is not an sddcompress run and is not empty ({shown}); nothing was "
                    "changed; pass another --out (a new or empty folder)")


def write_marker(out: Path) -> None:
    """Write OUT/.sddcompress-run atomically (a temp file renamed into place)."""
    atomic_write_text(out / MARKER_NAME, json.dumps({"format": MARKER_FORMAT, "sddcompress_version": __version__}) + "\n")


def claim_run_folder(out: Path, state: str) -> None:
    """Mark `out` as a run folder unless `state` (recognise_run_folder's answer) says it already is one.
    Call it holding the folder's lock."""
    if state != "marked":
        write_marker(out)


def remove_run_temps(out: Path) -> list[Path]:
    """Delete the temp files a killed write of a run left in `out` and `out/checkpoints` (nothing else)."""
    candidates = [p for p in _entries(out) if _is_top_level_temp(p.name)]
    candidates += [p for p in _entries(out / CHECKPOINT_DIR) if _is_checkpoint_temp(p.name)]
    return [p for p in candidates if _unlink(p)]


def remove_run_files(out: Path) -> list[Path]:
    """`--fresh`: delete the checkpoints, metrics and temp files a run wrote in `out`, by name; any other
    file stays, and `checkpoints/` goes only when that leaves it empty. The marker stays: the folder is
    still a run's."""
    ckpt_dir = out / CHECKPOINT_DIR
    candidates = [ckpt_dir / name for name in CHECKPOINT_NAMES] + [out / name for name in METRICS_NAMES]
    removed = [p for p in candidates if _unlink(p)] + remove_run_temps(out)
    try:
        ckpt_dir.rmdir()  # only if empty
    except OSError:
        pass
    return removed


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _unlink(path: Path) -> bool:
    if path.is_dir() and not path.is_symlink():
        return False
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False
