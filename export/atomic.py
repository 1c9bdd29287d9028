"""Write a file so that readers see the old file or the whole new one, never half of it."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write(temp)` for a temporary file beside `path`, then rename it onto `path`; returns `path`.

    The temporary file sits in the same folder (a rename is atomic only within one file system) and keeps
    the final suffix, since writers such as `np.savez` and `onnx.save` act on it. On any failure it is
    removed and the previous `path`, if there was one, is left as it was.
    """
    path = Path(path)
    temp = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        write(temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda temp: temp.write_text(text))
