"""One stream's faces: detect (off the event loop) -> track -> crop with a margin -> CLIP image
(the shared engine, in the same micro-batches as the whole frames) -> one frame window per face id.
At each hop `views(end)` says who is in view at media time `end`, with each face's window input."""
from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Optional

import numpy as np

from models.inference import Estimate, WindowInput

from ..config import FacesConfig
from ..engine import ModelEngine
from ..metrics import FACES_TRACKED, LatencyStats
from ..sources import VideoFrame
from ..windows import FrameWindow
from .detector import HaarFaceDetector
from .tracker import FaceTracker

Box = tuple[float, float, float, float]  # x, y, w, h in source pixels


@dataclass
class FaceView:
    """A face in view at one hop, with what fusion needs for its estimate."""

    id: int
    bbox: Box
    window: WindowInput


@dataclass
class _Face:
    window: FrameWindow
    last_t: float


def crop_box(box: Box, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """The bbox grown by `margin` of its size on each side, clipped to the frame: x0, y0, x1, y1."""
    x, y, w, h = box
    x0, y0 = max(0, int(round(x - margin * w))), max(0, int(round(y - margin * h)))
    x1, y1 = min(width, int(round(x + w + margin * w))), min(height, int(round(y + h + margin * h)))
    return x0, y0, max(x0 + 1, x1), max(y0 + 1, y1)


class FaceAnalyzer:
    def __init__(self, cfg: FacesConfig, engine: ModelEngine, window_seconds: float, max_frames: int,
                 stats: LatencyStats, detector: Optional[HaarFaceDetector] = None, tracker: Optional[FaceTracker] = None) -> None:
        self.cfg = cfg
        self.engine = engine
        self.window_seconds = window_seconds
        self.max_frames = max_frames
        self.stats = stats
        self.detector = detector or HaarFaceDetector(cfg.min_size_px, max_side=cfg.detect_max_side)
        self.tracker = tracker or FaceTracker(cfg.keep_lost_frames)
        self._faces: dict[int, _Face] = {}
        # (media t, tracks in that frame), in frame order; bounded like a FrameWindow's entries.
        self._timeline: collections.deque[tuple[float, list[tuple[int, Box]]]] = collections.deque(maxlen=max_frames * 4)
        self._gauge = 0  # this stream's share of the faces-tracked gauge
        self.detections = 0

    # ------------------------------------------------------------------ video side
    def _detect_track(self, frames: list[VideoFrame]) -> list[list[tuple[int, Box]]]:
        """Blocking (a worker thread): detection and tracking, in frame order."""
        out = []
        for f in frames:
            started = time.perf_counter()
            boxes = self.detector.detect(f.source_pixels)[: self.cfg.max]
            self.stats.add("face_detect", time.perf_counter() - started)
            self.detections += len(boxes)
            out.append(self.tracker.update(boxes))
        return out

    async def prepare(self, frames: list[VideoFrame]) -> list[Awaitable[None]]:
        """Detects and tracks faces in `frames`; returns the crop encodes to run together with the
        frames' own (so they share CLIP batches), each adding its feature to its face's window."""
        if not frames:
            return []
        tracks = await asyncio.to_thread(self._detect_track, frames)
        jobs: list[Awaitable[None]] = []
        for f, in_frame in zip(frames, tracks):
            self._timeline.append((f.t, in_frame))
            pixels = f.source_pixels
            h, w = pixels.shape[:2]
            for tid, box in in_frame:
                x0, y0, x1, y1 = crop_box(box, self.cfg.margin, w, h)
                jobs.append(self._encode(tid, f, np.ascontiguousarray(pixels[y0:y1, x0:x1])))
        self._forget(frames[-1].t)
        self._set_gauge(len(tracks[-1]))
        return jobs

    async def _encode(self, tid: int, frame: VideoFrame, crop: np.ndarray) -> None:
        feature = await self.engine.encode_frame(crop)
        face = self._faces.get(tid)
        if face is None:
            face = self._faces[tid] = _Face(FrameWindow(self.window_seconds, self.max_frames), frame.t)
        face.window.add(frame.t, feature, frame.wall)
        face.last_t = max(face.last_t, frame.t)

    def _forget(self, now: float) -> None:
        """Faces gone for a whole window have nothing left to say: their windows go (memory stays bounded)."""
        for gone in [k for k, v in self._faces.items() if v.last_t <= now - self.window_seconds]:
            del self._faces[gone]

    def _set_gauge(self, n: int) -> None:
        FACES_TRACKED.inc(n - self._gauge)
        self._gauge = n

    # ------------------------------------------------------------------ estimate side
    def views(self, end: float, text: str, n_words: int) -> list[FaceView]:
        """Faces tracked in the newest processed frame at or before `end` (empty: nobody in view)."""
        in_view: list[tuple[int, Box]] = []
        for t, tracks in reversed(self._timeline):
            if t <= end + 1e-6:
                in_view = tracks
                break
        views = []
        for tid, box in in_view:
            face = self._faces.get(tid)
            if face is None:
                continue
            snap = face.window.snapshot(end)
            if snap.features.shape[0]:
                views.append(FaceView(tid, box, WindowInput(snap.features, snap.ages, text, n_words)))
        return views

    @staticmethod
    def event_fields(views: list[FaceView], estimates: list[Estimate]) -> list[dict[str, Any]]:
        return [{"id": v.id, "bbox": [round(c, 1) for c in v.bbox], **e.to_event_fields(), "n": int(v.window.image.shape[0])}
                for v, e in zip(views, estimates)]

    def close(self) -> None:
        self._set_gauge(0)
        self._faces.clear()


