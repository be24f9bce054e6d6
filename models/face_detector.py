"""Face detection: OpenCV's Haar cascade `haarcascade_frontalface_alt2` (its weights ship in the
opencv wheel, nothing is downloaded). Chosen over the default cascade, MTCNN (facenet-pytorch: pins
torch < 2.3) and BlazeFace (mediapipe 1.x ships no model file and pulls opencv 5): see
docs/benchmarks.md and scripts/bench_face_detectors.py."""
from __future__ import annotations

import numpy as np

CASCADE = "haarcascade_frontalface_alt2.xml"


# The cascade's own window: faces smaller than this in the scanned image cannot be found.
CASCADE_WINDOW_PX = 20


class HaarFaceDetector:
    """RGB frame -> face boxes (n, 4) as x, y, w, h in the frame's pixels, largest first.

    Frames whose longer side exceeds `max_side` (0: never) are scanned at that size, with the
    minimum face size scaled alike (but never below the cascade's window) and the boxes scaled back:
    the scan costs ~pixels, so 720p is scanned at ~1/4 of the work and 1080p at ~1/9, for faces at
    least `min_size_px` (or the window's size at the scan scale, if larger) in source pixels.
    One instance per stream: a CascadeClassifier is not meant to be shared across threads."""

    def __init__(self, min_size_px: int, scale_factor: float = 1.1, min_neighbors: int = 5,
                 max_side: int = 0) -> None:
        import cv2

        self._cv2 = cv2
        self._cascade = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE)
        if self._cascade.empty():
            raise RuntimeError(f"OpenCV could not load {CASCADE} from {cv2.data.haarcascades}")
        self.min_size_px = min_size_px
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.max_side = max_side

    def detect(self, image_rgb: np.ndarray) -> np.ndarray:
        cv2 = self._cv2
        gray = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
        h, w = gray.shape
        scale = 1.0
        if self.max_side and max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        m = max(CASCADE_WINDOW_PX, round(self.min_size_px * scale))
        found = self._cascade.detectMultiScale(gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(m, m))
        boxes = np.asarray(found, dtype=np.float64).reshape(-1, 4) / scale
        return boxes[np.argsort(-(boxes[:, 2] * boxes[:, 3]), kind="stable")]


def crop_box(box: tuple[float, float, float, float], margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """The bbox grown by `margin` of its size on each side, clipped to the frame: x0, y0, x1, y1."""
    x, y, w, h = box
    x0, y0 = max(0, int(round(x - margin * w))), max(0, int(round(y - margin * h)))
    x1, y1 = min(width, int(round(x + w + margin * w))), min(height, int(round(y + h + margin * h)))
    return x0, y0, max(x0 + 1, x1), max(y0 + 1, y1)
