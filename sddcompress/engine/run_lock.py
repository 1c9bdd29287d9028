"""An exclusive lock on a run's output folder, held for the life of a train/distill run.

`OUT/.run.lock` holds the PID of the run that holds it; the lock itself is an `fcntl.flock`, which
the kernel drops when that process exits however it exits (SIGKILL included). A second run into the
same folder is refused with the holder's PID; a lock file left by a dead process is taken over.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import Callable

from ..errors import UserError

LOCK_NAME = ".run.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class RunLock:
    """`with RunLock(out, say):` holds OUT/.run.lock; entering raises a UserError if another run holds it.

    `name` locks another file of the folder (the methods benchmark claims runs with `.RUN.claim`)."""

    def __init__(self, out: str | Path, say: Callable[[str], None] = print, name: str = LOCK_NAME) -> None:
        self.path = Path(out) / name
        self.say = say
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(f"'{self.path.parent}' is in use by another run (PID {holder}); wait for it to "
                                "finish or stop it, or pass another --out") from None
            raise
        previous = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if previous.isdigit() and int(previous) != os.getpid():
            state = "no longer running" if not _pid_alive(int(previous)) else "not holding it"
            self.say(f"note: took over the lock of '{self.path.parent}' from PID {previous} ({state})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def try_acquire(self) -> bool:
        """Take the lock if no other process holds it; False (nothing raised) if one does."""
        try:
            self.__enter__()
        except UserError:
            return False
        return True

    def __exit__(self, exc_type: type[BaseException] | None = None, exc: BaseException | None = None,
                 tb: TracebackType | None = None) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # the file stays (unlinking it would race a waiting run); empty = free
        except OSError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

