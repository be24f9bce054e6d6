"""When a stream's estimates happen, and how its queues behave: the two clock policies.

`FileClock`: files run as fast as possible with back-pressure and no drops; an estimate for hop t
waits until both branches have handled media time t, so results do not depend on machine speed.
`LiveClock`: live sources never wait: bounded queues drop the oldest item (counted) and an
estimate follows as soon as new frame features land, so latency stays flat when compute is
slower than the source.
"""
from __future__ import annotations

import time
from typing import Protocol

from ..config import AppConfig, AsrConfig, file_asr_config
from ..queues import FileQueue, LatestQueue, MediaQueue
from .progress import Progress

_AUDIO_CHUNK_S = 0.02  # a live audio queue holds pipeline.audio_queue_seconds of 20 ms chunks
_FILE_AUDIO_QUEUE = 64


class Timeline(Protocol):
    """What a clock reads of its session."""

    progress: Progress

    @property
    def clock(self) -> float: ...  # newest media time pushed
    @property
    def video_until(self) -> float: ...
    @property
    def audio_until(self) -> float: ...
    @property
    def video_done(self) -> bool: ...
    @property
    def audio_done(self) -> bool: ...
    @property
    def frames_processed(self) -> int: ...
    @property
    def frame_period(self) -> float: ...  # media seconds between sampled frames now (inf: no video)
    async def estimate(self, end: float) -> None: ...


class FileClock:
    live = False
    forward_skipped_frames = True
    catch_up_audio = False

    def __init__(self, cfg: AppConfig) -> None:
        self.hop = cfg.window.hop
        self.cfg = cfg

    def video_queue(self) -> MediaQueue:
        return FileQueue(self.cfg.pipeline.video_queue)

    def audio_queue(self) -> MediaQueue:
        return FileQueue(_FILE_AUDIO_QUEUE)

    def asr_config(self) -> AsrConfig:
        return file_asr_config(self.cfg.asr)

    async def run(self, s: Timeline) -> None:
        k = 1
        while True:
            end = round(k * self.hop, 6)
            await s.progress.until(lambda end=end: (s.video_done or s.video_until >= end) and (s.audio_done or s.audio_until >= end))
            if s.video_done and s.audio_done and end > s.clock + 1e-6:
                return
            await s.estimate(end)
            k += 1


class LiveClock:
    live = True
    forward_skipped_frames = False
    catch_up_audio = True

    def __init__(self, cfg: AppConfig) -> None:
        self.hop = cfg.window.hop
        self.cfg = cfg
        self._last_t = -1.0

    def video_queue(self) -> MediaQueue:
        return LatestQueue(self.cfg.pipeline.video_queue)

    def audio_queue(self) -> MediaQueue:
        return LatestQueue(max(8, int(self.cfg.pipeline.audio_queue_seconds / _AUDIO_CHUNK_S)))

    def asr_config(self) -> AsrConfig:
        return self.cfg.asr

    def timer(self, s: Timeline) -> float:
        """Seconds after an estimate that the next one comes without new frame features. Frames
        sampled at least once a hop pace the estimates, and the timer (1.5 hops: later than the next
        such frame) only covers a late one. A sampler slowed by overload (or set below the hop rate)
        leaves the pace to the timer, at one hop: estimates keep the hop rate."""
        paced_by_frames = not s.video_done and s.frame_period <= self.hop + 1e-9
        return self.hop * 1.5 if paced_by_frames else self.hop

    async def run(self, s: Timeline) -> None:
        """An estimate as soon as new frame features land, else after a timer. Never delayed to keep
        a rhythm: that wait dominated frame_to_estimate."""
        hop = self.hop
        both_done = lambda: s.video_done and s.audio_done  # noqa: E731
        await s.progress.until(lambda: s.clock > 0 or both_done())
        last = time.perf_counter() - hop
        seen = s.frames_processed
        while not both_done():
            deadline = last + self.timer(s)
            while s.frames_processed == seen and not both_done():
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or not await s.progress.next(remaining):
                    break
            seen = s.frames_processed
            last = time.perf_counter()
            if s.clock > self._last_t:  # stalled media: nothing new to say
                self._last_t = s.clock
                await s.estimate(s.clock)


Clock = FileClock | LiveClock
