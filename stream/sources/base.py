"""What every source yields and the contract it keeps.

Every source yields `VideoFrame`s (RGB uint8) and `AudioChunk`s (float32 mono 16 kHz) stamped with
media time `t` (seconds from stream start) and `wall` (perf_counter when it entered the pipeline),
so latency is always measurable as `now - wall`. `frames()` is a blocking generator: callers run it
in a thread (`stream.sources.pump`) and hand items to the event loop.
"""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Optional, Union

import numpy as np

if TYPE_CHECKING:
    from .policy import FramePolicy

SAMPLE_RATE = 16000  # Hz: every AudioChunk is float32 mono at this rate (what Whisper and its VAD expect)


@dataclass(slots=True)
class VideoFrame:
    t: float  # media seconds from stream start
    image: Optional[np.ndarray]  # HxWx3 uint8 RGB for analysis; None for a frame the sampler skipped
    wall: float  # time.perf_counter() when it entered the pipeline
    # Decided by the source's FramePolicy (True: sampled for analysis); None: the stream's sampler decides.
    keep: Optional[bool] = None
    display: Optional[np.ndarray] = None  # full-size RGB, when the policy asks for it (overlays)
    detail: Optional[np.ndarray] = None  # full-size RGB of a kept frame, when the policy asks (faces)

    @property
    def full(self) -> Optional[np.ndarray]:
        """The frame at its own size for drawing on: `display`, else `image` (full size without a policy)."""
        return self.display if self.display is not None else self.image

    @property
    def source_pixels(self) -> Optional[np.ndarray]:
        """A kept frame at its own size (face detection and crops, boxes in source pixels):
        `detail`, else `full`."""
        return self.detail if self.detail is not None else self.full


@dataclass(slots=True)
class AudioChunk:
    t: float  # media seconds of the first sample
    samples: np.ndarray  # float32 mono 16 kHz
    wall: float

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE


@dataclass(frozen=True)
class SourceInfo:
    description: str
    live: bool
    has_video: bool
    has_audio: bool
    duration: Optional[float]
    fps: Optional[float]
    width: Optional[int]
    height: Optional[int]


MediaItem = Union[VideoFrame, AudioChunk]


class MediaSource(ABC):
    """open() -> frames() (in a worker thread) -> close() (from any thread, any number of times).

    The guard shared by every source: `close()` from another thread while `frames()` runs only
    sets the stop flag, and `frames()` releases the device/container itself after its current
    read (releasing it under a blocked read would crash FFmpeg or the camera driver).
    """

    def __init__(self) -> None:
        self.info: Optional[SourceInfo] = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._running = False

    def open(self) -> SourceInfo:
        """Open the device/file/URL; raises UserError with one clear line on any problem."""
        if self.info is None:
            self.info = self._open()
        return self.info

    def frames(self, policy: Optional["FramePolicy"] = None) -> Iterator[MediaItem]:
        """Blocking generator of items in media-time order; ends when the media ends or on close().

        `policy` (a `FramePolicy`): sample frames here and convert only those kept, at the model's
        size; without one every frame is full-size RGB and the stream's sampler decides later.
        It is given here, not at construction, because a source is opened (and bad input reported)
        before the model that knows its input size is loaded."""
        if self.info is None:
            self.open()
        with self._lock:
            if self._stop.is_set() or not self._is_open():
                return
            self._running = True
        try:
            yield from self._items(policy)
        finally:
            with self._lock:
                self._running = False
                self._release()

    def close(self) -> None:
        """Idempotent; from another thread it makes frames() stop at its next item."""
        self._stop.set()
        with self._lock:
            if not self._running:
                self._release()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @abstractmethod
    def _open(self) -> SourceInfo:
        """Open and probe; on failure release what was opened and raise UserError."""

    @abstractmethod
    def _is_open(self) -> bool: ...

    @abstractmethod
    def _items(self, policy: Optional["FramePolicy"]) -> Iterator[MediaItem]:
        """The decode loop; returns early once `stopping`."""

    @abstractmethod
    def _release(self) -> None:
        """Close the container/device; idempotent."""

    def __enter__(self) -> "MediaSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


