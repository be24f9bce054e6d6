"""Stable face ids across sampled frames: ByteTrack from Roboflow's `trackers` package."""
from __future__ import annotations

import numpy as np


def load_tracker_library() -> None:
    """Imports `trackers` (and supervision: ~1-3 s). The runtime calls this while it loads the models,
    off the event loop, so the first stream's session does not stall a server's loop."""
    import supervision  # noqa: F401
    import trackers  # noqa: F401


class FaceTracker:
    """Boxes of one frame (x, y, w, h) -> the confirmed tracks in it: [(id, box)].

    A track survives `keep_lost_frames` sampled frames without a detection; a face that returns
    later gets a new id. A face's first frame is unconfirmed (no id yet), as ByteTrack does."""

    def __init__(self, keep_lost_frames: int) -> None:
        import supervision as sv
        from trackers import ByteTrackTracker

        self._sv = sv
        # frame_rate=30 makes lost_track_buffer count frames (the package scales it by frame_rate/30).
        self._tracker = ByteTrackTracker(lost_track_buffer=keep_lost_frames, frame_rate=30.0, minimum_consecutive_frames=1)

    def update(self, boxes_xywh: np.ndarray) -> list[tuple[int, tuple[float, float, float, float]]]:
        b = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
        xyxy = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)
        dets = self._sv.Detections(xyxy=xyxy, confidence=np.ones(len(b)), class_id=np.zeros(len(b), dtype=int))
        out = self._tracker.update(dets)
        tracks = []
        for tid, (x0, y0, x1, y1) in zip(out.tracker_id.tolist(), out.xyxy.tolist()):
            if tid >= 0:
                tracks.append((int(tid), (float(x0), float(y0), float(x1 - x0), float(y1 - y0))))
        return tracks
