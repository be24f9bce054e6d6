"""One stream's faces: detect (off the event loop) -> track -> crop with a margin -> CLIP image
(the shared engine, in the same micro-batches as the whole frames) -> one frame window per face id.
With a face expert (experts.face), each tracked face's crop also gets its facial expression on the
detection thread, kept per face in media time. At each hop `views(end)` says who is in view at media
time `end`, with each face's window input (its expression reading included)."""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Optional

import numpy as np

from models.experts import EXPRESSION_MARGIN
from models.experts.expression import EMOTIONS
from models.face_detector import HaarFaceDetector, crop_box
from models.inference import Estimate, ExpertReading, WindowInput
from models.prompts import LABELS

from ..config import FacesConfig
from ..engine import ModelEngine
from ..metrics import FACES_TRACKED, LatencyStats
from ..sources import VideoFrame
from ..windows import FrameWindow
from .tracker import FaceTracker

Box = tuple[float, float, float, float]  # x, y, w, h in source pixels


@dataclass
class FaceView:
    """A face in view at one hop, with what fusion needs for its estimate."""

    id: int
    bbox: Box
    window: WindowInput
    emotions: Optional[dict[str, float]] = None  # the face expert's 7 emotions over the window (FER2013 models)


@dataclass
class _Expression:
    t: float
    sentiment: np.ndarray  # (3,) over LABELS
    emotions: Optional[np.ndarray]  # (7,) over EMOTIONS, for emotion models


@dataclass
class _Face:
    window: FrameWindow
    last_t: float
    expressions: collections.deque  # of _Expression, bounded like the window


class FaceAnalyzer:
    def __init__(self, cfg: FacesConfig, engine: ModelEngine, window_seconds: float, max_frames: int,
                 stats: LatencyStats, detector: Optional[HaarFaceDetector] = None, tracker: Optional[FaceTracker] = None,
                 expression: Optional[Any] = None) -> None:
        self.cfg = cfg
        self.expression = expression  # models.experts.expression.ExpressionModel (experts.face), or None
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
    def _detect_track(self, frames: list[VideoFrame]) -> tuple[list[list[tuple[int, Box]]], list[tuple[int, _Expression]]]:
        """Blocking (a worker thread): detection and tracking, in frame order; then each tracked face's
        expression (one batch for all of them). Touches no face state: the event loop applies it."""
        out = []
        for f in frames:
            started = time.perf_counter()
            boxes = self.detector.detect(f.source_pixels)[: self.cfg.max]
            self.stats.add("face_detect", time.perf_counter() - started)
            self.detections += len(boxes)
            out.append(self.tracker.update(boxes))
        return out, (self._read_expressions(frames, out) if self.expression is not None else [])

    def _read_expressions(self, frames: list[VideoFrame], tracks: list[list[tuple[int, Box]]]) -> list[tuple[int, _Expression]]:
        crops, owners = [], []
        for f, in_frame in zip(frames, tracks):
            pixels = f.source_pixels
            h, w = pixels.shape[:2]
            for tid, box in in_frame:
                x0, y0, x1, y1 = crop_box(box, EXPRESSION_MARGIN, w, h)
                crops.append(pixels[y0:y1, x0:x1])
                owners.append((tid, f))
        if not crops:
            return []
        started = time.perf_counter()
        sentiment, emotions = self.expression.read(crops)
        self.stats.add("face_expression", (time.perf_counter() - started) / len(crops))
        return [(tid, _Expression(f.t, sentiment[k], None if emotions is None else emotions[k])) for k, (tid, f) in enumerate(owners)]

    def _face(self, tid: int, t: float) -> _Face:
        face = self._faces.get(tid)
        if face is None:
            face = self._faces[tid] = _Face(FrameWindow(self.window_seconds, self.max_frames), t,
                                            collections.deque(maxlen=self.max_frames * 4))
        face.last_t = max(face.last_t, t)
        return face

    async def prepare(self, frames: list[VideoFrame]) -> list[Awaitable[None]]:
        """Detects and tracks faces in `frames`; returns the crop encodes to run together with the
        frames' own (so they share CLIP batches), each adding its feature to its face's window."""
        if not frames:
            return []
        tracks, expressions = await asyncio.to_thread(self._detect_track, frames)
        for tid, expression in expressions:
            self._face(tid, expression.t).expressions.append(expression)
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
        self._face(tid, frame.t).window.add(frame.t, feature, frame.wall)

    def _forget(self, now: float) -> None:
        """Faces gone for a whole window have nothing left to say: their windows go (memory stays bounded)."""
        for gone in [k for k, v in self._faces.items() if v.last_t <= now - self.window_seconds]:
            del self._faces[gone]

    def _set_gauge(self, n: int) -> None:
        FACES_TRACKED.inc(n - self._gauge)
        self._gauge = n

    # ------------------------------------------------------------------ estimate side
    def _expressions(self, face: _Face, end: float) -> list[_Expression]:
        return [e for e in face.expressions if end - self.window_seconds < e.t <= end + 1e-6]

    def expression_reading(self, entries: list[_Expression]) -> Optional[ExpertReading]:
        """The expert's reading of these face frames: mean sentiment (n = frames), None without a face expert."""
        if self.expression is None:
            return None
        if not entries:
            return ExpertReading(np.full(len(LABELS), 1.0 / len(LABELS), np.float32), 0, self.expression.name)
        return ExpertReading(np.mean([e.sentiment for e in entries], axis=0), len(entries), self.expression.name)

    def frame_expression(self, end: float) -> Optional[ExpertReading]:
        """The whole frame's expression reading: every face's frames in the window at `end` together."""
        if self.expression is None:
            return None
        return self.expression_reading([e for face in self._faces.values() for e in self._expressions(face, end)])

    def views(self, end: float, stream: WindowInput) -> list[FaceView]:
        """Faces tracked in the newest processed frame at or before `end` (empty: nobody in view); each
        face's window input is the stream's (`stream`: transcript, utterance, expert readings) with the
        face's own frames and expression."""
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
            if not snap.features.shape[0]:
                continue
            readings = dict(stream.experts)
            entries = self._expressions(face, end)
            reading = self.expression_reading(entries)
            if reading is not None:
                readings["expression"] = reading
            felt = [e.emotions for e in entries if e.emotions is not None]
            emotions = {k: round(float(v), 6) for k, v in zip(EMOTIONS, np.mean(felt, axis=0))} if felt else None
            views.append(FaceView(tid, box, dataclasses.replace(stream, image=snap.features, image_age=snap.ages, experts=readings), emotions))
        return views

    @staticmethod
    def event_fields(views: list[FaceView], estimates: list[Estimate]) -> list[dict[str, Any]]:
        return [{"id": v.id, "bbox": [round(c, 1) for c in v.bbox], **e.to_event_fields(), "n": int(v.window.image.shape[0]),
                 **({"emotions": v.emotions} if v.emotions is not None else {})}
                for v, e in zip(views, estimates)]

    def close(self) -> None:
        self._set_gauge(0)
        self._faces.clear()


