"""The one exception type that the CLI turns into a one-line message and a non-zero exit."""


class UserError(Exception):
    """A problem with what the user asked for; the message names the fix."""
