"""One stream's pipeline: sampler -> CLIP image -> frame window; audio -> streaming Whisper ->
transcript window; every hop a window snapshot -> fusion -> `sentiment` event.

Files (not live) run as fast as possible with back-pressure and no drops; an estimate for hop t
waits until both branches have handled media time t, so results do not depend on machine speed.
Live sources never wait: bounded queues drop the oldest frame (counted) and hops tick on the
wall clock, so latency stays flat when compute is slower than the source.
"""
from __future__ import annotations

import asyncio
import bisect
import logging
import time
import concurrent.futures
from typing import Any, Callable, Iterable, Optional

import numpy as np

from models.inference import WindowInput

from .asr import StreamingTranscriber, TranscriptUpdate
from .events import make_event
from .runtime import Runtime
from .flow import FrameSampler, LatestQueue
from .sources import AudioChunk, VideoFrame
from .stats import LatencyStats
from .windows import FrameWindow, TranscriptWindow

log = logging.getLogger(__name__)
_CLOSED = LatestQueue.CLOSED


class _FileQueue:
    """Blocking bounded queue for files: back-pressure instead of drops."""

    def __init__(self, maxsize: int):
        self._q: asyncio.Queue = asyncio.Queue(maxsize)
        self.dropped = 0
        self.aborted = False

    async def put(self, item: Any) -> None:
        if not self.aborted:
            await self._q.put(item)

    def abort(self) -> None:
        """The consumer died: empty the queue so a blocked producer wakes up, refuse the rest."""
        self.aborted = True
        while not self._q.empty():
            self._q.get_nowait()

    def close(self) -> None:
        """Queue the end marker after everything already queued (waits for room if full)."""
        if self._q.full():
            asyncio.ensure_future(self._q.put(_CLOSED))
        else:
            self._q.put_nowait(_CLOSED)

    async def get(self) -> Any:
        return await self._q.get()

    def get_nowait(self) -> Any:
        return self._q.get_nowait() if not self._q.empty() else None


class StreamSession:
    def __init__(self, name: str, runtime: Runtime, emit: Callable[[dict], None], *, live: bool,
                 has_video: bool = True, has_audio: bool = True):
        cfg = runtime.cfg
        self.name = name
        self.rt = runtime
        self.cfg = cfg
        self.emit_event = emit
        self.live = live
        self.has_video = has_video
        self.has_audio = has_audio and cfg.asr.enabled and runtime.whisper is not None
        self.stats = LatencyStats()
        self.sampler = FrameSampler(cfg.sampler.fps)
        self.frames = FrameWindow(cfg.window.seconds, cfg.window.max_frames)
        self.transcript = TranscriptWindow(cfg.window.seconds)
        asr_cfg = cfg.asr if live else cfg.asr.model_copy(update={"chunk_seconds": cfg.asr.file_chunk_seconds})
        self.transcriber = (StreamingTranscriber(runtime.whisper, asr_cfg, window=runtime.pass_decoder())
                            if self.has_audio else None)
        audio_chunks = max(8, int(cfg.pipeline.audio_queue_seconds / 0.02))
        if live:
            self.video_q: Any = LatestQueue(cfg.pipeline.video_queue)
            self.audio_q: Any = LatestQueue(audio_chunks)
        else:
            self.video_q = _FileQueue(cfg.pipeline.video_queue)
            self.audio_q = _FileQueue(64)
        self.clock = 0.0  # newest media time pushed
        self.video_until = -1.0  # media time the video branch has handled
        self.audio_until = -1.0
        self.video_done = not has_video
        self.audio_done = not self.has_audio
        self._progress = asyncio.Event()
        self._audio_walls: list[tuple[float, float]] = []  # (media end, wall) for transcript lag
        self.frames_in = self.frames_processed = self.frames_skipped = 0
        self.audio_seconds = 0.0
        self.estimates = 0
        self.transcripts = 0
        self.started = time.perf_counter()
        self.input_ended = False
        self.last_estimate: Optional[dict] = None
        self._last_estimate_t = -1.0

    # ------------------------------------------------------------------ input (source side)
    async def push(self, item: VideoFrame | AudioChunk) -> None:
        if isinstance(item, VideoFrame):
            await self.push_video(item)
        else:
            await self.push_audio(item)

    async def push_video(self, frame: VideoFrame) -> None:
        if not self.has_video:
            return
        self.frames_in += 1
        self.clock = max(self.clock, frame.t)
        keep = self.sampler.keep(frame.t)
        if not keep:
            self.frames_skipped += 1
        if self.live:
            if keep:
                self.video_q.put_nowait((frame, True))
        else:  # skipped frames still travel, in order, to advance the branch's media clock
            await self.video_q.put((frame, keep))

    async def push_audio(self, chunk: AudioChunk) -> None:
        if not self.has_audio:
            return
        seconds = len(chunk.samples) / 16000.0
        self.audio_seconds += seconds
        self.clock = max(self.clock, chunk.t + seconds)
        if self.live:
            self.audio_q.put_nowait(chunk)
        else:
            await self.audio_q.put(chunk)

    def end_input(self) -> None:
        """No more media: workers drain what is queued, then the estimator finishes."""
        if self.input_ended:
            return
        self.input_ended = True
        self.video_q.close()
        self.audio_q.close()

    # ------------------------------------------------------------------ workers
    async def _video_worker(self) -> None:
        try:
            while True:
                first = await self.video_q.get()
                if first is _CLOSED:
                    return
                batch, ended = [first], False
                while len(batch) < self.cfg.engine.max_batch:  # take what is queued: one batch
                    more = self.video_q.get_nowait()
                    if more is None:
                        break
                    if more is _CLOSED:
                        ended = True
                        break
                    batch.append(more)
                await self._encode(batch)
                if ended:
                    return
        finally:
            self.video_done = True
            self._progress.set()

    async def _encode(self, batch: list[tuple[VideoFrame, bool]]) -> None:
        frames = [f for f, keep in batch if keep]
        feats = await asyncio.gather(*(self.rt.engine.encode_frame(f.image) for f in frames))
        for f, feat in zip(frames, feats):
            self.frames.add(f.t, feat, f.wall)
            self.frames_processed += 1
        self.video_until = max(self.video_until, batch[-1][0].t)
        self._progress.set()

    async def _audio_worker(self) -> None:
        assert self.transcriber is not None
        loop = asyncio.get_running_loop()
        try:
            ended = False
            while not ended:
                item = await self.audio_q.get()
                if item is _CLOSED:
                    break
                self._feed(item)
                if self.live:  # catch up on everything queued, then one pass over it
                    while (more := self.audio_q.get_nowait()) is not None:
                        if more is _CLOSED:
                            ended = True
                            break
                        self._feed(more)
                updates = await loop.run_in_executor(self.rt.asr_executor, self._timed_process)
                self._publish(updates)
            updates = await loop.run_in_executor(self.rt.asr_executor, self.transcriber.finish)
            self._publish(updates)
        finally:
            self.audio_until = float("inf")
            self.audio_done = True
            self._progress.set()

    def _feed(self, chunk: AudioChunk) -> None:
        assert self.transcriber is not None
        # Whisper's clock counts samples: audio that starts late, has gaps or lost chunks (live
        # drops) is padded with silence so word times stay on the media clock.
        gap = int(round((chunk.t - self.transcriber.fed_until) * 16000))
        if gap > 160:
            self.transcriber.feed(np.zeros(gap, np.float32))
        self.transcriber.feed(chunk.samples)
        self._audio_walls.append((self.transcriber.fed_until, chunk.wall))
        if len(self._audio_walls) > 20000:  # bounded: keep the recent half
            del self._audio_walls[:10000]

    def _timed_process(self) -> list[TranscriptUpdate]:
        assert self.transcriber is not None
        before = self.transcriber.passes
        started = time.perf_counter()
        updates = self.transcriber.process()
        if self.transcriber.passes > before:
            self.stats.add("asr", time.perf_counter() - started)
        return updates

    def _wall_at(self, media_t: float) -> Optional[float]:
        """When the audio containing media time t had fully entered the pipeline."""
        i = bisect.bisect_left(self._audio_walls, (media_t, float("-inf")))
        return self._audio_walls[i][1] if i < len(self._audio_walls) else None

    def _publish(self, updates: list[TranscriptUpdate]) -> None:
        assert self.transcriber is not None
        now = time.perf_counter()
        for up in updates:
            if up.final:
                self.transcript.add_final(up.words)
                for w in up.words:
                    entered = self._wall_at(w.end)
                    if entered is not None:
                        self.stats.add("transcript_lag", max(0.0, now - entered))
            else:
                self.transcript.set_partial(up.words)
            self.transcripts += 1
            self.emit_event(make_event("transcript", self.name, self.transcriber.processed_until,
                                       t_start=round(up.t_start, 3), t_end=round(up.t_end, 3), text=up.text, final=up.final))
        self.audio_until = max(self.audio_until, self.transcriber.processed_until)
        self._progress.set()

    # ------------------------------------------------------------------ estimates
    async def _estimate(self, end: float) -> None:
        snap = self.frames.snapshot(end)
        text, n_words = self.transcript.text(end)
        window = WindowInput(snap.features, snap.ages, text, n_words)
        tick = time.perf_counter()
        est = await self.rt.engine.estimate(window, self.cfg.window.max_text_tokens)
        now = time.perf_counter()
        for entry in snap.entries:
            if not entry.seen:
                entry.seen = True
                self.stats.add("frame_to_estimate", now - entry.wall)
        newest = max((e.wall for e in snap.entries), default=tick)
        latency = now - newest
        event = make_event("sentiment", self.name, end, **est.to_event_fields(), weights=self.rt.engine.weights,
                           latency_ms=round(latency * 1000.0, 2))
        self.estimates += 1
        self.last_estimate = event
        self.emit_event(event)

    async def _wait_progress(self, ready: Callable[[], bool]) -> None:
        while not ready():
            self._progress.clear()
            if ready():
                return
            await self._progress.wait()

    async def _file_estimator(self) -> None:
        hop = self.cfg.window.hop
        k = 1
        while True:
            end = round(k * hop, 6)
            await self._wait_progress(lambda: (self.video_done or self.video_until >= end) and (self.audio_done or self.audio_until >= end))
            if self.video_done and self.audio_done and end > self.clock + 1e-6:
                return
            await self._estimate(end)
            k += 1

    async def _live_estimator(self) -> None:
        """An estimate as soon as new frame features land (so at most the sampler's fps), else every
        hop. Never delayed to keep a rhythm: that wait dominated frame_to_estimate."""
        hop = self.cfg.window.hop
        await self._wait_progress(lambda: self.clock > 0 or (self.video_done and self.audio_done))
        last = time.perf_counter() - hop
        seen = self.frames_processed
        while not (self.video_done and self.audio_done):
            # With video, frames pace the estimates; the timer is only a fallback for stalls.
            deadline = last + (hop * 2 if not self.video_done else hop)
            while self.frames_processed == seen and not (self.video_done and self.audio_done):
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._progress.clear()
                try:
                    await asyncio.wait_for(self._progress.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            seen = self.frames_processed
            last = time.perf_counter()
            if self.clock > self._last_estimate_t:  # stalled media: nothing new to say
                self._last_estimate_t = self.clock
                await self._estimate(self.clock)

    async def run(self) -> dict:
        """Runs until the input ended and everything queued is processed; returns the summary."""
        tasks = [asyncio.create_task(self._video_worker(), name=f"{self.name}-video")] if self.has_video else []
        if self.has_audio:
            tasks.append(asyncio.create_task(self._audio_worker(), name=f"{self.name}-audio"))
        estimator = asyncio.create_task(self._live_estimator() if self.live else self._file_estimator(), name=f"{self.name}-estimator")
        try:
            # The estimator ends after both workers; gathering all three surfaces a failure at once.
            await asyncio.gather(*tasks, estimator)
        except BaseException:
            # Nobody consumes any more: a decode thread blocked on a full file queue must not hang.
            for q in (self.video_q, self.audio_q):
                if self.live:
                    q.close()
                else:
                    q.abort()
            raise
        finally:
            for task in (*tasks, estimator):
                task.cancel()
            await asyncio.gather(*tasks, estimator, return_exceptions=True)
            self.rt.stats.merge(self.stats)
        return self.summary()

    def summary(self) -> dict:
        wall = time.perf_counter() - self.started
        return make_event(
            "summary", self.name, self.clock,
            frames_in=self.frames_in, frames_processed=self.frames_processed,
            frames_dropped=self.video_q.dropped, frames_skipped=self.frames_skipped,
            audio_chunks_dropped=self.audio_q.dropped,
            audio_seconds=round(self.audio_seconds, 3), media_seconds=round(self.clock, 3),
            wall_seconds=round(wall, 3), realtime_factor=round(self.clock / wall, 3) if wall > 0 else None,
            estimates=self.estimates, transcripts=self.transcripts,
            latency=self.stats.summary(),
            asr=self.transcriber.stats() if self.transcriber else None,
        )


async def pump(items: Iterable[VideoFrame | AudioChunk], session: StreamSession,
               on_item: Optional[Callable[[VideoFrame | AudioChunk], None]] = None,
               executor: Optional[concurrent.futures.Executor] = None) -> None:
    """Decode in a worker thread and hand items to the session on the loop (blocking only for
    files: back-pressure). `executor`: many streams need their own pool (the default one has
    only cpu_count + 4 threads). Ends the session's input however decoding stops."""
    loop = asyncio.get_running_loop()

    def produce() -> None:
        for item in items:
            if on_item is not None:
                on_item(item)
            asyncio.run_coroutine_threadsafe(session.push(item), loop).result()

    try:
        await loop.run_in_executor(executor, produce)
    finally:
        session.end_input()
