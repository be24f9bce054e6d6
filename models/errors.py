"""Errors a user can fix: one line, no traceback, and the exit code a command line should use."""
from __future__ import annotations


class UserError(Exception):
    """A user-facing error: one line, no traceback; a CLI prints `error: <message>` and exits `exit_code`."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A bad config file or override: the message names the key and what is allowed."""


class WeightsUnavailable(UserError):
    """Pretrained CLIP weights could not be had (offline and not cached); `make demo` falls back on it."""

    exit_code = 3


def one_line(exc: BaseException, limit: int | None = None) -> str:
    """An exception's text on one line (whitespace collapsed), cut to `limit` characters: the
    reason part of a user-facing error."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."
