"""`sentistream serve`: load the models once, serve the WebRTC page and API until Ctrl-C."""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import re
import signal
import socket
import sys
from typing import Optional

from aiohttp import web
from pydantic import ValidationError

from models.errors import UserError

from ..config import AppConfig, ServerConfig
from ..events import RANDOM_WEIGHTS_WARNING
from ..runtime import build_runtime
from ..server import create_app

TOKEN_ENV = "SENTISTREAM_TOKEN"
_TOKEN_RE = re.compile(r"[!-~]+")  # visible ASCII, no spaces: what an Authorization header carries as is


def _check_token(token: str, where: str) -> str:
    if not token:
        raise UserError(f"{where} is empty: give a token (or drop it to serve without one)")
    if not _TOKEN_RE.fullmatch(token):
        raise UserError(f"{where} must be visible ASCII characters without spaces")
    return token


def _token(cfg: AppConfig, args: argparse.Namespace) -> Optional[str]:
    """The token from --token, else --token-file, else $SENTISTREAM_TOKEN, else server.token; checked."""
    if getattr(args, "token", None) is not None:
        return _check_token(args.token, "--token")
    path = getattr(args, "token_file", None)
    if path is not None:
        try:
            with open(path, encoding="utf-8") as fh:
                first = fh.readline()
        except OSError as exc:
            raise UserError(f"cannot read --token-file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise UserError(f"--token-file {path} is not text (UTF-8)") from None
        return _check_token(first.strip(), f"--token-file {path}")
    if TOKEN_ENV in os.environ:
        return _check_token(os.environ[TOKEN_ENV].strip(), TOKEN_ENV)
    if cfg.server.token is not None:
        return _check_token(cfg.server.token, "server.token")
    return None


def _server_config(cfg: AppConfig, args: argparse.Namespace) -> ServerConfig:
    update = {k: getattr(args, k, None) for k in ("host", "port", "max_clients")}
    update["token"] = _token(cfg, args)
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
            print(f"warning: {RANDOM_WEIGHTS_WARNING}", file=sys.stderr)
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
    if not getattr(args, "ray", False):
        for flag in ("ray_address", "replicas"):
            if getattr(args, flag, None) is not None:
                raise UserError(f"--{flag.replace('_', '-')} needs --ray")
        asyncio.run(serve(cfg))
        return 0
    if args.replicas is not None and args.replicas < 1:
        raise UserError("--replicas must be at least 1")
    if args.ray_address is None:  # a local Ray: the ingress listens on this machine
        _check_port(server.host, server.port)
    from ..cluster.serve import serve_cluster  # Ray only in cluster mode

    return serve_cluster(cfg, args.ray_address, args.replicas, warn_open=not _is_loopback(server.host) and not server.token)

