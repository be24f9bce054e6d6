"""sentistream in a Pipecat pipeline: `SentimentProcessor`, a `FrameProcessor`.

    from stream.integrations.pipecat import SentimentProcessor, build_runtime_for_pipecat

    runtime = await build_runtime_for_pipecat("configs/default.yaml")
    pipeline = Pipeline([transport.input(), SentimentProcessor(runtime), ..., transport.output()])

It takes the camera (`InputImageRawFrame`, `UserImageRawFrame`), the microphone
(`InputAudioRawFrame`) and, when an upstream speech-to-text service produces them,
`TranscriptionFrame`s / `InterimTranscriptionFrame`s: from the first of those on, their text is
the transcript and our Whisper gets no more audio (build the runtime with `need_asr=False` to not
load it at all). Every frame is passed on unchanged. Each estimate (every `window.hop` seconds)
goes downstream as a `SentimentFrame` (a SystemFrame) and, unless `rtvi=False`, as an
`RTVIServerMessageFrame` whose data is the `sentiment` event of the JSONL schema, which the
pipeline's RTVI observer sends to the browser client as a `server-message`.

A transport passes camera frames on only for the sources its params list, e.g.
`TransportParams(video_in_enabled=True, video_in_sources={"camera": VideoInSourceParams(framerate=10)})`
(examples/pipecat_webrtc.py); frames beyond `sampler.fps` are passed on without being read.

The media go into one live `StreamSession` per pipeline run (StartFrame .. EndFrame/CancelFrame)
on the `Runtime` given (models loaded once, shared by every pipeline of the process), as WebRTC
and WebSocket media do in `sentistream serve`. `process_frame` never waits for compute: the
session's queues are the live ones (bounded, drop-oldest) and estimates come back through a
bounded queue of their own, pushed by a task. At EndFrame the session drains for at most
`drain_s` seconds, so the last estimates come out before the EndFrame does.

Pipecat is imported here only: `stream` and plain installs never need it
(`pip install 'sentistream[pipecat]'`).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import av
import numpy as np
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InputImageRawFrame,
    InterimTranscriptionFrame,
    StartFrame,
    SystemFrame,
    TranscriptionFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.processors.frameworks.rtvi import RTVIServerMessageFrame

from ..api import ConfigLike, Overrides, resolve_config
from ..events import input_warnings, make_event
from ..runtime import Runtime, build_runtime
from ..session import StreamSession
from ..sources import SAMPLE_RATE, AudioChunk, AudioResampler, VideoFrame
from ..sources.webrtc import MAX_AUDIO_PAD_S, TrackClock

log = logging.getLogger(__name__)

DRAIN_S = 3.0  # at EndFrame: how long the session may take to finish what it has queued
MAX_PENDING = 64  # estimates/warnings waiting to be pushed; beyond: the oldest is dropped (counted)
_CHANNELS = {"RGB": 3, "RGBA": 4, "BGR": 3, "BGRA": 4}


@dataclass
class SentimentFrame(SystemFrame):
    """One sentistream estimate: `event` is the `sentiment` event of the JSONL schema (t, label,
    probs, score, modalities, faces, weights, latency_ms); its main fields are at hand below."""

    event: dict[str, Any]

    @property
    def label(self) -> str:
        return self.event["label"]

    @property
    def score(self) -> float:
        return self.event["score"]

    @property
    def t(self) -> float:
        """Media seconds since the first frame of this pipeline run."""
        return self.event["t"]

    @property
    def faces(self) -> list[dict[str, Any]]:
        """One estimate per tracked face ({id, bbox, label, probs, score, ...}); empty with faces off."""
        return self.event.get("faces") or []

    def __str__(self) -> str:
        return f"{self.name}(t: {self.t}, label: {self.label}, score: {self.score:+.2f}, faces: {len(self.faces)})"


async def build_runtime_for_pipecat(config: ConfigLike = None, overrides: Overrides = None, *, need_asr: bool = True) -> Runtime:
    """The models for `SentimentProcessor`s, loaded once (a YAML path or AppConfig, `--set`-style
    overrides, as `stream.api.analyze` takes them). `need_asr=False`: no Whisper (the pipeline has
    its own speech-to-text). Close it with `await runtime.close()` when the process is done."""
    return await build_runtime(resolve_config(config, overrides), need_asr=need_asr)


def image_to_rgb(frame: InputImageRawFrame) -> Optional[np.ndarray]:
    """The frame's pixels as a new HxWx3 RGB array; None for a format we cannot read."""
    channels = _CHANNELS.get((frame.format or "RGB").upper())
    width, height = frame.size
    if channels is None or width <= 0 or height <= 0 or len(frame.image) != width * height * channels:
        return None
    pixels = np.frombuffer(frame.image, np.uint8).reshape(height, width, channels)  # read-only: the frame's bytes
    if frame.format and frame.format.upper().startswith("BGR"):
        return np.ascontiguousarray(pixels[..., 2::-1])
    return np.ascontiguousarray(pixels[..., :3]) if channels == 4 else pixels.copy()


class _AudioIn:
    """Pipecat PCM (s16, interleaved, any rate) -> 16 kHz mono chunks on the pipeline's media clock,
    timed by their sample count as WebRTC audio is (stream.sources.webrtc)."""

    def __init__(self, clock: TrackClock) -> None:
        self.clock = clock
        self.resampler = AudioResampler()
        self.start: Optional[float] = None
        self.samples = 0

    def chunk(self, frame: InputAudioRawFrame, wall: float) -> Optional[AudioChunk]:
        channels = max(1, frame.num_channels)
        pcm = np.frombuffer(frame.audio, "<i2")
        if pcm.size < channels:
            return None
        pcm = pcm[: pcm.size // channels * channels]
        if frame.sample_rate == SAMPLE_RATE and channels == 1:
            samples = pcm.astype(np.float32) / 32768.0
        else:
            layout = "mono" if channels == 1 else "stereo" if channels == 2 else None
            if layout is None:
                return None
            av_frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout=layout)
            av_frame.sample_rate = frame.sample_rate
            samples = self.resampler.resample(av_frame)
        if samples.size == 0:
            return None
        if self.start is None:
            self.start = min(self.clock.since_start(wall), MAX_AUDIO_PAD_S)
        chunk = AudioChunk(self.start + self.samples / SAMPLE_RATE, samples, wall)
        self.samples += samples.size
        return chunk


class SentimentProcessor(FrameProcessor):
    """Face/video + voice sentiment for a Pipecat pipeline. See the module docstring.

    `runtime`: the loaded models (`build_runtime_for_pipecat`), shared by every processor of the
    process and closed by its owner. `stream`: the name in the events. `rtvi`: also push each
    estimate as an `RTVIServerMessageFrame` for the browser client. `drain_s`: at EndFrame, how
    long to let the last queued media finish. `video_source`: the transport source analysed
    ("camera"; a screen share is passed on, not read); frames without a source are always read;
    None: every source. `on_event`: called on the event loop with every event
    of the run as it is produced (sentiment, warning, error, the summary at the end), e.g. to
    publish them elsewhere; it must not block."""

    def __init__(self, runtime: Runtime, *, stream: str = "pipecat", rtvi: bool = True, drain_s: float = DRAIN_S,
                 video_source: Optional[str] = "camera", on_event: Optional[Callable[[dict[str, Any]], None]] = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.runtime = runtime
        self.stream = stream
        self.rtvi = rtvi
        self.drain_s = drain_s
        self.video_source = video_source
        self.on_event = on_event
        self.session: Optional[StreamSession] = None
        self.summary: Optional[dict[str, Any]] = None  # the session's summary event, once it ended
        self.upstream_text = False  # a TranscriptionFrame came: its text, not Whisper's
        self.frames_unreadable = 0
        self.events_dropped = 0
        self._clock = TrackClock()
        self._audio = _AudioIn(self._clock)
        self._out: Optional[asyncio.Queue[Optional[dict[str, Any]]]] = None
        self._runner: Optional[asyncio.Task] = None
        self._pusher: Optional[asyncio.Task] = None
        self._warned_format = False

    # ------------------------------------------------------------------ frames in
    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self._start()
        elif isinstance(frame, InputImageRawFrame):  # UserImageRawFrame too
            await self._video(frame)  # live session queues: a push never waits
        elif isinstance(frame, InputAudioRawFrame):
            await self._audio_frame(frame)
        elif isinstance(frame, (TranscriptionFrame, InterimTranscriptionFrame)):
            self._text(frame)
        elif isinstance(frame, EndFrame):
            await self._finish(self.drain_s)
        elif isinstance(frame, CancelFrame):
            await self._finish(0.0)
        await self.push_frame(frame, direction)

    def _start(self) -> None:
        if self._runner is not None:
            return
        self.upstream_text, self.summary = False, None
        self._clock = TrackClock()
        self._audio = _AudioIn(self._clock)
        has_audio = self.runtime.whisper is not None
        self._out = asyncio.Queue(maxsize=MAX_PENDING)
        self.session = StreamSession(self.stream, self.runtime, self._emit, live=True, has_video=True, has_audio=has_audio)
        for message in input_warnings("this pipeline", weights=self.runtime.engine.weights, has_video=True,
                                      has_audio=has_audio, asr_enabled=self.session.has_audio,
                                      video_track="camera", audio_track="microphone",
                                      language=self.runtime.cfg.asr.language, vision_model=self.runtime.cfg.vision.model):
            self._emit(make_event("warning", self.stream, 0.0, message=message))
        self._runner = self.create_task(self._run(self.session), f"{self.name}-session")
        self._pusher = self.create_task(self._push_events(self._out), f"{self.name}-events")

    async def _video(self, frame: InputImageRawFrame) -> None:
        session = self.session
        if session is None or session.input_ended:
            return
        source = frame.transport_source
        if self.video_source is not None and source is not None and source != self.video_source:
            return
        wall = time.perf_counter()
        t = self._clock.since_start(wall)
        keep = session.sampler.keep(t)  # only the frames analysed are read (the rest: a clock tick)
        image = None
        if keep:
            image = image_to_rgb(frame)
            if image is None:
                self.frames_unreadable += 1
                if not self._warned_format:
                    self._warned_format = True
                    log.warning("%s: cannot read %s images of %s bytes for %s (want RGB, RGBA, BGR or BGRA pixels); "
                                "skipping them", self, frame.format, len(frame.image), frame.size)
                return
        await session.push_video(VideoFrame(t, image, wall, keep=keep))

    async def _audio_frame(self, frame: InputAudioRawFrame) -> None:
        session = self.session
        if session is None or session.audio is None or self.upstream_text or session.input_ended:
            return
        chunk = self._audio.chunk(frame, time.perf_counter())
        if chunk is not None:
            await session.push_audio(chunk)

    def _text(self, frame: TranscriptionFrame | InterimTranscriptionFrame) -> None:
        session = self.session
        if session is None or session.input_ended:
            return
        if not self.upstream_text:
            self.upstream_text = True
            log.info("%s: transcripts come from upstream (%s): Whisper gets no more audio", self, type(frame).__name__)
        session.add_text(frame.text or "", final=isinstance(frame, TranscriptionFrame))

    # ------------------------------------------------------------------ estimates out
    def _tell(self, event: dict[str, Any]) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                log.exception("%s: on_event failed", self)

    def _emit(self, event: dict[str, Any]) -> None:
        self._tell(event)
        if event.get("type") != "transcript":  # the pipeline has its own transcription frames; ours stay in the window
            self._offer(event)

    def _offer(self, item: Optional[dict[str, Any]]) -> None:
        out = self._out
        if out is None:
            return
        if out.full():
            out.get_nowait()
            self.events_dropped += 1
        out.put_nowait(item)

    async def _push_events(self, out: asyncio.Queue[Optional[dict[str, Any]]]) -> None:
        while (event := await out.get()) is not None:
            kind = event.get("type")
            if kind == "sentiment":
                await self.push_frame(SentimentFrame(event=event))
            elif kind == "warning":
                log.warning("%s: %s", self, event.get("message"))
            if self.rtvi and kind in ("sentiment", "warning", "error"):
                await self.push_frame(RTVIServerMessageFrame(data=event))

    async def _run(self, session: StreamSession) -> None:
        try:
            self.summary = await session.run()
            self._tell(self.summary)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("%s: analysis failed: %r", self, exc, exc_info=exc)
            self._emit(make_event("error", self.stream, session.clock, message=f"analysis failed: {exc}"))

    # ------------------------------------------------------------------ end
    async def _finish(self, drain_s: float) -> None:
        """End the input; let the session finish for up to `drain_s`, push what it said, stop."""
        session, runner, pusher = self.session, self._runner, self._pusher
        if session is None:
            return
        session.end_input()
        if runner is not None:
            if drain_s > 0:
                done, _ = await asyncio.wait({runner}, timeout=drain_s)
                if not done:
                    log.warning("%s: the last media did not finish within %.1f s; dropped", self, drain_s)
            if not runner.done():
                await self.cancel_task(runner)
        if pusher is not None:
            if drain_s > 0:
                self._offer(None)  # the end: everything before it is pushed first
                await asyncio.wait({pusher}, timeout=1.0)
            if not pusher.done():
                await self.cancel_task(pusher)
        self._runner = self._pusher = None
        self._out = None

    async def cleanup(self) -> None:
        await super().cleanup()
        for task in (self._runner, self._pusher):
            if task is not None and not task.done():
                await self.cancel_task(task)
        self._runner = self._pusher = None
