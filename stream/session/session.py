"""One stream's pipeline: a video branch (sampler -> CLIP image -> frame window), an audio branch
(streaming Whisper -> transcript window) and a clock policy (file or live) that decides when a
window snapshot goes through fusion and becomes a `sentiment` event. The session owns lifecycle
and the summary; the model engine and Whisper are shared through the process `Runtime`."""
from __future__ import annotations

import asyncio
import time
from typing import Callable, Optional

from models.inference import WindowInput
from models.sampling import FrameSampler

from ..asr import StreamingTranscriber, Word
from ..events import make_event
from ..faces import FaceAnalyzer
from ..metrics import LatencyStats
from ..runtime import Runtime
from ..sources import AudioChunk, FramePolicy, MediaItem, VideoFrame
from ..windows import FrameWindow, TranscriptWindow
from .branches import AudioBranch, VideoBranch
from .clocks import Clock, FileClock, LiveClock
from .progress import Progress
from .rate import RateGovernor


class TextSchedule:
    """Which window text an estimate fuses. New final words go in at once; any other change (the
    partial hypothesis moved, old words slid out of the window) at most every `every` hops, else the
    previous text is reused, which the engine's text cache holds: one CLIP text pass saved.
    `every=1`: every change at once."""

    def __init__(self, window: TranscriptWindow, every: int) -> None:
        self.window = window
        self.every = every
        self._sent: Optional[tuple[str, int]] = None
        self._newest_final: Optional[tuple[float, str]] = None
        self._hops = 0
        self.final = self.partial = self.held = 0  # new texts by cause; changes held back

    def _next(self, end: float) -> tuple[tuple[str, int], Optional[tuple[float, str]], Optional[str]]:
        """((text, n), newest final word, cause: "final" | "partial" | "held" | None = unchanged) of
        the text an estimate at `end` would fuse next; changes nothing."""
        text, n = self.window.text(end)
        if self._sent is not None and text == self._sent[0]:
            return self._sent, self._newest_final, None
        finals = self.window.words(end, partial=False)
        newest = (finals[-1].end, finals[-1].text) if finals else None
        if self._sent is None or (newest is not None and newest != self._newest_final):
            return (text, n), newest, "final"
        return (text, n), newest, ("partial" if self._hops + 1 >= self.every else "held")

    def at(self, end: float) -> tuple[str, int]:
        sent, newest, cause = self._next(end)
        self._hops += 1
        if cause is None:
            return sent
        if cause == "held":
            self.held += 1
            assert self._sent is not None
            return self._sent
        if cause == "final":
            self.final += 1
        else:
            self.partial += 1
        self._sent, self._newest_final, self._hops = sent, newest, 0
        return sent

    def upcoming(self, end: float) -> Optional[str]:
        """The new text the next estimate at about `end` will fuse, if it changes: worth encoding ahead."""
        (text, _), _, cause = self._next(end)
        return text if cause in ("final", "partial") and text else None

    def counts(self) -> dict:
        return {"final": self.final, "partial": self.partial, "held": self.held}


class StreamSession:
    def __init__(self, name: str, runtime: Runtime, emit: Callable[[dict], None], *, live: bool,
                 has_video: bool = True, has_audio: bool = True, stats: Optional[LatencyStats] = None,
                 clock: Optional[Clock] = None):
        cfg = runtime.cfg
        self.name = name
        self.rt = runtime
        self.cfg = cfg
        self.emit_event = emit
        self.timing: Clock = clock or (LiveClock(cfg) if live else FileClock(cfg))
        self.live = self.timing.live
        self.stats = stats if stats is not None else LatencyStats()
        self.progress = Progress()
        self.frames = FrameWindow(cfg.window.seconds, cfg.window.max_frames)
        self.transcript = TranscriptWindow(cfg.window.seconds)
        self.video: Optional[VideoBranch] = None
        self.audio: Optional[AudioBranch] = None
        self.sampler = FrameSampler(cfg.sampler.fps)  # shared with the source through `frame_policy`
        self.governor: Optional[RateGovernor] = None
        self.faces: Optional[FaceAnalyzer] = None
        if has_video:
            max_age = cfg.pipeline.max_frame_age_ms / 1000.0 if self.live and cfg.pipeline.max_frame_age_ms > 0 else None
            if max_age is not None:
                self.governor = RateGovernor(self.sampler, cfg.sampler.fps, cfg.pipeline.min_sampler_fps)
            if cfg.faces.enabled:
                self.faces = FaceAnalyzer(cfg.faces, runtime.engine, cfg.window.seconds, cfg.window.max_frames, self.stats,
                                          expression=runtime.engine.model.face_expert)
            self.video = VideoBranch(runtime.engine, self.sampler, self.timing.video_queue(), self.frames,
                                     self.progress, forward_skipped=self.timing.forward_skipped_frames,
                                     max_batch=cfg.engine.max_batch, max_age_s=max_age, governor=self.governor,
                                     faces=self.faces)
        self.has_video = has_video
        self.has_audio = has_audio and cfg.asr.enabled and runtime.whisper is not None
        if self.has_audio:
            transcriber = StreamingTranscriber(runtime.whisper, self.timing.asr_config(), decoder=runtime.pass_decoder(),
                                               commit_decoder=runtime.commit_decoder())
            self.audio = AudioBranch(name, transcriber, self.timing.audio_queue(), self.transcript, runtime.asr_executor,
                                     self.stats, self.progress, emit, catch_up=self.timing.catch_up_audio,
                                     on_change=self._on_transcript if self.live else None)
        self.text = TextSchedule(self.transcript, cfg.engine.partial_text_every)
        self._text_ahead: Optional[asyncio.Task] = None  # at most one per stream
        self._fused_text: Optional[tuple[str, int]] = None  # the text the last estimate fused
        self.text_deferred = 0  # live estimates that fused the previous text while the new one encoded
        self._clock = 0.0  # newest media time pushed
        self.started = time.perf_counter()
        self.input_ended = False
        self.estimates = 0
        self.last_estimate: Optional[dict] = None

    def frame_policy(self, display: bool = False) -> FramePolicy:
        """How this stream's source should decode: sample with this stream's sampler and convert
        only kept frames, straight to the CLIP input size; `display`: every frame full size too.
        With faces on, kept frames also come full size (`detail`): the detector and the crops need
        the pixels, and boxes are reported in source pixels."""
        return FramePolicy(self.sampler, self.rt.engine.image_size, display=display,
                           interpolation=self.rt.engine.image_interpolation.upper(), detail=self.faces is not None)

    # ------------------------------------------------------------------ what the clock reads
    @property
    def clock(self) -> float:
        return self._clock

    @property
    def video_until(self) -> float:
        return self.video.until if self.video else -1.0

    @property
    def audio_until(self) -> float:
        return self.audio.until if self.audio else -1.0

    @property
    def video_done(self) -> bool:
        return self.video is None or self.video.done

    @property
    def audio_done(self) -> bool:
        return self.audio is None or self.audio.done

    @property
    def frames_processed(self) -> int:
        return self.video.frames_processed if self.video else 0

    @property
    def frame_period(self) -> float:
        """Media seconds between sampled frames at the sampler's current rate (inf: no video)."""
        return float("inf") if self.video is None else self.sampler.period

    @property
    def frames_dropped(self) -> int:
        """Live frames lost: pushed out of the queue, or stale (see frames_stale)."""
        return self.video.queue.dropped + self.video.frames_stale if self.video else 0

    @property
    def frames_stale(self) -> int:
        return self.video.frames_stale if self.video else 0

    # ------------------------------------------------------------------ input (source side)
    async def push(self, item: MediaItem) -> None:
        if isinstance(item, VideoFrame):
            await self.push_video(item)
        else:
            await self.push_audio(item)

    async def push_video(self, frame: VideoFrame) -> None:
        if self.video is None:
            return
        self._clock = max(self._clock, frame.t)
        await self.video.push(frame)

    async def push_audio(self, chunk: AudioChunk) -> None:
        if self.audio is None:
            return
        self._clock = max(self._clock, chunk.t + chunk.duration)
        await self.audio.push(chunk)

    def add_text(self, text: str, *, final: bool, seconds_per_word: float = 0.3) -> None:
        """Transcript text from elsewhere (an upstream speech-to-text service) in place of Whisper's:
        its words end at the newest media time, `seconds_per_word` apart, and go into the transcript
        window as Whisper's do (committed, or as the partial hypothesis the next text replaces)."""
        tokens = text.split()
        end = self._clock
        start = max(0.0, end - seconds_per_word * len(tokens))
        step = (end - start) / len(tokens) if tokens else 0.0
        words = [Word(start + i * step, start + (i + 1) * step, tok) for i, tok in enumerate(tokens)]
        if final:
            self.transcript.add_final(words)
        else:
            self.transcript.set_partial(words)
        if self.live:
            self._on_transcript()

    def end_input(self) -> None:
        """No more media: branches drain what is queued, then the clock finishes."""
        if self.input_ended:
            return
        self.input_ended = True
        for branch in (self.video, self.audio):
            if branch is not None:
                branch.queue.close()

    # ------------------------------------------------------------------ estimates
    async def estimate(self, end: float) -> None:
        snap = self.frames.snapshot(end)
        text, n_words = self._ready_text(*self.text.at(end))
        utterance, n_utterance = self.transcript.utterance(end, self.cfg.experts.utterance_gap_seconds,
                                                           self.cfg.experts.utterance_max_seconds)
        window = WindowInput(snap.features, snap.ages, text, n_words, utterance, n_utterance)
        tick = time.perf_counter()
        if self.faces is None:
            est = await self.rt.engine.estimate(window, self.cfg.window.max_text_tokens)
        else:
            expression = self.faces.frame_expression(end)
            if expression is not None:
                window.experts["expression"] = expression
            views = self.faces.views(end, window)
            # Every face's window goes to fusion with the whole frame's: one batch, same transcript.
            est, *face_ests = await asyncio.gather(*(self.rt.engine.estimate(w, self.cfg.window.max_text_tokens)
                                                     for w in (window, *(v.window for v in views))))
        now = time.perf_counter()
        for entry in snap.entries:
            if not entry.seen:
                entry.seen = True
                self.stats.add("frame_to_estimate", now - entry.wall)
        newest = max((e.wall for e in snap.entries), default=tick)
        event = make_event("sentiment", self.name, end, **est.to_event_fields(), weights=self.rt.engine.weights,
                           latency_ms=round((now - newest) * 1000.0, 2))
        if self.faces is not None:
            event["faces"] = self.faces.event_fields(views, face_ests)
        self.estimates += 1
        self.last_estimate = event
        self.emit_event(event)

    def _on_transcript(self) -> None:
        """Live: the transcript changed; encode the text the next estimate will fuse now, so that
        its CLIP text pass is done before the estimate needs it."""
        text = self.text.upcoming(self._clock)
        if text is not None:
            self._encode_ahead(text)

    def _encode_ahead(self, text: str) -> None:
        if self._text_ahead is not None and not self._text_ahead.done():
            return  # one at a time per stream; the next change or estimate asks again
        self._text_ahead = asyncio.ensure_future(self.rt.engine.prepare_text(text, self.cfg.window.max_text_tokens))

    def _ready_text(self, text: str, n_words: int) -> tuple[str, int]:
        """Live: the newest window text if it is encoded, else the text the last estimate fused
        while the new one is encoded: a CLIP text pass is never on the frame -> estimate path, and
        the text is at most a pass behind. Files always fuse the newest text."""
        if not self.live or self._fused_text is None or self.rt.engine.has_text(text, self.cfg.window.max_text_tokens):
            self._fused_text = (text, n_words)
            return text, n_words
        self._encode_ahead(text)
        self.text_deferred += 1
        return self._fused_text

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> dict:
        """Runs until the input ended and everything queued is processed; returns the summary."""
        tasks = [asyncio.create_task(b.run(), name=f"{self.name}-{kind}")
                 for kind, b in (("video", self.video), ("audio", self.audio)) if b is not None]
        clock = asyncio.create_task(self.timing.run(self), name=f"{self.name}-estimator")
        try:
            # The clock ends after both branches; gathering all three surfaces a failure at once.
            await asyncio.gather(*tasks, clock)
        except BaseException:
            # Nobody consumes any more: a decode thread blocked on a full file queue must not hang.
            for branch in (self.video, self.audio):
                if branch is not None:
                    branch.queue.abort()
            raise
        finally:
            if self._text_ahead is not None:
                self._text_ahead.cancel()
            for task in (*tasks, clock):
                task.cancel()
            await asyncio.gather(*tasks, clock, return_exceptions=True)
            self.rt.stats.merge(self.stats)
            if self.faces is not None:
                self.faces.close()
        return self.summary()

    def summary(self) -> dict:
        wall = time.perf_counter() - self.started
        v, a = self.video, self.audio
        return make_event(
            "summary", self.name, self._clock,
            frames_in=v.frames_in if v else 0, frames_processed=self.frames_processed,
            frames_dropped=self.frames_dropped, frames_stale=self.frames_stale,
            frames_skipped=v.frames_skipped if v else 0,
            sampler_fps=self.governor.summary() if self.governor is not None else None,
            audio_chunks_dropped=a.queue.dropped if a else 0,
            audio_seconds=round(a.audio_seconds, 3) if a else 0.0, media_seconds=round(self._clock, 3),
            wall_seconds=round(wall, 3), realtime_factor=round(self._clock / wall, 3) if wall > 0 else None,
            estimates=self.estimates, transcripts=a.transcripts if a else 0, text_updates={**self.text.counts(), "deferred": self.text_deferred},
            latency=self.stats.summary(),
            asr=a.transcriber.stats() if a else None,
        )
