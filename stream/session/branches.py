"""A stream's two branches. Video: sampler -> queue -> CLIP image engine -> frame window. Audio:
queue -> streaming Whisper -> transcript window (+ `transcript` events). Each advances its own
media clock (`until`) and says so through the session's `Progress`; the queues come from the
stream's clock policy (live: drop-oldest, files: back-pressure)."""
from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import time
from typing import Callable, Optional

import numpy as np

from models.sampling import FrameSampler

from ..asr import StreamingTranscriber, TranscriptUpdate
from ..engine import ModelEngine
from ..events import make_event
from ..faces import FaceAnalyzer
from ..metrics import LatencyStats
from ..queues import CLOSED, MediaQueue
from ..sources import SAMPLE_RATE, AudioChunk, VideoFrame
from ..windows import FrameWindow, TranscriptWindow
from .progress import Progress
from .rate import RateGovernor

_MAX_AUDIO_WALLS = 20000  # (media end, wall) pairs kept for transcript lag; bounded


class VideoBranch:
    def __init__(self, engine: ModelEngine, sampler: FrameSampler, queue: MediaQueue, window: FrameWindow,
                 progress: Progress, *, forward_skipped: bool, max_batch: int, max_age_s: Optional[float] = None,
                 governor: Optional[RateGovernor] = None, faces: Optional[FaceAnalyzer] = None) -> None:
        self.engine = engine
        self.faces = faces  # per-face windows (faces.enabled), fed from the same frames
        self.sampler = sampler
        self.queue = queue
        self.window = window
        self.progress = progress
        # Files send skipped frames on too, in order, to advance the branch's media clock; live
        # sources must not let them push kept frames out of the drop-oldest queue.
        self.forward_skipped = forward_skipped
        self.max_batch = max_batch
        # Live: frames older than this when CLIP would take them are dropped (stale), and the
        # governor slows the sampler when that happens. Files: None, nothing is ever dropped.
        self.max_age_s = max_age_s
        self.governor = governor
        self.frames_in = self.frames_processed = self.frames_skipped = self.frames_stale = 0
        self._lost_seen = 0
        self.until = -1.0  # media time this branch has handled
        self.done = False

    async def push(self, frame: VideoFrame) -> None:
        self.frames_in += 1
        # A source with a FramePolicy sampled the frame already (with this same sampler).
        keep = frame.keep if frame.keep is not None else self.sampler.keep(frame.t)
        if not keep:
            self.frames_skipped += 1
        if keep or self.forward_skipped:
            await self.queue.put((frame, keep))

    async def run(self) -> None:
        try:
            while True:
                first = await self.queue.get()
                if first is CLOSED:
                    return
                batch, ended = [first], False
                while len(batch) < self.max_batch:  # take what is queued: one batch
                    more = self.queue.get_nowait()
                    if more is None:
                        break
                    if more is CLOSED:
                        ended = True
                        break
                    batch.append(more)
                await self._encode(batch)
                if ended:
                    return
        finally:
            self.done = True
            self.progress.notify()

    async def _encode(self, batch: list[tuple[VideoFrame, bool]]) -> None:
        frames = [f for f, keep in batch if keep]
        max_age = self.max_age_s
        if max_age is not None:
            now = time.perf_counter()
            fresh = [f for f in frames if now - f.wall <= max_age]
            self.frames_stale += len(frames) - len(fresh)
            frames = fresh
        deadlines = [None if max_age is None else f.wall + max_age for f in frames]
        # The frames go to CLIP first; face detection (a worker thread) runs meanwhile, and the crops'
        # encodes follow it: detection is not on the whole frame's path (one core each on 2 cores).
        frame_jobs = [asyncio.ensure_future(self.engine.encode_frame(f.image, d)) for f, d in zip(frames, deadlines)]
        try:
            face_jobs = await self.faces.prepare(frames) if self.faces is not None else ()
            results = await asyncio.gather(*frame_jobs, *face_jobs)
        except BaseException:
            for job in frame_jobs:
                job.cancel()
            raise
        feats = results[: len(frames)]
        done = time.perf_counter()
        late = False
        for f, feat in zip(frames, feats):
            if feat is None:  # waited past its age limit in the engine's queue
                self.frames_stale += 1
                continue
            self.window.add(f.t, feat, f.wall)
            self.frames_processed += 1
            late = late or (max_age is not None and done - f.wall > 0.5 * max_age)
        self.until = max(self.until, batch[-1][0].t)
        if self.governor is not None:
            lost = self.frames_stale + self.queue.dropped
            self.governor.observe(lost - self._lost_seen, late, done)
            self._lost_seen = lost
        self.progress.notify()


class AudioBranch:
    def __init__(self, name: str, transcriber: StreamingTranscriber, queue: MediaQueue, window: TranscriptWindow,
                 executor: Optional[concurrent.futures.Executor], stats: LatencyStats, progress: Progress,
                 emit: Callable[[dict], None], *, catch_up: bool,
                 on_change: Optional[Callable[[], None]] = None) -> None:
        self.name = name
        self.on_change = on_change  # called after new transcript words reached the window
        self.transcriber = transcriber
        self.queue = queue
        self.window = window
        self.executor = executor
        self.stats = stats
        self.progress = progress
        self.emit = emit
        # Live: take everything queued before each pass (one pass over it); files: one chunk per step.
        self.catch_up = catch_up
        self.audio_seconds = 0.0
        self.transcripts = 0
        self.until = -1.0
        self.done = False
        self._walls: list[tuple[float, float]] = []  # (media end, wall) for transcript lag

    async def push(self, chunk: AudioChunk) -> None:
        self.audio_seconds += len(chunk.samples) / SAMPLE_RATE
        await self.queue.put(chunk)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            ended = False
            while not ended:
                item = await self.queue.get()
                if item is CLOSED:
                    break
                self._feed(item)
                if self.catch_up:
                    while (more := self.queue.get_nowait()) is not None:
                        if more is CLOSED:
                            ended = True
                            break
                        self._feed(more)
                self._publish(await loop.run_in_executor(self.executor, self._timed_process))
            self._publish(await loop.run_in_executor(self.executor, self.transcriber.finish))
        finally:
            self.until = float("inf")
            self.done = True
            self.progress.notify()

    def _feed(self, chunk: AudioChunk) -> None:
        tr = self.transcriber
        # Whisper's clock counts samples: audio that starts late, has gaps or lost chunks (live
        # drops) is padded with silence so word times stay on the media clock.
        gap = int(round((chunk.t - tr.fed_until) * SAMPLE_RATE))
        if gap > SAMPLE_RATE // 100:
            tr.feed(np.zeros(gap, np.float32))
        tr.feed(chunk.samples)
        self._walls.append((tr.fed_until, chunk.wall))
        if len(self._walls) > _MAX_AUDIO_WALLS:  # keep the recent half
            del self._walls[: _MAX_AUDIO_WALLS // 2]

    def _timed_process(self) -> list[TranscriptUpdate]:
        before = self.transcriber.passes
        started = time.perf_counter()
        updates = self.transcriber.process()
        if self.transcriber.passes > before:
            self.stats.add("asr", time.perf_counter() - started)
        return updates

    def _wall_at(self, media_t: float) -> Optional[float]:
        """When the audio containing media time t had fully entered the pipeline."""
        i = bisect.bisect_left(self._walls, (media_t, float("-inf")))
        return self._walls[i][1] if i < len(self._walls) else None

    def _publish(self, updates: list[TranscriptUpdate]) -> None:
        now = time.perf_counter()
        for up in updates:
            if up.final:
                self.window.add_final(up.words)
                for w in up.words:
                    entered = self._wall_at(w.end)
                    if entered is not None:
                        self.stats.add("transcript_lag", max(0.0, now - entered))
            else:
                self.window.set_partial(up.words)
            self.transcripts += 1
            self.emit(make_event("transcript", self.name, self.transcriber.processed_until,
                                 t_start=round(up.t_start, 3), t_end=round(up.t_end, 3), text=up.text, final=up.final))
        self.until = max(self.until, self.transcriber.processed_until)
        if updates and self.on_change is not None:
            self.on_change()
        self.progress.notify()
