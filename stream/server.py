"""`sentistream serve`: the HTTP side of the WebRTC server (page, offers, health, metrics).

Learned from aiortc's examples/server, hardened for many clients and for staying up: every bad
request gets a JSON error and leaves the server running; offers are size-limited, optionally
token-protected and capped at `max_clients` concurrent connections.
"""
from __future__ import annotations

import argparse
import asyncio
import hmac
import ipaddress
import json
import logging
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Awaitable, Callable, Optional

from aiohttp import web
from aiortc import RTCSessionDescription
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from .config import AppConfig, ServerConfig
from .errors import UserError
from .runtime import Runtime, build_runtime
from .webrtc import OFFERS_REJECTED, ConnectionManager, OfferError

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MANAGER: web.AppKey[ConnectionManager] = web.AppKey("manager", ConnectionManager)
CONFIG: web.AppKey[AppConfig] = web.AppKey("config", AppConfig)
RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime", Runtime)
STARTED: web.AppKey[float] = web.AppKey("started", float)

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


def _authorized(request: web.Request, token: Optional[str]) -> bool:
    if not token:
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


def _parse_offer(body: bytes) -> RTCSessionDescription:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise OfferError("body must be JSON: {\"sdp\": \"...\", \"type\": \"offer\"}") from None
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


async def offer(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG].server
    manager = request.app[MANAGER]
    if not _authorized(request, cfg.token):
        OFFERS_REJECTED.labels("unauthorized").inc()
        return _error(401, "missing or wrong 'Authorization: Bearer <token>'", **{"WWW-Authenticate": "Bearer"})
    if request.content_length is not None and request.content_length > cfg.max_body_bytes:
        raise web.HTTPRequestEntityTooLarge(max_size=cfg.max_body_bytes, actual_size=request.content_length)
    body = await request.read()  # client_max_size enforces the limit for chunked bodies too
    try:
        description = _parse_offer(body)
    except OfferError as exc:
        OFFERS_REJECTED.labels("bad_offer").inc()
        return _error(400, str(exc))
    if manager.full:  # checked right before opening: no await in between, so no race
        OFFERS_REJECTED.labels("full").inc()
        return _error(503, f"server full: {cfg.max_clients} clients connected, try again later", **{"Retry-After": "5"})
    try:
        answer = await manager.open(description)
    except OfferError as exc:
        OFFERS_REJECTED.labels("bad_offer").inc()
        return _error(400, str(exc))
    return web.json_response({"sdp": answer.sdp, "type": answer.type})


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def healthz(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    return web.json_response({
        "status": "ok",
        "connections": len(manager.connections),
        "max_clients": request.app[CONFIG].server.max_clients,
        "weights": request.app[RUNTIME].engine.weights,
        "asr": request.app[RUNTIME].whisper is not None,
        "uptime_s": round(time.monotonic() - request.app[STARTED], 3),
    })


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(runtime: Runtime, cfg: AppConfig) -> web.Application:
    """The aiohttp app; it does not own `runtime` (the caller closes it after the app's cleanup)."""
    app = web.Application(client_max_size=cfg.server.max_body_bytes, middlewares=[json_errors])
    manager = ConnectionManager(runtime, cfg)
    app[MANAGER], app[CONFIG], app[RUNTIME], app[STARTED] = manager, cfg, runtime, time.monotonic()
    app.router.add_get("/", index)
    app.router.add_post("/offer", offer)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_static("/static/", STATIC_DIR, show_index=False)

    async def close_connections(_: web.Application) -> None:
        await manager.close_all()

    async def stop_pool(_: web.Application) -> None:
        manager.shutdown()

    app.on_shutdown.append(close_connections)
    app.on_cleanup.append(stop_pool)
    return app


# ---------------------------------------------------------------------------------- command
def _server_config(cfg: AppConfig, args: argparse.Namespace) -> ServerConfig:
    update = {k: getattr(args, k, None) for k in ("host", "port", "max_clients", "token")}
    data = {**cfg.server.model_dump(), **{k: v for k, v in update.items() if v is not None}}
    try:
        return ServerConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-")
        raise UserError(f"bad value for {flag}: {first['msg']}") from None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _check_port(host: str, port: int) -> None:
    """Fail on a taken port before spending seconds loading models."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


async def serve(cfg: AppConfig, stop: Optional[asyncio.Event] = None) -> None:
    server = cfg.server
    _check_port(server.host, server.port)
    runtime = await build_runtime(cfg)
    runner: Optional[web.AppRunner] = None
    try:
        runner = web.AppRunner(create_app(runtime, cfg), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, server.host, server.port)
        try:
            await site.start()
        except OSError as exc:
            raise UserError(f"cannot listen on {server.host}:{server.port}: {exc.strerror}") from None
        port = runner.addresses[0][1] if runner.addresses else server.port  # the real one for --port 0
        shown = f"[{server.host}]" if ":" in server.host else server.host
        print(f"sentistream serving on http://{shown}:{port}/ (Ctrl-C to stop)", file=sys.stderr, flush=True)
        if runtime.engine.weights == "random":
            print("warning: CLIP weights are random: estimates carry no meaning", file=sys.stderr)
        if not _is_loopback(server.host) and not server.token:
            print("warning: listening beyond this machine without --token: anyone who can reach it can connect", file=sys.stderr)
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # not the main thread / platform
                pass
        await stop.wait()
        print("shutting down", file=sys.stderr)
    finally:
        if runner is not None:
            await runner.cleanup()  # closes every connection (on_shutdown), then the media pool
        await runtime.close()


def main(cfg: AppConfig, args: argparse.Namespace) -> int:
    server = _server_config(cfg, args)
    cfg = cfg.model_copy(update={"server": server})
    asyncio.run(serve(cfg))
    return 0

