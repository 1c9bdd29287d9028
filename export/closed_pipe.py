"""Leaving quietly when the reader of our stdout has gone (`sddcompress-deploy info m.onnx | head -3`)."""

from __future__ import annotations

import os
import sys

#: The shell's exit status for a process ended by SIGPIPE (128 + 13).
EXIT_CLOSED_PIPE = 141


def exit_on_closed_pipe() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush cannot fail again, and exit 141.

    Called from a CLI's `except BrokenPipeError`: the reader closed the pipe on purpose, so there is
    nothing to report and no traceback to print.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout already closed or not a real file
        pass
    sys.exit(EXIT_CLOSED_PIPE)
