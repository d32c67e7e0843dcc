"""Two error tiers: `F3Error` is the user's to fix (one line, exit 2); anything else is a bug."""

from __future__ import annotations


class F3Error(Exception):
    """A user-facing error: bad input, a mismatched plan, a missing GPU.

    The message is one line that names what to change. The CLI prints it as
    ``error: <message>`` and exits with status 2, without a traceback.
    """


def require(condition: bool, message: str) -> None:
    """Raise `F3Error(message)` unless `condition` holds (never `assert` on user input)."""
    if not condition:
        raise F3Error(message)
