"""The one kind of error a user can fix, and how the command line shows it.

A `UserError`'s message is the whole story in one line: what is wrong, where (the config field,
file or URL), and how to fix it. The command line prints that line on stderr and exits 2; the
traceback goes to a log file (shown with --verbose). Any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """Something the user can fix (a config value, an input, an endpoint, a storage location)."""


def one_line(message: str, limit: int = 400) -> str:
    """A message squeezed onto one line (causes from libraries can span many)."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
