"""The deployment stage's user-facing error: one line, naming the fix."""


class DeployError(Exception):
    """A bad artefact, file or request; the CLI prints it as one line and exits non-zero."""


#: The longest error line either CLI prints (room for two long paths and a URL); a value echoed from a
#: huge input never floods the terminal.
MAX_ERROR_CHARS = 500


def error_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text`'s first line, at most `limit` characters: a longer one keeps its start and its end (where
    the fix is named) around ' ... '."""
    lines = str(text).strip().splitlines()
    line = lines[0] if lines else ""
    if len(line) <= limit:
        return line
    gap = " ... "
    tail = (limit - len(gap)) // 3
    return line[: limit - len(gap) - tail] + gap + line[-tail:]
