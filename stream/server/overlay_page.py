"""`GET /overlay?stream=ID&token=T&theme=dark|light&scale=S`: the OBS browser-source page.

A transparent page (no background, no margins) showing one stream's label, a score bar and a row
per face; it follows the stream's events over `GET /ws/events` (the followers feed) and reconnects
by itself when the stream ends or the server goes away. The query is checked here, so a typo in
the OBS source URL gets one clear line instead of a page that silently shows nothing.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional

from aiohttp import web

from ..config import ServerConfig
from .auth import authorized
from .ws import NAME

THEMES = ("dark", "light")
SCALE_MIN, SCALE_MAX = 0.25, 4.0
PARAMS = ("stream", "token", "theme", "scale")


def overlay_query_problem(query: Mapping[str, str]) -> Optional[str]:
    """What is wrong with an /overlay query (one line), or None."""
    unknown = sorted(set(query) - set(PARAMS))
    if unknown:
        return f"unknown parameter {unknown[0]!r}: /overlay takes stream, token, theme and scale"
    stream = query.get("stream", "")
    if not stream:
        return "missing ?stream=ID: the id of a running stream (its events' \"stream\" field, or the name a /ws client chose)"
    if not NAME.fullmatch(stream):  # the ids /ws/events knows: generated ones and the names /ws clients choose
        return "stream must be 1-64 characters of A-Z a-z 0-9 _ . -"
    theme = query.get("theme", THEMES[0])
    if theme not in THEMES:
        return f"theme must be one of {', '.join(THEMES)} (got {theme[:20]!r})"
    text = query.get("scale", "1")
    try:
        scale = float(text)
    except ValueError:
        scale = math.nan
    if not (math.isfinite(scale) and SCALE_MIN <= scale <= SCALE_MAX):
        return f"scale must be a number from {SCALE_MIN:g} to {SCALE_MAX:g} (got {text[:20]!r})"
    return None


def overlay_route(server: ServerConfig, page: Path):
    async def handler(request: web.Request) -> web.StreamResponse:
        if not authorized(request, server.token, allow_query=True):
            return web.json_response({"error": "missing or wrong token: add ?token=<token> to the overlay URL"}, status=401)
        problem = overlay_query_problem(request.query)
        if problem is not None:
            return web.json_response({"error": problem}, status=400)
        return web.FileResponse(page, headers={"Cache-Control": "no-cache"})

    return handler
