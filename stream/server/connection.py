"""One WebRTC peer of `sentistream serve`: signalling and lifecycle.

A connection feeds the client's camera and microphone (stream.sources.webrtc) into its own live
`StreamSession` (the model engine and Whisper are shared through the process `Runtime`), sends
every event over its `EventChannel`, and returns one `OverlayTrack`. Nothing queues without
bound: see those modules.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import uuid
from typing import Any, Callable, Optional

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from models.errors import one_line

from ..events import input_warnings, make_event
from ..metrics import ESTIMATES, FRAMES_DROPPED, TRANSCRIPTS
from ..overlay import OverlayTracker
from ..runtime import Runtime
from ..session import StreamSession
from ..sources.webrtc import TrackClock, audio_chunks, discard, video_frames
from .channel import EventChannel
from .overlay_track import OverlayTrack

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 5.0  # on close, let the session finish its last ASR pass, then cancel it


class OfferError(ValueError):
    """The client's offer cannot be used (HTTP 400); the message is shown to the client."""


class Connection:
    def __init__(self, runtime: Runtime, pool: concurrent.futures.Executor, ice_servers: tuple[RTCIceServer, ...],
                 on_closed: Callable[["Connection"], None], connect_timeout_s: float) -> None:
        self.id = uuid.uuid4().hex[:8]
        self.rt = runtime
        self.pool = pool
        self._on_closed = on_closed  # frees the slot
        self.connect_timeout_s = connect_timeout_s  # an answered offer whose peer never connects gives its slot back
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=list(ice_servers)))
        self.tracker = OverlayTracker()
        self.events = EventChannel()
        self.clock = TrackClock()
        self.session: Optional[StreamSession] = None
        self.overlay: Optional[OverlayTrack] = None
        self.tracks: dict[str, MediaStreamTrack] = {}
        self.extra_tracks: list[MediaStreamTrack] = []
        self.tasks: list[asyncio.Task] = []
        self.runner: Optional[asyncio.Task] = None
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
        self.session = StreamSession(self.id, self.rt, self.emit, live=True,
                                     has_video=video is not None, has_audio=audio is not None)
        if video is not None:
            self.overlay = OverlayTrack(self.tracker, self.pool)
            pc.addTrack(self.overlay)  # reuses the client's video transceiver: answer is sendrecv
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)  # non-trickle: waits for ICE gathering
        for message in input_warnings("this call", weights=self.rt.engine.weights, has_video=video is not None,
                                      has_audio=audio is not None, asr_enabled=self.session.has_audio,
                                      video_track="camera track", audio_track="microphone track",
                                      language=self.rt.cfg.asr.language, vision_model=self.rt.cfg.vision.model):
            self.emit(make_event("warning", self.id, 0.0, message=message))
        self.runner = asyncio.create_task(self.session.run(), name=f"conn-{self.id}-session")
        self.runner.add_done_callback(self._on_session_done)
        for kind, track in self.tracks.items():
            self._inputs_open += 1
            consume = self._consume_video if kind == "video" else self._consume_audio
            self.tasks.append(asyncio.create_task(consume(track), name=f"conn-{self.id}-{kind}"))
        for track in self.extra_tracks:  # unused extra tracks still need draining (unbounded queue)
            self.tasks.append(asyncio.create_task(discard(track), name=f"conn-{self.id}-extra"))
        self.tasks.append(asyncio.create_task(self._watchdog(), name=f"conn-{self.id}-watchdog"))
        desc = pc.localDescription
        return RTCSessionDescription(sdp=desc.sdp, type=desc.type)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind in ("audio", "video") and track.kind not in self.tracks:
            self.tracks[track.kind] = track
        else:
            self.extra_tracks.append(track)

    def _on_datachannel(self, channel: Any) -> None:
        if channel.label == "events":
            self.events.attach(channel)

    def _on_state(self) -> None:
        state = self.pc.connectionState
        log.info("connection %s: %s", self.id, state)
        if state in ("failed", "closed"):
            asyncio.ensure_future(self.close(state))

    async def _watchdog(self) -> None:
        await asyncio.sleep(self.connect_timeout_s)
        if self.pc.connectionState != "connected":
            await self.close("connect timeout")

    def _on_session_done(self, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("connection %s: analysis failed: %r", self.id, exc, exc_info=exc)
            self.emit(make_event("error", self.id, 0.0, message=f"analysis failed: {exc}"))
            asyncio.ensure_future(self.close("analysis failed"))
        else:
            self.emit(task.result())  # the summary, if the channel is still there

    # ------------------------------------------------------------------ events out
    def emit(self, event: dict[str, Any]) -> None:
        self.tracker.feed(event)
        kind = event.get("type")
        if kind == "sentiment":
            ESTIMATES.inc()
        elif kind == "transcript":
            TRANSCRIPTS.inc()
        self.events.send(event)

    # ------------------------------------------------------------------ media in
    async def _consume_video(self, track: MediaStreamTrack) -> None:
        assert self.session is not None
        session, dropped_seen = self.session, 0
        try:
            async for received in video_frames(track, self.clock, self.pool):
                await session.push_video(received.frame)
                dropped = session.frames_dropped
                if dropped > dropped_seen:
                    FRAMES_DROPPED.labels("analysis").inc(dropped - dropped_seen)
                    dropped_seen = dropped
                if self.overlay is not None:
                    self.overlay.offer(received.frame.image, received.pts, received.time_base)
        finally:
            self._input_ended()

    async def _consume_audio(self, track: MediaStreamTrack) -> None:
        assert self.session is not None
        try:
            async for chunk in audio_chunks(track, self.clock):
                await self.session.push_audio(chunk)
        finally:
            self._input_ended()

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
            self.events.detach()
            self._on_closed(self)
            self.closed.set()
