"""User-facing errors."""
from __future__ import annotations


class UserError(Exception):
    """A user-facing error: one line, no traceback; the CLI prints `error: <message>` and exits 2."""
