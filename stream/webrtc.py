"""WebRTC connections for `sentistream serve`: one `Connection` per browser peer.

Each connection feeds the client's camera and microphone into its own live `StreamSession` (the
model engine and Whisper are shared through the process `Runtime`), sends every event as JSON
over the client's "events" data channel, and returns one video track: the client's frames with
the latest estimate drawn on them, relayed at the client's rate and never waiting on analysis.

Nothing queues without bound: aiortc's remote tracks buffer decoded frames in an unbounded queue,
so a consumer task drains each track continuously and skips decoder backlog (counted); the
returned track only ever relays the newest frame; events back up at most `MAX_BUFFERED_BYTES` on
the data channel before being dropped (counted).
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Optional

import av
import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from prometheus_client import Counter, Gauge

from .audio import SAMPLE_RATE, AudioResampler
from .config import AppConfig
from .errors import one_line
from .events import make_event
from .overlay import OverlayState, OverlayTracker, draw_overlay
from .runtime import RANDOM_WEIGHTS_WARNING, Runtime
from .session import StreamSession
from .sources import AudioChunk, VideoFrame

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 30.0  # an answered offer whose peer never connects gives its slot back
DRAIN_TIMEOUT_S = 5.0  # on close, let the session finish its last ASR pass, then cancel it
MAX_BUFFERED_BYTES = 1 << 20  # data-channel back-pressure: drop events beyond this (client not reading)
MAX_AUDIO_PAD_S = 5.0  # silence put before audio that starts late (aligns Whisper's clock)
PENDING_EVENTS = 32  # events emitted before the data channel opens (warnings): keep the newest

CONNECTIONS = Gauge("sentistream_connections", "Open WebRTC connections")
CONNECTIONS_TOTAL = Counter("sentistream_connections_accepted", "WebRTC connections accepted")
OFFERS_REJECTED = Counter("sentistream_offers_rejected", "Offers refused", ["reason"])
FRAMES_IN = Counter("sentistream_frames_in", "Video frames received from clients")
FRAMES_DROPPED = Counter("sentistream_frames_dropped", "Video frames dropped as stale", ["where"])
AUDIO_SECONDS = Counter("sentistream_audio_seconds", "Seconds of client audio received")
ESTIMATES = Counter("sentistream_estimates", "Sentiment estimates sent")
TRANSCRIPTS = Counter("sentistream_transcripts", "Transcript events sent")
EVENTS_DROPPED = Counter("sentistream_events_dropped", "Events not sent: data channel backed up or closed")


class OfferError(ValueError):
    """The client's offer cannot be used (HTTP 400); the message is shown to the client."""


@dataclass(frozen=True)
class _Latest:
    seq: int
    pts: Optional[int]
    time_base: Any
    rgb: np.ndarray


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def _render(rgb: np.ndarray, state: OverlayState) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(draw_overlay(rgb, state), format="rgb24")


class OverlayTrack(MediaStreamTrack):
    """The returned video: the newest client frame with the overlay, one per client frame at most."""

    kind = "video"

    def __init__(self, conn: "Connection") -> None:
        super().__init__()
        self._conn = conn
        self._wake = asyncio.Event()
        self._sent = 0  # seq of the last relayed frame

    def notify(self) -> None:
        self._wake.set()

    async def recv(self) -> av.VideoFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            latest = self._conn.latest
            if latest is not None and latest.seq != self._sent:
                break
            self._wake.clear()
            await self._wake.wait()
        if latest.seq - self._sent > 1:  # the encoder was slower than the client: skip, never queue
            FRAMES_DROPPED.labels("relay").inc(latest.seq - self._sent - 1)
        self._sent = latest.seq
        state = self._conn.tracker.state()  # snapshot on the loop; drawing happens off it
        out = await asyncio.get_running_loop().run_in_executor(self._conn.pool, _render, latest.rgb, state)
        out.pts, out.time_base = latest.pts, latest.time_base
        return out

    def stop(self) -> None:
        super().stop()
        self._wake.set()


class Connection:
    def __init__(self, manager: "ConnectionManager") -> None:
        self.id = uuid.uuid4().hex[:8]
        self.manager = manager
        self.rt: Runtime = manager.runtime
        self.pool = manager.pool
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=list(manager.ice_servers)))
        self.tracker = OverlayTracker()
        self.channel: Any = None
        self.pending: collections.deque[str] = collections.deque(maxlen=PENDING_EVENTS)
        self.session: Optional[StreamSession] = None
        self.overlay: Optional[OverlayTrack] = None
        self.latest: Optional[_Latest] = None
        self.tracks: dict[str, MediaStreamTrack] = {}
        self.extra_tracks: list[MediaStreamTrack] = []
        self.tasks: list[asyncio.Task] = []
        self.runner: Optional[asyncio.Task] = None
        self.t0: Optional[float] = None  # wall clock of the first media item: media time 0
        self.closing = False
        self.closed = asyncio.Event()
        self._inputs_open = 0

    # ------------------------------------------------------------------ signalling
    async def start(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        pc = self.pc
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_state)
        try:
            await pc.setRemoteDescription(offer)
        except Exception as exc:  # aiortc raises many kinds on bad SDP; all are the client's fault
            raise OfferError(f"unusable SDP offer: {one_line(exc)}") from None
        video, audio = self.tracks.get("video"), self.tracks.get("audio")
        if video is None and audio is None:
            raise OfferError("the offer sends neither audio nor video")
        self.session = StreamSession(self.id, self.rt, self._emit, live=True,
                                     has_video=video is not None, has_audio=audio is not None)
        if video is not None:
            self.overlay = OverlayTrack(self)
            pc.addTrack(self.overlay)  # reuses the client's video transceiver: answer is sendrecv
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)  # non-trickle: waits for ICE gathering
        self._warn_modalities()
        self.runner = asyncio.create_task(self.session.run(), name=f"conn-{self.id}-session")
        self.runner.add_done_callback(self._on_session_done)
        for kind, track in self.tracks.items():
            self._inputs_open += 1
            consume = self._consume_video if kind == "video" else self._consume_audio
            self.tasks.append(asyncio.create_task(consume(track), name=f"conn-{self.id}-{kind}"))
        for track in self.extra_tracks:  # unused extra tracks still need draining (unbounded queue)
            self.tasks.append(asyncio.create_task(self._discard(track), name=f"conn-{self.id}-extra"))
        self.tasks.append(asyncio.create_task(self._watchdog(), name=f"conn-{self.id}-watchdog"))
        desc = pc.localDescription
        return RTCSessionDescription(sdp=desc.sdp, type=desc.type)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind in ("audio", "video") and track.kind not in self.tracks:
            self.tracks[track.kind] = track
        else:
            self.extra_tracks.append(track)

    def _on_datachannel(self, channel: Any) -> None:
        if channel.label != "events":
            return
        self.channel = channel
        if channel.readyState == "open":
            self._flush()
        else:
            channel.on("open", self._flush)

    def _on_state(self) -> None:
        state = self.pc.connectionState
        log.info("connection %s: %s", self.id, state)
        if state in ("failed", "closed"):
            asyncio.ensure_future(self.close(state))

    async def _watchdog(self) -> None:
        await asyncio.sleep(CONNECT_TIMEOUT_S)
        if self.pc.connectionState != "connected":
            await self.close("connect timeout")

    def _on_session_done(self, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("connection %s: analysis failed: %r", self.id, exc, exc_info=exc)
            self._emit(make_event("error", self.id, 0.0, message=f"analysis failed: {exc}"))
            asyncio.ensure_future(self.close("analysis failed"))
        else:
            self._emit(task.result())  # the summary, if the channel is still there

    # ------------------------------------------------------------------ events out
    def _warn_modalities(self) -> None:
        if self.rt.engine.weights == "random":
            self._emit(make_event("warning", self.id, 0.0, message=RANDOM_WEIGHTS_WARNING))
        assert self.session is not None
        if "video" not in self.tracks:
            self._emit(make_event("warning", self.id, 0.0, message="no camera track: text-only estimates (image weight 0)"))
        if "audio" not in self.tracks:
            self._emit(make_event("warning", self.id, 0.0, message="no microphone track: visual-only estimates (text weight 0)"))
        elif not self.session.has_audio:
            self._emit(make_event("warning", self.id, 0.0, message="speech recognition is off: visual-only estimates (text weight 0)"))

    def _emit(self, event: dict[str, Any]) -> None:
        self.tracker.feed(event)
        kind = event.get("type")
        if kind == "sentiment":
            ESTIMATES.inc()
        elif kind == "transcript":
            TRANSCRIPTS.inc()
        text = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        ch = self.channel
        if ch is None:
            if len(self.pending) == self.pending.maxlen:
                EVENTS_DROPPED.inc()
            self.pending.append(text)
        elif ch.readyState == "open" and ch.bufferedAmount < MAX_BUFFERED_BYTES:
            ch.send(text)
        else:
            EVENTS_DROPPED.inc()

    def _flush(self) -> None:
        ch = self.channel
        while self.pending and ch is not None and ch.readyState == "open":
            ch.send(self.pending.popleft())

    # ------------------------------------------------------------------ media in
    def _since_start(self, wall: float) -> float:
        if self.t0 is None:
            self.t0 = wall
        return wall - self.t0

    async def _consume_video(self, track: MediaStreamTrack) -> None:
        assert self.session is not None
        loop = asyncio.get_running_loop()
        session, seq, offset, dropped_seen = self.session, 0, None, 0
        try:
            while True:
                frame = await track.recv()
                frame = self._newest(track, frame)
                wall = time.perf_counter()
                rgb = await loop.run_in_executor(self.pool, _to_rgb, frame)
                since = self._since_start(wall)
                media = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else since
                if offset is None:  # anchor the client's clock to the connection's media clock
                    offset = since - media
                FRAMES_IN.inc()
                await session.push_video(VideoFrame(offset + media, rgb, wall))
                dropped = session.video_q.dropped
                if dropped > dropped_seen:
                    FRAMES_DROPPED.labels("analysis").inc(dropped - dropped_seen)
                    dropped_seen = dropped
                seq += 1
                self.latest = _Latest(seq, frame.pts, frame.time_base, rgb)
                if self.overlay is not None:
                    self.overlay.notify()
        except MediaStreamError:
            pass
        finally:
            self._input_ended()

    @staticmethod
    def _newest(track: MediaStreamTrack, frame: av.VideoFrame) -> av.VideoFrame:
        """Skip frames the decoder queued while we were busy (aiortc's track queue is unbounded)."""
        queue = getattr(track, "_queue", None)
        skipped = 0
        while queue is not None and queue.qsize() > 0:
            newer = queue.get_nowait()
            if newer is None:  # end-of-track marker: put it back for the next recv()
                queue.put_nowait(None)
                break
            frame, skipped = newer, skipped + 1
        if skipped:
            FRAMES_DROPPED.labels("decode_backlog").inc(skipped)
        return frame

    async def _consume_audio(self, track: MediaStreamTrack) -> None:
        assert self.session is not None
        resampler, start, n = AudioResampler(), None, 0
        try:
            while True:
                frame = await track.recv()
                samples = resampler.resample(frame)
                if samples.size == 0:
                    continue
                wall = time.perf_counter()
                if start is None:
                    # Audio that starts late keeps the connection's clock (capped): the session
                    # pads the gap with silence so transcript and video share one timeline.
                    start = min(self._since_start(wall), MAX_AUDIO_PAD_S)
                # Media time by sample count: Whisper's timeline, immune to network jitter.
                await self.session.push_audio(AudioChunk(start + n / SAMPLE_RATE, samples, wall))
                n += samples.size
                AUDIO_SECONDS.inc(samples.size / SAMPLE_RATE)
        except MediaStreamError:
            pass
        finally:
            self._input_ended()

    @staticmethod
    async def _discard(track: MediaStreamTrack) -> None:
        try:
            while True:
                await track.recv()
        except MediaStreamError:
            pass

    def _input_ended(self) -> None:
        self._inputs_open -= 1
        if self._inputs_open <= 0 and self.session is not None:
            self.session.end_input()

    # ------------------------------------------------------------------ teardown
    async def close(self, reason: str = "closed") -> None:
        """Idempotent: stop media tasks, end the session, close the peer connection, free the slot."""
        if self.closing:
            await self.closed.wait()
            return
        self.closing = True
        log.info("connection %s: closing (%s)", self.id, reason)
        try:
            current = asyncio.current_task()
            for task in self.tasks:
                if task is not current:
                    task.cancel()
            await asyncio.gather(*(t for t in self.tasks if t is not current), return_exceptions=True)
            if self.overlay is not None:
                self.overlay.stop()
            if self.session is not None:
                self.session.end_input()
            try:
                await self.pc.close()
            except Exception:  # a half-set-up pc may fail to close cleanly; it holds no socket then
                log.debug("connection %s: pc.close failed", self.id, exc_info=True)
            if self.runner is not None and not self.runner.done():
                try:
                    await asyncio.wait_for(asyncio.shield(self.runner), DRAIN_TIMEOUT_S)
                except (asyncio.TimeoutError, Exception):
                    self.runner.cancel()
                    await asyncio.gather(self.runner, return_exceptions=True)
        finally:
            # Drop references so the session (windows, ASR buffer) and frames are freed now.
            self.tasks.clear()
            self.tracks.clear()
            self.extra_tracks.clear()
            self.latest = None
            self.channel = None
            self.pending.clear()
            self.manager._forget(self)
            self.closed.set()


class ConnectionManager:
    """All connections of one server: the slot count, the shared media thread pool, shutdown."""

    def __init__(self, runtime: Runtime, cfg: AppConfig, ice_servers: tuple[RTCIceServer, ...] = ()) -> None:
        self.runtime = runtime
        self.cfg = cfg
        self.ice_servers = ice_servers  # none by default: no internet, host candidates suffice locally
        self.connections: dict[str, Connection] = {}
        # Colour conversion and overlay drawing for every connection: OpenCV/swscale release the GIL.
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="sentistream-media")
        self.started = time.time()

    @property
    def full(self) -> bool:
        return len(self.connections) >= self.cfg.server.max_clients

    async def open(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        """Registers the connection before the first await, so the slot check cannot race."""
        conn = Connection(self)
        self.connections[conn.id] = conn
        CONNECTIONS.set(len(self.connections))
        try:
            answer = await conn.start(offer)
        except BaseException:
            await conn.close("offer failed")
            raise
        CONNECTIONS_TOTAL.inc()
        return answer

    def _forget(self, conn: Connection) -> None:
        self.connections.pop(conn.id, None)
        CONNECTIONS.set(len(self.connections))

    async def close_all(self) -> None:
        await asyncio.gather(*(c.close("server shutdown") for c in list(self.connections.values())), return_exceptions=True)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
