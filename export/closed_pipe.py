"""When the reader of our stdout goes away (`sddcompress train ... | head -1`, `sddcompress-deploy info m.onnx | head`).

A command whose output is its result (`sddcompress-deploy`) leaves quietly with the shell's SIGPIPE status.
A command that does work while it prints (train, distill, export, quickstart, benchmark) prints through
`pipe_safe(echo)`: once the pipe is closed it stops printing and finishes its work, because the reader
closing the pipe asked for less output, not for the run to end.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

#: The shell's exit status for a process ended by SIGPIPE (128 + 13).
EXIT_CLOSED_PIPE = 141


def silence_stdout() -> bool:
    """Point stdout's file descriptor at /dev/null, so every later write (and the interpreter's final flush of
    what is still buffered) succeeds and goes nowhere. False when stdout is not a real file (nothing to do)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return True
    except (OSError, ValueError):  # stdout already closed or not a real file
        return False


def exit_on_closed_pipe() -> None:
    """Silence stdout and exit 141.

    Called from a CLI's `except BrokenPipeError`: the reader closed the pipe on purpose, so there is
    nothing to report and no traceback to print.
    """
    silence_stdout()
    sys.exit(EXIT_CLOSED_PIPE)


def pipe_safe(echo: Callable[..., None]) -> Callable[..., None]:
    """`echo` that stops printing, instead of raising BrokenPipeError, once the reader of stdout has gone."""
    gone = False

    def safe_echo(*args, **kwargs) -> None:
        nonlocal gone
        if gone:
            return
        try:
            echo(*args, **kwargs)
        except BrokenPipeError:
            gone = silence_stdout()

    return safe_echo
