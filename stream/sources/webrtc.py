"""WebRTC track input: an aiortc remote track -> `VideoFrame`s / `AudioChunk`s on one media clock.

Both tracks of a connection share a `TrackClock`: media time 0 is when the first item of either
arrived. Video keeps the client's own timestamps (anchored to that clock), audio is timed by its
sample count (Whisper's timeline, immune to network jitter). aiortc buffers decoded frames in an
unbounded queue, so `newest_frame` skips the backlog a slow consumer left behind (counted).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Optional

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ..metrics import AUDIO_SECONDS, FRAMES_DROPPED, FRAMES_IN
from .audio import AudioResampler
from .base import SAMPLE_RATE, AudioChunk, VideoFrame
from .policy import FramePolicy

log = logging.getLogger(__name__)

MAX_AUDIO_PAD_S = 5.0  # silence put before audio that starts late (aligns Whisper's clock)
_backlog_warned = False


def newest_frame(track: MediaStreamTrack, frame: Any) -> tuple[Any, int]:
    """The newest frame already decoded for `track` (`frame` if none) and how many were skipped.

    aiortc offers no public way to look at a remote track's queue; this reads the private
    `RemoteStreamTrack._queue`. If a new aiortc renames it, backlog skipping stops: say so once."""
    global _backlog_warned
    queue = getattr(track, "_queue", None)
    if queue is None or not hasattr(queue, "qsize") or not hasattr(queue, "get_nowait"):
        if not _backlog_warned:
            _backlog_warned = True
            log.warning("aiortc's remote track has no _queue: decoder backlog is not skipped, so video latency may "
                        "grow under load (the aiortc version changed; please report it)")
        return frame, 0
    skipped = 0
    while queue.qsize() > 0:
        newer = queue.get_nowait()
        if newer is None:  # end-of-track marker: put it back for the next recv()
            queue.put_nowait(None)
            break
        frame, skipped = newer, skipped + 1
    return frame, skipped


class TrackClock:
    """A connection's media clock: time 0 is the wall time of its first media item, of any track."""

    def __init__(self) -> None:
        self.t0: Optional[float] = None

    def since_start(self, wall: float) -> float:
        if self.t0 is None:
            self.t0 = wall
        return wall - self.t0


@dataclass(frozen=True)
class ReceivedFrame:
    frame: VideoFrame  # what the pipeline analyses
    pts: Optional[int]  # the client's own timing, kept for the returned overlay track
    time_base: Any
    decoded: Any = None  # the av.VideoFrame itself: the overlay track converts only the frames it relays


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def fit_within(width: int, height: int, max_size: Optional[tuple[int, int]]) -> tuple[int, int]:
    """(width, height) scaled down to fit `max_size` (aspect kept, even sizes for YUV); unchanged if it fits."""
    if max_size is None or (width <= max_size[0] and height <= max_size[1]):
        return width, height
    scale = min(max_size[0] / width, max_size[1] / height)
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def _shrink(frame: av.VideoFrame, width: int, height: int) -> av.VideoFrame:
    """The same frame scaled down in its own pixel format (one swscale pass), timing kept."""
    out = frame.reformat(width=width, height=height)
    out.pts, out.time_base = frame.pts, frame.time_base
    return out


async def video_frames(track: MediaStreamTrack, clock: TrackClock, executor: Optional[concurrent.futures.Executor] = None,
                       policy: Optional[FramePolicy] = None,
                       max_size: Optional[tuple[int, int]] = None) -> AsyncIterator[ReceivedFrame]:
    """Frames of a remote video track until it ends; colour conversion runs on `executor`.
    With a `policy`, only frames its sampler keeps are converted (scaled to the model's size).
    A frame larger than `max_size` (width, height) is first scaled down, for analysis and the
    returned video alike."""
    loop = asyncio.get_running_loop()
    offset: Optional[float] = None
    try:
        while True:
            frame, skipped = newest_frame(track, await track.recv())
            if skipped:
                FRAMES_DROPPED.labels("decode_backlog").inc(skipped)
            wall = time.perf_counter()
            width, height = fit_within(frame.width, frame.height, max_size)
            if (width, height) != (frame.width, frame.height):
                frame = await loop.run_in_executor(executor, _shrink, frame, width, height)
            since = clock.since_start(wall)
            media = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else since
            if offset is None:  # anchor the client's clock to the connection's media clock
                offset = since - media
            t = offset + media
            keep: Optional[bool] = None
            display = detail = None
            if policy is None:
                image = await loop.run_in_executor(executor, _to_rgb, frame)
            else:
                keep = policy.keep(t)
                image = None
                if keep or policy.display:
                    image, display, detail = await loop.run_in_executor(executor, policy.pixels, frame, keep)
            FRAMES_IN.inc()
            yield ReceivedFrame(VideoFrame(t, image, wall, keep, display, detail), frame.pts, frame.time_base, frame)
    except MediaStreamError:
        return


async def audio_chunks(track: MediaStreamTrack, clock: TrackClock) -> AsyncIterator[AudioChunk]:
    """16 kHz mono chunks of a remote audio track until it ends."""
    resampler, start, n = AudioResampler(), None, 0
    try:
        while True:
            samples = resampler.resample(await track.recv())
            if samples.size == 0:
                continue
            wall = time.perf_counter()
            if start is None:
                # Audio that starts late keeps the connection's clock (capped): the session pads
                # the gap with silence so transcript and video share one timeline.
                start = min(clock.since_start(wall), MAX_AUDIO_PAD_S)
            yield AudioChunk(start + n / SAMPLE_RATE, samples, wall)
            n += samples.size
            AUDIO_SECONDS.inc(samples.size / SAMPLE_RATE)
    except MediaStreamError:
        return


async def discard(track: MediaStreamTrack) -> None:
    """Drain a track nobody analyses (its queue is unbounded)."""
    try:
        while True:
            await track.recv()
    except MediaStreamError:
        pass
