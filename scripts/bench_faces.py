"""frame -> estimate p95 for one paced 640x480 gallery-view stream with 0, 2 and 4 faces (and with
faces.enabled=false), through `sentistream profile --realtime`; default config, random CLIP weights.

    python scripts/bench_faces.py [--seconds 20] [--out docs/results/bench-faces.json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from scripts.media import make_gallery_video  # noqa: E402

LAYOUTS = {0: ("empty",) * 4, 2: ("still", "moving", "empty", "empty"), 4: ("still", "moving", "still", "moving")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    runs = [(n, True) for n in LAYOUTS] + [(2, False)]
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n, enabled in runs:
            video = make_gallery_video(Path(tmp) / f"gallery-{n}.mp4", args.seconds, fps=15, tiles=LAYOUTS[n])
            out = Path(tmp) / f"prof-{n}-{enabled}.json"
            cmd = [sys.executable, "-m", "stream.cli", "profile", "--source", str(video), "--realtime", "--json", str(out),
                   "--set", "vision.pretrained=random", "--set", f"faces.enabled={str(enabled).lower()}"]
            subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            prof = json.loads(out.read_text())
            st = prof["stages"]
            key = f"{n}_faces" + ("" if enabled else "_faces_disabled")
            report[key] = {k: st.get(k, {}).get("p95_ms") for k in ("frame_to_estimate", "face_detect", "clip_image", "fusion")}
            report[key]["frame_to_estimate_p50_ms"] = st["frame_to_estimate"]["p50_ms"]
            print(key, report[key], flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
