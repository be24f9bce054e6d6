"""The bearer-token rule every route that takes media uses (`/offer`, `/analyze`, `/ws`, `/ws/events`)."""
from __future__ import annotations

import hmac
from typing import Optional

from aiohttp import web


def authorized(request: web.Request, token: Optional[str], *, allow_query: bool = False) -> bool:
    """`Authorization: Bearer TOKEN`; WebSocket routes also take `?token=TOKEN` (browsers cannot set
    headers on a WebSocket)."""
    if not token:
        return True
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and _same(value.strip(), token):
        return True
    query = request.query.get("token") if allow_query else None
    return query is not None and _same(query, token)


def _same(given: str, token: str) -> bool:
    try:
        raw = given.encode("utf-8")
    except UnicodeEncodeError:  # bytes that were not UTF-8 (kept as surrogates): not the token
        return False
    return hmac.compare_digest(raw, token.encode("utf-8"))
