"""File-system faults as one line naming the file and the fix (torch-free; used by both CLIs)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import DeployError

_FIXES = {
    errno.ENOSPC: ("no space left on the device", "free disk space (or write elsewhere) and run the command again"),
    errno.EDQUOT: ("disk quota exceeded", "free space in your quota and run the command again"),
    errno.EFBIG: ("file too large for this system's file-size limit",
                  "raise the limit (ulimit -f) or free space, then run the command again"),
    errno.EACCES: ("permission denied", "fix the permissions or choose another path"),
    errno.EPERM: ("operation not permitted", "fix the permissions or choose another path"),
    errno.EROFS: ("the file system is read-only", "choose a folder on a writable disk"),
    errno.EISDIR: ("it is a directory", "pass a file path, not a folder"),
    errno.ENOTDIR: ("a parent of the path is a file, not a folder", "check the path"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.ENAMETOOLONG: ("the name is too long", "use a shorter path"),
}


def describe_os_error(exc: OSError, action: str = "") -> str:
    """'cannot write 'x': no space left on the device; free disk space ...' for any OSError."""
    reason, fix = _FIXES.get(exc.errno or 0, ((exc.strerror or str(exc) or type(exc).__name__).lower(),
                                               "check the path and the disk, then run the command again"))
    target = f" '{exc.filename}'" if exc.filename else ""
    verb = action or ("cannot access" if exc.filename else "a file operation failed")
    return f"{verb}{target}: {reason}; {fix}"


def existing_file(path: str | Path, what: str, hint: str, error: type[Exception] = DeployError) -> Path:
    """`path` if it is a readable file; otherwise `error` saying whether it is missing, a folder or unreadable."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{what} '{path}' is a directory; {hint}")
    if not path.is_file():
        raise error(f"{what} '{path}' not found; {hint}")
    if not os.access(path, os.R_OK):
        raise error(f"{what} '{path}' cannot be read (permission denied); fix its permissions or copy it")
    return path


def writable_file_path(path: str | Path, what: str, error: type[Exception] = DeployError) -> Path:
    """`path` if a file can be written there (its folder exists and is writable, it is not a folder)."""
    if not str(path).strip():
        raise error(f"{what} is empty (an unset shell variable?); pass a file path such as model.int8.onnx")
    path = Path(path)
    if path.is_dir():
        raise error(f"{what} '{path}' is a directory; pass a file path such as {path / 'model.onnx'}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise error(f"cannot write {what} '{path}': folder '{parent}' does not exist; create it or pick another path")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise error(f"cannot write {what} '{path}': permission denied; choose a writable path")
    return path
