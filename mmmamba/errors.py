"""The one exception type users see: a one-line message naming the input and the fix."""


class MmmambaError(Exception):
    """A user-facing error. The CLI prints its message on one line and exits with code 2."""
