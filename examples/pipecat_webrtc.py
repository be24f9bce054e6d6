"""Face and voice sentiment in a Pipecat pipeline over WebRTC, with the OBS overlay.

    pip install -e '.[pipecat]'
    python examples/pipecat_webrtc.py                        # configs/default.yaml, http://localhost:7860/
    python examples/pipecat_webrtc.py --config configs/tiny-test.yaml --port 7860   # seconds to start, random weights

Then open http://localhost:7860/ and press Start: the page sends your camera and microphone to
Pipecat's `SmallWebRTCTransport` (POST /api/offer, audio then video transceiver and a data channel,
as Pipecat's own small-webrtc client does), through

    transport.input() -> SentimentProcessor -> transport.output()

and shows the RTVI server messages the processor sends back on the data channel:
`{"label": "rtvi-ai", "type": "server-message", "data": <the sentiment event>}`, every hop.
Put your own processors (STT, LLM, TTS) after the SentimentProcessor: it passes every frame on,
and with an STT before it, its TranscriptionFrames replace our Whisper.

The OBS overlay follows the same call: add a Browser source with the URL
http://localhost:7860/overlay?stream=pipecat&theme=dark&scale=1 (`--stream` sets the name; one
call at a time per name). It is sentistream's overlay page, fed through the same
`GET /ws/events?stream=ID` as on `sentistream serve`. `--token T` protects both (?token=T).

Bound to 127.0.0.1 by default: a browser only gives the camera to https:// or localhost pages.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional

from aiohttp import web
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.transports.base_transport import TransportParams, VideoInSourceParams
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport
from pipecat.workers.runner import WorkerRunner

from models.errors import UserError
from stream.config import AppConfig
from stream.integrations.pipecat import SentimentProcessor, build_runtime_for_pipecat
from stream.runtime import Runtime
from stream.server.app import STATIC_DIR
from stream.server.followers import Followers
from stream.server.guards import guard_middleware
from stream.server.overlay_page import overlay_route
from stream.server.ws import NAME, follow_route

log = logging.getLogger("pipecat_webrtc")
PAGE = Path(__file__).with_suffix(".html")
MAX_OFFER_BYTES = 64 * 1024
CAMERA_FPS = 10
CALLS: web.AppKey["Calls"] = web.AppKey("calls")


class Call:
    """One browser's WebRTC connection and the Pipecat pipeline that analyses it."""

    def __init__(self, name: str, connection: SmallWebRTCConnection, runtime: Runtime) -> None:
        self.name = name
        self.connection = connection
        self.followers = Followers()  # GET /ws/events?stream=NAME (the overlay)
        # The camera must be listed in video_in_sources, or the transport passes no frame on. Ten a
        # second is more than the estimates sample (sampler.fps) and keeps Pipecat's RGB copies cheap.
        transport = SmallWebRTCTransport(webrtc_connection=connection, params=TransportParams(
            audio_in_enabled=True, video_in_enabled=True, video_in_sources={"camera": VideoInSourceParams(framerate=CAMERA_FPS)}))
        self.sentiment = SentimentProcessor(runtime, stream=name, on_event=self.followers.publish)
        self.worker = PipelineWorker(Pipeline([transport.input(), self.sentiment, transport.output()]))
        self.runner = WorkerRunner(handle_sigint=False)

        @transport.event_handler("on_client_disconnected")
        async def on_client_disconnected(transport, client) -> None:
            await self.worker.cancel()

    async def run(self) -> None:
        try:
            await self.runner.add_workers(self.worker)
            await self.runner.run()
        finally:
            self.followers.close()


class Calls:
    """The running calls by stream name (what `follow_route` looks streams up in)."""

    def __init__(self, runtime: Runtime, name: str) -> None:
        self.runtime = runtime
        self.name = name
        self.connections: dict[str, Call] = {}
        self.tasks: set[asyncio.Task] = set()

    async def offer(self, request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_OFFER_BYTES:
            return web.json_response({"error": f"offer larger than {MAX_OFFER_BYTES} bytes"}, status=413)
        try:
            body = json.loads(await request.read())
            sdp, kind, pc_id = body["sdp"], body["type"], body.get("pc_id")
            if not isinstance(sdp, str) or kind != "offer":
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": 'body must be JSON: {"sdp": "...", "type": "offer", "pc_id": optional}'}, status=400)
        call = self.connections.get(self.name)
        if pc_id and call is not None and call.connection.pc_id == pc_id:  # the page renegotiates
            await call.connection.renegotiate(sdp=sdp, type=kind)
            return web.json_response(call.connection.get_answer())
        if call is not None:
            return web.json_response({"error": f"a call is running as stream {self.name!r}: end it first, or start "
                                               "the example with another --stream"}, status=409)
        connection = SmallWebRTCConnection(ice_servers=[])
        try:
            await connection.initialize(sdp=sdp, type=kind)
        except Exception as exc:  # aiortc raises many kinds on a bad SDP
            return web.json_response({"error": f"unusable SDP offer: {exc}"}, status=400)
        call = self.connections[self.name] = Call(self.name, connection, self.runtime)
        task = asyncio.create_task(call.run(), name=f"call-{self.name}")
        self.tasks.add(task)
        task.add_done_callback(lambda t: (self.tasks.discard(t), self._forget(call)))
        return web.json_response(connection.get_answer())

    def _forget(self, call: Call) -> None:
        if self.connections.get(call.name) is call:
            del self.connections[call.name]

    async def close(self, _: Any = None) -> None:
        for call in list(self.connections.values()):
            await call.worker.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def create_app(runtime: Runtime, cfg: AppConfig, stream: str = "pipecat") -> web.Application:
    """The example's routes: the call page, POST /api/offer, the overlay and its event feed."""
    calls = Calls(runtime, stream)
    app = web.Application(client_max_size=MAX_OFFER_BYTES, middlewares=[guard_middleware(cfg.server)])
    app[CALLS] = calls

    async def page(_: web.Request) -> web.FileResponse:
        return web.FileResponse(PAGE, headers={"Cache-Control": "no-cache"})

    async def info(_: web.Request) -> web.Response:
        return web.json_response({"stream": stream, "token": bool(cfg.server.token)})

    app.router.add_get("/", page)
    app.router.add_get("/api/info", info)
    app.router.add_post("/api/offer", calls.offer)
    app.router.add_get("/overlay", overlay_route(cfg.server, STATIC_DIR / "overlay.html"))
    app.router.add_get("/ws/events", follow_route(cfg, calls))  # duck-typed: .connections[name].followers
    app.router.add_static("/static/", STATIC_DIR, show_index=False)
    app.on_shutdown.append(calls.close)
    return app


async def main(args: argparse.Namespace) -> None:
    overrides = [*args.set, f"server.host={args.host}", f"server.port={args.port}"]
    if args.token:
        overrides.append(f"server.token={args.token}")
    runtime = await build_runtime_for_pipecat(args.config, overrides)
    runner: Optional[web.AppRunner] = None
    try:
        runner = web.AppRunner(create_app(runtime, runtime.cfg, args.stream), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, args.host, args.port).start()
        port = runner.addresses[0][1] if runner.addresses else args.port  # the real one for --port 0
        token = f"&token={args.token}" if args.token else ""
        print(f"call page: http://{args.host}:{port}/\nOBS overlay: http://{args.host}:{port}/overlay?stream={args.stream}"
              f"{token}&theme=dark   (Ctrl-C to stop)", file=sys.stderr, flush=True)
        await asyncio.Event().wait()
    finally:
        if runner is not None:
            await runner.cleanup()
        await runtime.close()


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None, help="sentistream config YAML (default: configs/default.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, as sentistream --set")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--stream", default="pipecat", help="the call's stream name: the overlay's ?stream=")
    p.add_argument("--token", default=None, help="require ?token= on the overlay and its event feed")
    args = p.parse_args(argv)
    if not NAME.fullmatch(args.stream):
        p.error("--stream must be 1-64 characters of A-Z a-z 0-9 _ . -")
    return args


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(main(parse_args()))
    except KeyboardInterrupt:
        pass
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
