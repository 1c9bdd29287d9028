"""The deployment stage's user-facing error: one line, naming the fix."""


class DeployError(Exception):
    """A bad artefact, file or request; the CLI prints it as one line and exits non-zero."""
