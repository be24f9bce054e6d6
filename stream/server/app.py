"""The HTTP side of the WebRTC server (page, offers, health, metrics).

Learned from aiortc's examples/server, hardened for many clients and for staying up: every bad
request gets a JSON error and leaves the server running; offers are size-limited, optionally
token-protected and capped at `max_clients` concurrent connections.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Awaitable, Callable, Optional, Protocol

from aiohttp import web
from aiortc import RTCSessionDescription
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..config import AppConfig
from ..metrics import OFFERS_REJECTED
from ..runtime import Runtime
from .auth import authorized
from .connection import OfferError
from .guards import guard_middleware
from .manager import ConnectionManager, SlotRefused
from .overlay_page import overlay_route
from .upload import analyze_route
from .ws import follow_route, ws_route

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
MANAGER: web.AppKey[ConnectionManager] = web.AppKey("manager", ConnectionManager)
CONFIG: web.AppKey[AppConfig] = web.AppKey("config", AppConfig)
RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime", Runtime)
STARTED: web.AppKey[float] = web.AppKey("started", float)


class OfferTarget(Protocol):
    """Where POST /offer places a call: this process's ConnectionManager, or a cluster's replicas
    (stream.cluster.ingress). The route's rules (token, body, JSON, refusal) are the same for both."""

    def refusal(self, address: str) -> Optional[tuple[int, str, str]]: ...

    async def open(self, offer: RTCSessionDescription, address: str = "") -> RTCSessionDescription: ...


OFFERS: web.AppKey[OfferTarget] = web.AppKey("offers")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure is a JSON `{"error": ...}`; nothing a client sends can take the server down."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        OFFERS_REJECTED.labels("too_large").inc()
        return _error(413, f"request body too large (limit {request.app[CONFIG].server.max_body_bytes} bytes)")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason, **{k: v for k, v in exc.headers.items() if k.lower() == "allow"})
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error(500, "internal server error")


# The bundled page loads its own script and style sheet only (no inline code, no external assets),
# talks to its own origin (POST offer) and shows the camera and the returned overlay (MediaStreams).
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "media-src 'self' blob: mediastream:; connect-src 'self'; base-uri 'none'; "
                                "form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def unauthorized() -> web.Response:
    return _error(401, "missing or wrong 'Authorization: Bearer <token>'", **{"WWW-Authenticate": "Bearer"})


def _parse_offer(body: bytes) -> RTCSessionDescription:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise OfferError("body must be JSON: {\"sdp\": \"...\", \"type\": \"offer\"}") from None
    except RecursionError:  # deeply nested arrays/objects
        raise OfferError("body must be JSON: {\"sdp\": \"...\", \"type\": \"offer\"} (not nested this deep)") from None
    if not isinstance(data, dict):
        raise OfferError("body must be a JSON object: {\"sdp\": \"...\", \"type\": \"offer\"}")
    missing = [k for k in ("sdp", "type") if k not in data]
    if missing:
        raise OfferError(f"missing field(s): {', '.join(missing)}")
    sdp, kind = data["sdp"], data["type"]
    if not isinstance(sdp, str) or not sdp.strip():
        raise OfferError("'sdp' must be a non-empty string")
    if kind != "offer":
        raise OfferError(f"'type' must be \"offer\" (got {json.dumps(kind)[:40]})")
    if "m=" not in sdp:
        raise OfferError("unusable SDP offer: no media sections")
    return RTCSessionDescription(sdp=sdp, type="offer")


def _refused(status: int, reason: str, message: str) -> web.Response:
    OFFERS_REJECTED.labels(reason).inc()
    return _error(status, message, **{"Retry-After": "5"})


async def offer(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG].server
    target = request.app[OFFERS]
    if not authorized(request, cfg.token):
        OFFERS_REJECTED.labels("unauthorized").inc()
        return unauthorized()
    if request.content_length is not None and request.content_length > cfg.max_body_bytes:
        raise web.HTTPRequestEntityTooLarge(max_size=cfg.max_body_bytes, actual_size=request.content_length)
    body = await request.read()  # client_max_size enforces the limit for chunked bodies too
    try:
        description = _parse_offer(body)
    except OfferError as exc:
        OFFERS_REJECTED.labels("bad_offer").inc()
        return _error(400, str(exc))
    address = request.remote or ""
    if (refused := target.refusal(address)) is not None:
        return _refused(*refused)
    try:
        answer = await target.open(description, address)
    except OfferError as exc:
        OFFERS_REJECTED.labels("bad_offer").inc()
        return _error(400, str(exc))
    except SlotRefused as exc:  # a cluster replica filled up between the ingress's check and the offer
        return _refused(exc.status, exc.reason, exc.message)
    return web.json_response({"sdp": answer.sdp, "type": answer.type})


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def healthz(request: web.Request) -> web.Response:
    """Liveness for anyone; the details (connections, weights, uptime) only with the token when one is set."""
    if not authorized(request, request.app[CONFIG].server.token):
        return web.json_response({"status": "ok"})
    manager = request.app[MANAGER]
    return web.json_response({
        "status": "ok",
        "connections": len(manager.connections),  # slots in use: pending + live
        "pending": manager.pending,  # answered offers whose peer has not connected yet
        "live": manager.live,
        "max_clients": request.app[CONFIG].server.max_clients,
        "max_clients_per_address": manager.per_address,
        "weights": request.app[RUNTIME].engine.weights,
        "asr": request.app[RUNTIME].whisper is not None,
        "uptime_s": round(time.monotonic() - request.app[STARTED], 3),
    })


async def metrics(request: web.Request) -> web.Response:
    if not authorized(request, request.app[CONFIG].server.token):
        return unauthorized()
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def base_app(cfg: AppConfig, offers: OfferTarget) -> web.Application:
    """What every sentistream HTTP front shares: the JSON errors, the Host/Origin guard, the security
    headers, the page and POST /offer placing calls on `offers`. create_app adds the single-process
    routes; stream.cluster.ingress adds the cluster's /healthz and /metrics."""
    # json_errors outermost: whatever the guard or a handler raises becomes a JSON error.
    app = web.Application(client_max_size=cfg.server.max_body_bytes, middlewares=[json_errors, guard_middleware(cfg.server)])
    app[OFFERS], app[CONFIG], app[STARTED] = offers, cfg, time.monotonic()
    app.on_response_prepare.append(_security_headers)
    app.router.add_get("/", index)
    app.router.add_post("/offer", offer)
    app.router.add_static("/static/", STATIC_DIR, show_index=False)
    return app


def create_app(runtime: Runtime, cfg: AppConfig) -> web.Application:
    """The aiohttp app; it does not own `runtime` (the caller closes it after the app's cleanup)."""
    manager = ConnectionManager(runtime, cfg)
    app = base_app(cfg, manager)
    app[MANAGER], app[RUNTIME] = manager, runtime
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/analyze", analyze_route(runtime, cfg, manager))  # issue 14: upload, WebSocket, followers
    app.router.add_get("/ws", ws_route(runtime, cfg, manager))
    app.router.add_get("/ws/events", follow_route(cfg, manager))
    app.router.add_get("/overlay", overlay_route(cfg.server, STATIC_DIR / "overlay.html"))  # issue 26: OBS browser source

    async def close_connections(_: web.Application) -> None:
        await manager.close_all()

    async def stop_pool(_: web.Application) -> None:
        manager.shutdown()

    app.on_shutdown.append(close_connections)
    app.on_cleanup.append(stop_pool)
    return app
