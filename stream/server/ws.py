"""WebSocket API of `sentistream serve`, for clients that cannot do WebRTC.

`GET /ws` streams media in and events out:
  1. the client sends a JSON text message
     {"type": "start", "stream": "name" (optional), "video": {"format": "jpeg"},
      "audio": {"format": "pcm_s16le", "rate": 16000}}   (either of video/audio may be omitted);
  2. the server answers {"type": "ready", "stream": ID, "max_message_bytes": N, "max_frame_rate": F};
  3. the client sends binary messages, each a 9-byte header then the payload:
       byte 0     b"V" (a JPEG frame) or b"A" (mono s16le PCM at the start message's rate)
       bytes 1-8  capture time, seconds, float64 little-endian (any origin; the first message's is media time 0)
     and may send {"type": "end"} to finish: the server then drains, sends the summary and closes 1000;
  4. the server sends every event of the stream as a JSON text message (the JSONL schema).
Protocol errors: {"type": "error", "code": ..., "message": ...}, then a close with the code in
`CLOSE_CODES`. `GET /ws/events?stream=ID` follows a running stream's events read-only.

A client that sends no start message within `server.start_timeout_s` (30 s) is closed. JPEG frames
are decoded by one shared `JpegDecoder` (stream.server.jpeg): anything but a JPEG is refused, and
so is a frame too large to decode cheaply (its size read from the JPEG header first); frames above
`server.max_video_width` x `max_video_height` are scaled down like WebRTC video, and at most two
decode at once. Media go into a live `StreamSession` as WebRTC media do (stream.server.connection): video frames
above `server.max_frame_rate` are dropped and counted; the session's queues are the live ones
(bounded, drop-oldest). Audio is timed by its sample count; audio sent more than
`server.audio_lead_s` ahead of real time is refused (dropped, counted, one warning): this is a live
API, files go to `POST /analyze`.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import struct
import time
import uuid
from typing import Any, Literal, Optional

import av
import numpy as np
from aiohttp import WSMsgType, web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..config import AppConfig
from ..events import encode_event, input_warnings, make_event
from ..metrics import AUDIO_SECONDS, ESTIMATES, EVENTS_DROPPED, FRAMES_DROPPED, FRAMES_IN, OFFERS_REJECTED, TRANSCRIPTS
from ..runtime import Runtime
from ..session import StreamSession
from ..sources import SAMPLE_RATE, AudioChunk, AudioResampler, VideoFrame
from .auth import authorized
from .followers import Followers
from .jpeg import FrameRefused, JpegDecoder
from .manager import ConnectionManager

log = logging.getLogger(__name__)

HEADER = struct.Struct("<cd")  # kind, capture time
CLOSE_CODES = {
    "unauthorized": 1008, "stream_in_use": 1008, "unknown_stream": 1008,
    "bad_message": 1003, "too_large": 1009, "server_full": 1013, "internal": 1011,
}
OUT_QUEUE = 256  # events waiting for a slow client; beyond: dropped, counted
DRAIN_TIMEOUT_S = 10.0
MAX_AUDIO_PAD_S = 5.0
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class ProtocolError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class VideoSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["jpeg"] = "jpeg"


class AudioSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["pcm_s16le"] = "pcm_s16le"
    rate: int = Field(SAMPLE_RATE, ge=8000, le=48000)
    channels: Literal[1] = 1


class StartMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["start"]
    stream: Optional[str] = Field(None, pattern=NAME.pattern)
    video: Optional[VideoSpec] = None
    audio: Optional[AudioSpec] = None

    @model_validator(mode="after")
    def _some_media(self) -> "StartMessage":
        if self.video is None and self.audio is None:
            raise ValueError("send \"video\", \"audio\" or both")
        return self


def parse_start(data: str) -> StartMessage:
    try:
        return StartMessage.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        raise ProtocolError("bad_message", f"bad start message: {where}: {first['msg']}") from None


async def send_error(ws: web.WebSocketResponse, code: str, message: str) -> None:
    """The documented error message, then the close code for it."""
    if not ws.closed:
        try:
            await ws.send_str(json.dumps({"type": "error", "code": code, "message": message}))
        except ConnectionError:
            pass
        await ws.close(code=CLOSE_CODES[code], message=code.encode())


class RateLimit:
    """Token bucket: `rate` items per second, bursts of up to one second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.last = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class WsStream:
    """One `/ws` client: its live session, event sender, followers and slot."""

    live = True  # a WebSocket slot holds an open socket: never a pending slot

    def __init__(self, ws: web.WebSocketResponse, runtime: Runtime, cfg: AppConfig, manager: ConnectionManager,
                 decoder: JpegDecoder, address: str = "") -> None:
        self.id = uuid.uuid4().hex[:8]
        self.address = address
        self.ws = ws
        self.rt = runtime
        self.server = cfg.server
        self.manager = manager
        self.decoder = decoder
        self.followers = Followers()
        self.out: asyncio.Queue[Optional[str]] = asyncio.Queue(maxsize=OUT_QUEUE)
        self.session: Optional[StreamSession] = None
        self.runner: Optional[asyncio.Task] = None
        self.sender: Optional[asyncio.Task] = None
        self.task = asyncio.current_task()
        self.rate = RateLimit(cfg.server.max_frame_rate)
        self.audio_rate = SAMPLE_RATE
        self.resampler = AudioResampler()
        self.t0: Optional[float] = None  # the client's capture time of its first message
        self.wall0 = 0.0
        self.audio_start: Optional[float] = None
        self.audio_samples = 0
        self.frames_rate_limited = 0
        self.audio_chunks_refused = 0
        self._refusal_warned = False
        self._started_with_audio = False
        self.ended = False

    # ------------------------------------------------------------------ events out
    def emit(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "sentiment":
            ESTIMATES.inc()
        elif kind == "transcript":
            TRANSCRIPTS.inc()
        self.followers.publish(event)
        try:
            self.out.put_nowait(encode_event(event))
        except asyncio.QueueFull:
            EVENTS_DROPPED.inc()

    async def _send(self) -> None:
        while (text := await self.out.get()) is not None:
            if self.ws.closed:
                continue
            try:
                await self.ws.send_str(text)
            except ConnectionError:
                pass

    # ------------------------------------------------------------------ start
    def start(self, msg: StartMessage) -> dict[str, Any]:
        if msg.stream is not None:
            if msg.stream in self.manager.connections:
                raise ProtocolError("stream_in_use", f"stream name {msg.stream!r} is in use; pick another or omit it")
            self.manager.rename(self, msg.stream)
        has_video, has_audio = msg.video is not None, msg.audio is not None
        if msg.audio is not None:
            self.audio_rate = msg.audio.rate
        self.session = StreamSession(self.id, self.rt, self.emit, live=True, has_video=has_video, has_audio=has_audio)
        self.sender = asyncio.create_task(self._send(), name=f"ws-{self.id}-send")
        for message in input_warnings("this stream", weights=self.rt.engine.weights, has_video=has_video, has_audio=has_audio,
                                      asr_enabled=self.session.has_audio, video_track="video", audio_track="audio"):
            self.emit(make_event("warning", self.id, 0.0, message=message))
        self.runner = asyncio.create_task(self.session.run(), name=f"ws-{self.id}-session")
        return {"type": "ready", "stream": self.id, "max_message_bytes": self.server.max_message_bytes,
                "max_frame_rate": self.server.max_frame_rate, "audio_lead_s": self.server.audio_lead_s}

    # ------------------------------------------------------------------ media in
    def _media_time(self, capture: float) -> float:
        if self.t0 is None:
            self.t0, self.wall0 = capture, time.perf_counter()
        return max(0.0, capture - self.t0)

    async def on_binary(self, data: bytes) -> None:
        assert self.session is not None
        if len(data) > self.server.max_message_bytes:
            raise ProtocolError("too_large", f"message of {len(data)} bytes (limit {self.server.max_message_bytes}, server.max_message_bytes)")
        if len(data) <= HEADER.size:
            raise ProtocolError("bad_message", f"binary message shorter than the {HEADER.size}-byte header plus payload")
        kind, capture = HEADER.unpack_from(data)
        if not math.isfinite(capture):
            raise ProtocolError("bad_message", "capture time (bytes 1-8, float64 little-endian) is not a finite number")
        payload = data[HEADER.size:]
        if kind == b"V":
            await self._video(capture, payload)
        elif kind == b"A":
            await self._audio(capture, payload)
        else:
            raise ProtocolError("bad_message", f"unknown kind {kind!r}: the first byte must be b'V' (video) or b'A' (audio)")

    async def _video(self, capture: float, payload: bytes) -> None:
        session = self.session
        assert session is not None
        if session.video is None:
            raise ProtocolError("bad_message", "video frame on a stream started without \"video\"")
        wall = time.perf_counter()
        t = self._media_time(capture)
        if not self.rate.allow():
            self.frames_rate_limited += 1
            FRAMES_DROPPED.labels("rate_limit").inc()
            return
        try:
            rgb = await self.decoder.decode(payload)
        except FrameRefused as exc:
            raise ProtocolError(exc.code, str(exc)) from None
        FRAMES_IN.inc()
        await session.push_video(VideoFrame(t, rgb, wall))

    async def _audio(self, capture: float, payload: bytes) -> None:
        session = self.session
        assert session is not None
        if session.audio is None:
            if self._started_with_audio:
                return  # ASR is off on this server: audio is accepted and ignored (a warning said so)
            raise ProtocolError("bad_message", "audio chunk on a stream started without \"audio\"")
        if len(payload) % 2:
            raise ProtocolError("bad_message", "audio payload must be whole 16-bit samples (even length)")
        wall = time.perf_counter()
        t = self._media_time(capture)
        if self.audio_start is None:
            self.audio_start = min(t, MAX_AUDIO_PAD_S)
        pcm = np.frombuffer(payload, "<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = self.audio_rate
        samples = self.resampler.resample(frame)
        ahead = self.audio_start + (self.audio_samples + samples.size) / SAMPLE_RATE - (wall - self.wall0)
        if ahead > self.server.audio_lead_s:
            self.audio_chunks_refused += 1
            if not self._refusal_warned:
                self._refusal_warned = True
                self.emit(make_event("warning", self.id, session.clock, message=(
                    f"audio arrives faster than real time: chunks more than {self.server.audio_lead_s:g} s ahead are "
                    "dropped (send at capture rate, or POST the file to /analyze)")))
            return
        if samples.size:
            chunk = AudioChunk(self.audio_start + self.audio_samples / SAMPLE_RATE, samples, wall)
            self.audio_samples += samples.size
            AUDIO_SECONDS.inc(samples.size / SAMPLE_RATE)
            await session.push_audio(chunk)

    # ------------------------------------------------------------------ end
    async def finish(self, send_summary: bool) -> None:
        """End the input, let the session drain, send the summary (if the client is there), stop sending."""
        self.ended = True
        if self.session is not None and self.runner is not None:
            self.session.end_input()
            summary: Optional[dict[str, Any]] = None
            try:
                summary = await asyncio.wait_for(asyncio.shield(self.runner), DRAIN_TIMEOUT_S)
            except asyncio.TimeoutError:
                self.runner.cancel()
                await asyncio.gather(self.runner, return_exceptions=True)
            except Exception as exc:
                log.error("ws %s: analysis failed: %r", self.id, exc, exc_info=exc)
                self.emit(make_event("error", self.id, self.session.clock, message=f"analysis failed: {exc}"))
            if summary is not None:
                summary.update(frames_rate_limited=self.frames_rate_limited, audio_chunks_refused=self.audio_chunks_refused)
                self.followers.publish(summary)
                if send_summary:
                    await self.out.put(encode_event(summary))
        if self.sender is not None:
            await self.out.put(None)
            await asyncio.gather(self.sender, return_exceptions=True)

    async def close(self, reason: str = "closed") -> None:
        """Server shutdown: close the socket (1001); the handler then finishes."""
        if not self.ws.closed:
            await self.ws.close(code=1001, message=b"server shutdown")


def ws_route(runtime: Runtime, cfg: AppConfig, manager: ConnectionManager):
    server = cfg.server
    # One decoder for every /ws stream: frames are scaled like WebRTC video, and at most
    # DECODE_CONCURRENCY of them decode at once on the media pool.
    decoder = JpegDecoder((server.max_video_width, server.max_video_height), manager.pool)

    async def handler(request: web.Request) -> web.WebSocketResponse:
        # aiohttp refuses messages over twice the limit itself (close 1009); up to that we answer with our error.
        ws = web.WebSocketResponse(max_msg_size=2 * server.max_message_bytes, heartbeat=30)
        await ws.prepare(request)
        if not authorized(request, server.token, allow_query=True):
            OFFERS_REJECTED.labels("unauthorized").inc()
            await send_error(ws, "unauthorized", "missing or wrong token: 'Authorization: Bearer <token>' or ?token=<token>")
            return ws
        address = request.remote or ""
        if (refused := manager.refusal(address)) is not None:
            _, reason, message = refused
            OFFERS_REJECTED.labels(reason).inc()
            await send_error(ws, "server_full", message)
            return ws
        stream = WsStream(ws, runtime, cfg, manager, decoder, address)
        manager.take(stream)  # takes the slot before any await
        clean_end = False
        try:
            try:
                first = await ws.receive(timeout=server.start_timeout_s)
            except asyncio.TimeoutError:
                raise ProtocolError("bad_message", f"no start message within {server.start_timeout_s:g} s "
                                                   "(server.start_timeout_s)") from None
            if first.type != WSMsgType.TEXT:
                if first.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    return ws
                raise ProtocolError("bad_message", "the first message must be the JSON start message (text)")
            start = parse_start(first.data)
            stream._started_with_audio = start.audio is not None
            await ws.send_str(json.dumps(stream.start(start)))
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    await stream.on_binary(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    try:
                        end = json.loads(msg.data).get("type") == "end"
                    except (json.JSONDecodeError, AttributeError):
                        end = False
                    if not end:
                        raise ProtocolError("bad_message", "after the start message only {\"type\": \"end\"} is understood as text")
                    clean_end = True
                    break
            await stream.finish(send_summary=clean_end)
            if clean_end:
                await ws.close(code=1000, message=b"done")
        except ProtocolError as exc:
            await stream.finish(send_summary=False)
            await send_error(ws, exc.code, str(exc))
        except Exception:
            log.exception("ws %s: failed", stream.id)
            await stream.finish(send_summary=False)
            await send_error(ws, "internal", "internal server error")
        finally:
            # A handler cancelled mid-finish (the client's connection dropped) leaves both tasks behind.
            for task in (stream.runner, stream.sender):
                if task is not None and not task.done():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            stream.followers.close()
            manager.forget(stream)
        return ws

    return handler


def follow_route(cfg: AppConfig, manager: ConnectionManager):
    """`GET /ws/events?stream=ID`: the events of a running stream (WebRTC, WebSocket or upload), read-only."""
    server = cfg.server

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=4096, heartbeat=30)
        await ws.prepare(request)
        if not authorized(request, server.token, allow_query=True):
            await send_error(ws, "unauthorized", "missing or wrong token: 'Authorization: Bearer <token>' or ?token=<token>")
            return ws
        name = request.query.get("stream", "")
        target = manager.connections.get(name)
        followers: Optional[Followers] = getattr(target, "followers", None)
        if followers is None:
            await send_error(ws, "unknown_stream", f"no running stream {name!r} (ids: /healthz counts them; a stream's id is "
                                                   "in its events' \"stream\" field)")
            return ws
        q = followers.subscribe()
        if q is None:
            await send_error(ws, "server_full", f"stream {name!r} already has {followers.limit} followers")
            return ws

        async def drain_client() -> None:  # read-only: anything the client sends is ignored; notices its close
            async for _ in ws:
                pass

        reader = asyncio.create_task(drain_client())
        getter: Optional[asyncio.Future] = None
        try:
            while not reader.done():
                getter = asyncio.ensure_future(q.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                text = getter.result()
                if text is None:
                    await ws.close(code=1000, message=b"stream ended")
                    break
                await ws.send_str(text)
        except ConnectionError:
            pass
        finally:
            followers.unsubscribe(q)
            pending = [t for t in (getter, reader) if t is not None]  # a handler cancelled mid-wait (the client went)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        return ws

    return handler
