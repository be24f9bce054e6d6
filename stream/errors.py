"""User-facing errors."""
from __future__ import annotations


class UserError(Exception):
    """A user-facing error: one line, no traceback; the CLI prints `error: <message>` and exits 2."""


def one_line(exc: BaseException, limit: int | None = None) -> str:
    """An exception's text on one line (whitespace collapsed), cut to `limit` characters: the
    reason part of a user-facing error."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."
