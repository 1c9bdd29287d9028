"""Write a file so that readers see the old file or the whole new one, never half of it.

Every file the project replaces in place (checkpoints, metrics logs, run markers, tensor files, ONNX
models, reports) goes through `atomic_write`, so their temporary files share one name pattern,
`.STEM.PID-RANDOM.tmpSUFFIX` beside the final file, which `is_temp_of` recognises (a killed writer's
leftovers are found and removed by that pattern alone)."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Callable


def temp_path(path: Path) -> Path:
    """A fresh temporary name beside `path`; it keeps the final suffix, since writers such as `np.savez` and
    `onnx.save` act on it."""
    return path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")


def is_temp_of(name: str, final_name: str) -> bool:
    """Whether file `name` is a temporary file `atomic_write` made for `final_name` (same folder)."""
    final = Path(final_name)
    return re.fullmatch(rf"\.{re.escape(final.stem)}\.\d+-[0-9a-f]{{8}}\.tmp{re.escape(final.suffix)}", name) is not None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], object], *, durable: bool = False) -> Path:
    """Call `write(temp)` for a temporary file beside `path`, then rename it onto `path`; returns `path`.

    The temporary file sits in the same folder (a rename is atomic only within one file system). On any
    failure it is removed and the previous `path`, if there was one, is left as it was. `durable`: the
    file's bytes and then the folder's entry are flushed to the disk (fsync) before returning, so a
    power cut keeps either the old or the new file (checkpoints).
    """
    path = Path(path)
    temp = temp_path(path)
    try:
        write(temp)
        if durable:
            fd = os.open(temp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda temp: temp.write_text(text))
