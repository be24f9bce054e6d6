"""Face detector candidates on the gallery view (scripts/media.py): recall, false positives and CPU
cost per 640x480 frame. Each candidate whose package is importable is measured; the others say why not.

    python scripts/bench_face_detectors.py [--frames 36] [--threads 2] [--json OUT]

Recall: expected faces (tiles showing the photo) with a detection whose centre lies in that tile;
false positives: detections in a tile with no face, or a second one in a tile.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts.media import GALLERY_TILES, gallery_frame, gallery_tile_of  # noqa: E402

Boxes = list[tuple[float, float, float, float]]  # x, y, w, h in source pixels


def haar(name: str, min_px: int, downscale: bool = False) -> Callable[[np.ndarray], Boxes]:
    """downscale: detect on the frame shrunk so the smallest face is the cascade's 24 px window."""
    import cv2

    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + name)
    f = min(1.0, 24.0 / min_px) if downscale else 1.0

    def detect(rgb: np.ndarray) -> Boxes:
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if f < 1.0:
            gray = cv2.resize(gray, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        m = max(1, int(min_px * f))
        found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(m, m))
        return [tuple(float(v) / f for v in b) for b in found]  # type: ignore[misc]

    return detect


def mtcnn(min_px: int) -> Callable[[np.ndarray], Boxes]:
    from facenet_pytorch import MTCNN  # weights ship inside the wheel (data/*.pt)

    model = MTCNN(keep_all=True, min_face_size=min_px, device="cpu")

    def detect(rgb: np.ndarray) -> Boxes:
        boxes, _ = model.detect(rgb)
        return [] if boxes is None else [(float(a), float(b), float(c - a), float(d - b)) for a, b, c, d in boxes]

    return detect


def blazeface(min_px: int) -> Callable[[np.ndarray], Boxes]:
    import mediapipe as mp  # legacy "solutions" API: the short-range model ships inside the wheel

    fd = mp.solutions.face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.5)

    def detect(rgb: np.ndarray) -> Boxes:
        h, w = rgb.shape[:2]
        res = fd.process(rgb)
        out = []
        for d in res.detections or []:
            b = d.location_data.relative_bounding_box
            out.append((b.xmin * w, b.ymin * h, b.width * w, b.height * h))
        return out

    return detect


CANDIDATES: dict[str, Callable[[int], Callable[[np.ndarray], Boxes]]] = {
    "haar_frontalface_default": lambda m: haar("haarcascade_frontalface_default.xml", m),
    "haar_frontalface_alt2": lambda m: haar("haarcascade_frontalface_alt2.xml", m),
    "haar_frontalface_default_downscaled": lambda m: haar("haarcascade_frontalface_default.xml", m, True),
    "haar_frontalface_alt2_downscaled": lambda m: haar("haarcascade_frontalface_alt2.xml", m, True),
    "mtcnn_facenet_pytorch": mtcnn,
    "blazeface_mediapipe": blazeface,
}


def measure(detect: Callable[[np.ndarray], Boxes], frames: int, seconds: float) -> dict:
    expected = found = false_pos = 0
    times = []
    detect(gallery_frame(0.0, seconds))  # warm-up
    for i in range(frames):
        t = i * seconds / frames
        img = gallery_frame(t, seconds)
        started = time.perf_counter()
        boxes = detect(img)
        times.append(time.perf_counter() - started)
        per_tile: dict[int, int] = {}
        for x, y, w, h in boxes:
            k = gallery_tile_of(x + w / 2, y + h / 2)
            per_tile[k] = per_tile.get(k, 0) + 1
        for k, kind in enumerate(GALLERY_TILES):
            shown = kind in ("still", "moving") or (kind == "middle" and seconds / 3 <= t < 2 * seconds / 3)
            n = per_tile.get(k, 0)
            expected += shown
            found += shown and n > 0
            false_pos += max(0, n - 1) if shown else n
    ms = np.asarray(times) * 1000
    return {"recall": round(found / expected, 3), "false_positives": false_pos, "frames": frames,
            "ms_p50": round(float(np.percentile(ms, 50)), 1), "ms_p95": round(float(np.percentile(ms, 95)), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=36)
    ap.add_argument("--seconds", type=float, default=9.0)
    ap.add_argument("--min-px", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    try:
        import cv2
        import torch

        cv2.setNumThreads(args.threads)
        torch.set_num_threads(args.threads)
    except ImportError:
        pass
    report = {}
    for name, make in CANDIDATES.items():
        if args.only and name not in args.only:
            continue
        try:
            detect = make(args.min_px)
        except Exception as exc:  # not installable here: say why
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        else:
            report[name] = measure(detect, args.frames, args.seconds)
        print(name, report[name], flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
