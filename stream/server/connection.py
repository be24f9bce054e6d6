"""One WebRTC peer of `sentistream serve`: signalling and lifecycle.

A connection feeds the client's camera and microphone (stream.sources.webrtc) into its own live
`StreamSession` (the model engine and Whisper are shared through the process `Runtime`), sends
every event over its `EventChannel`, and returns one `OverlayTrack`. Nothing queues without
bound: see those modules.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import time
import uuid
from typing import Any, Callable, Optional

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from models.errors import one_line

from ..config import ServerConfig
from ..events import input_warnings, make_event
from ..metrics import CONNECTIONS_CLOSED, ESTIMATES, FRAMES_DROPPED, TRANSCRIPTS
from ..overlay import OverlayTracker
from ..runtime import Runtime
from ..session import StreamSession
from ..sources.webrtc import TrackClock, audio_chunks, discard, video_frames
from .channel import EventChannel
from .followers import Followers
from .overlay_track import OverlayTrack

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 5.0  # on close, let the session finish its last ASR pass, then cancel it
MAX_CONTROL_MESSAGE = 1024  # client -> server data channel messages ({"type": "bye"}); longer ones are ignored


class OfferError(ValueError):
    """The client's offer cannot be used (HTTP 400); the message is shown to the client."""


class Connection:
    def __init__(self, runtime: Runtime, pool: concurrent.futures.Executor, ice_servers: tuple[RTCIceServer, ...],
                 limits: ServerConfig, on_live: Callable[["Connection"], None],
                 on_closed: Callable[["Connection"], None], address: str = "") -> None:
        self.id = uuid.uuid4().hex[:8]
        self.rt = runtime
        self.pool = pool
        self.address = address  # the client's IP: the per-address cap counts these
        self._on_live = on_live  # pending -> live (counted)
        self._on_closed = on_closed  # frees the slot
        # An answered offer whose peer never connects gives its slot back after connect_timeout_s; a
        # connected one silent (no RTP packet, no data channel message) for media_timeout_s is closed.
        self.connect_timeout_s = limits.connect_timeout_s
        self.media_timeout_s = limits.media_timeout_s
        self.heartbeat_s = limits.heartbeat_s
        self.max_video_size = (limits.max_video_width, limits.max_video_height)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=list(ice_servers)))
        self.tracker = OverlayTracker(blur_faces=runtime.cfg.faces.blur_in_overlay)
        self.events = EventChannel()
        self.followers = Followers()  # GET /ws/events?stream=ID
        self.clock = TrackClock()
        self.session: Optional[StreamSession] = None
        self.overlay: Optional[OverlayTrack] = None
        self.tracks: dict[str, MediaStreamTrack] = {}
        self.extra_tracks: list[MediaStreamTrack] = []
        self.tasks: list[asyncio.Task] = []
        self.runner: Optional[asyncio.Task] = None
        self.closing = False
        self.closed = asyncio.Event()
        self.live = False  # the peer connected at least once (else: pending)
        self._connected = asyncio.Event()
        self._closer: Optional[asyncio.Task] = None  # the close this connection scheduled itself
        self._messages = 0  # data channel messages received (liveness)
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
        if self.heartbeat_s > 0:
            self.tasks.append(asyncio.create_task(self._heartbeat(), name=f"conn-{self.id}-heartbeat"))
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
        channel.on("message", self._on_message)

    def _on_message(self, message: Any) -> None:
        """Any message shows the peer is alive; `{"type": "bye"}` (the page leaving) frees the slot now."""
        self._messages += 1
        if not isinstance(message, str) or len(message) > MAX_CONTROL_MESSAGE:
            return
        try:
            data = json.loads(message)
        except (ValueError, RecursionError):
            return
        if isinstance(data, dict) and data.get("type") == "bye":
            self.schedule_close("bye")

    def _on_state(self) -> None:
        state = self.pc.connectionState
        log.info("connection %s: %s", self.id, state)
        if state == "connected" and not self.live:
            self.live = True
            self._connected.set()
            self._on_live(self)
        if state in ("failed", "closed"):
            self.schedule_close(state)

    def schedule_close(self, reason: str) -> None:
        """Close from a callback: the task is kept (not dropped to the garbage collector), once."""
        if self._closer is None and not self.closing:
            self._closer = asyncio.create_task(self.close(reason), name=f"conn-{self.id}-close")

    async def _activity(self) -> int:
        """RTP packets received on every track plus data channel messages: grows while the peer lives.

        Counted at the transport (receiver stats), not where the session consumes frames, so a
        busy pipeline that reads slowly never makes a live peer look silent."""
        packets = 0
        for receiver in self.pc.getReceivers():
            for stats in (await receiver.getStats()).values():
                if getattr(stats, "type", None) == "inbound-rtp":
                    packets += stats.packetsReceived
        return packets + self._messages

    async def _watchdog(self) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), self.connect_timeout_s)
        except asyncio.TimeoutError:
            await self.close("connect_timeout")
            return
        step = min(1.0, self.media_timeout_s / 4)
        seen, last = await self._activity(), time.monotonic()
        while True:
            await asyncio.sleep(step)
            activity, now = await self._activity(), time.monotonic()
            if activity != seen:
                seen, last = activity, now
            elif now - last >= self.media_timeout_s:
                log.info("connection %s: no media or data for %g s", self.id, self.media_timeout_s)
                await self.close("media_timeout")
                return

    async def _heartbeat(self) -> None:
        """`{"type": "heartbeat"}` on the open data channel every heartbeat_s: silence tells the client
        this server process is gone (a killed process sends no goodbye; ICE takes ~30 s to notice)."""
        while True:
            await asyncio.sleep(self.heartbeat_s)
            if self.events.is_open:
                self.events.send({"type": "heartbeat", "stream": self.id})

    def _on_session_done(self, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("connection %s: analysis failed: %r", self.id, exc, exc_info=exc)
            self.emit(make_event("error", self.id, 0.0, message=f"analysis failed: {exc}"))
            self.schedule_close("analysis_failed")
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
        self.followers.publish(event)

    # ------------------------------------------------------------------ media in
    async def _consume_video(self, track: MediaStreamTrack) -> None:
        assert self.session is not None
        session, dropped_seen = self.session, 0
        try:
            # The returned video is drawn from the decoded frames it relays (OverlayTrack): analysis
            # needs only the sampled frames, at the model's size.
            async for received in video_frames(track, self.clock, self.pool, session.frame_policy(), self.max_video_size):
                await session.push_video(received.frame)
                dropped = session.frames_dropped
                if dropped > dropped_seen:
                    FRAMES_DROPPED.labels("analysis").inc(dropped - dropped_seen)
                    dropped_seen = dropped
                if self.overlay is not None:
                    self.overlay.offer(received.decoded, received.pts, received.time_base)
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
        """Idempotent: stop media tasks, end the session, close the peer connection, free the slot.

        `reason` is one of a few words (a metric label): bye, media_timeout, connect_timeout, failed,
        closed, shutdown, offer_failed, analysis_failed."""
        if self.closing:
            await self.closed.wait()
            return
        self.closing = True
        CONNECTIONS_CLOSED.labels(reason).inc()
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
            self.followers.close()
            self._on_closed(self)
            self.closed.set()
