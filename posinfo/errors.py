"""The project's error type: raised at the boundary with a one-line message."""


class PosinfoError(Exception):
    """A user-facing error: one line that names the bad value and the fix."""
