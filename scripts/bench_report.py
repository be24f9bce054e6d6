"""Peak memory and wall time of `sentistream report` on a large events file (issue 25).

Generates a realistic events file of the given size in a temporary directory (a long stream: a
sentiment estimate every 0.5 s with both modalities and one or two tracked faces, partial and final
transcripts, a few warnings, the summary with per-stage latency percentiles), runs `sentistream
report` on it in a subprocess and records its wall time and peak RSS (os.wait4's rusage of that
child alone) into --out.

    python scripts/bench_report.py [--sizes 20 200] [--label after] [--out docs/results/bench-report.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
LABELS = ("negative", "neutral", "positive")
WORDS = ("the", "meeting", "went", "really", "well", "today", "but", "the", "printer", "jammed", "again", "and",
         "I", "lost", "the", "whole", "report", "this", "is", "wonderful", "terrible", "news", "for", "everyone")


def _probs(rng: random.Random) -> dict[str, float]:
    a, b, c = rng.random(), rng.random(), rng.random()
    s = a + b + c
    return {"negative": round(a / s, 6), "neutral": round(b / s, 6), "positive": round(c / s, 6)}


def _estimate(rng: random.Random, n_image: int, n_words: int) -> dict[str, Any]:
    probs = _probs(rng)
    w = round(rng.random(), 6)
    return {"label": max(probs, key=probs.__getitem__), "probs": probs,
            "score": round(probs["positive"] - probs["negative"], 6),
            "modalities": {"image": {"weight": w, "probs": _probs(rng), "n": n_image},
                           "text": {"weight": round(1 - w, 6), "probs": _probs(rng), "n": n_words}}}


def events(target_bytes: int, seed: int = 0) -> Iterator[str]:
    """JSONL lines (without newline) adding up to about `target_bytes`."""
    rng = random.Random(seed)
    dump = lambda e: json.dumps(e, ensure_ascii=False, separators=(",", ":"))  # noqa: E731  (encode_event's format)
    size, t, n, seg_start, face_base = 0, 0.0, 0, 0.0, 1
    warn = {"type": "warning", "stream": "cam-1", "t": 0.0,
            "message": "CLIP weights are random (vision.pretrained=random): estimates carry no meaning"}
    line = dump(warn)
    size += len(line) + 1
    yield line
    while size < target_bytes:
        t = round(t + 0.5, 3)
        n += 1
        if n % 600 == 0:
            face_base += 1  # people come and go: new track ids over a long recording
        est = _estimate(rng, 8, rng.randint(0, 30))
        faces = [{"id": face_base + k, "bbox": [round(rng.uniform(0, 600), 1) for _ in range(4)], **_estimate(rng, 8, 12), "n": 8}
                 for k in range(rng.randint(1, 2))]
        event = {"type": "sentiment", "stream": "cam-1", "t": t, **est, "weights": "openai",
                 "latency_ms": round(rng.lognormvariate(4.5, 0.5), 2), "faces": faces}
        lines = [dump(event)]
        if n % 2 == 0:  # a partial every second, a final every ~3 s
            final = rng.random() < 0.33
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14)))
            lines.append(dump({"type": "transcript", "stream": "cam-1", "t": t, "t_start": seg_start,
                               "t_end": round(t - 0.2, 3), "text": text, "final": final}))
            if final:
                seg_start = t
        if n % 20000 == 0:
            lines.append(dump({"type": "warning", "stream": "cam-1", "t": t, "message": "frames are arriving late"}))
        for line in lines:
            size += len(line.encode("utf-8")) + 1
            yield line
    stages = {s: {"count": n, "p50_ms": 40.0 + i, "p95_ms": 90.0 + i, "p99_ms": 140.0 + i}
              for i, s in enumerate(("frame_to_estimate", "clip_image", "fusion", "face_detect", "asr_pass", "transcript_lag"))}
    yield dump({"type": "summary", "stream": "cam-1", "t": t, "frames_in": n * 15, "frames_processed": n * 4,
                "frames_dropped": 0, "frames_stale": 0, "frames_skipped": n * 11, "sampler_fps": None,
                "audio_chunks_dropped": 0, "audio_seconds": t, "media_seconds": t, "wall_seconds": t,
                "realtime_factor": 1.0, "estimates": n, "transcripts": n // 2, "latency": stages})


def write_events(path: Path, target_bytes: int) -> int:
    count = 0
    with path.open("w", encoding="utf-8") as fh:
        for line in events(target_bytes):
            fh.write(line + "\n")
            count += 1
    return count


def run_report(events_path: Path, out: Path) -> dict[str, Any]:
    """`sentistream report` in a child process: exit code, wall seconds, peak RSS of that child."""
    cmd = [sys.executable, "-m", "stream.cli", "report", str(events_path), "--out", str(out)]
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace").strip()
    result = {"exit_code": proc.returncode, "wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
              "html_mb": round(out.stat().st_size / 1e6, 2) if out.exists() else None}
    if proc.returncode:
        result["stderr_tail"] = stderr[-300:]
    return result


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[20, 200], metavar="MB", help="events file sizes (MB)")
    ap.add_argument("--label", default="after", help="key of these runs in --out (e.g. before / after)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "bench-report.json"))
    args = ap.parse_args()
    out_path = Path(args.out)
    doc = json.loads(out_path.read_text()) if out_path.exists() else {}
    doc.setdefault("about", "sentistream report on generated events files: scripts/bench_report.py")
    doc["events"] = ("one stream: a sentiment estimate every 0.5 s (both modalities, 1-2 faces, new face ids every 300 s), "
                     "a transcript every 1 s (about 1 in 3 final), a warning every 10000 s, the summary last")
    doc["measured"] = "peak RSS: os.wait4 rusage of the report process alone; wall: its whole run, Python start included"
    runs = doc.setdefault("runs", {}).setdefault(args.label, {})
    with tempfile.TemporaryDirectory() as tmp:
        for mb in args.sizes:
            path = Path(tmp) / f"events-{mb:g}mb.jsonl"
            lines = write_events(path, int(mb * 1e6))
            result = {"file_mb": round(path.stat().st_size / 1e6, 1), "lines": lines, **run_report(path, Path(tmp) / "r.html"),
                      "commit": _commit(), "cpus": os.cpu_count(), "python": platform.python_version()}
            runs[f"{mb:g}MB"] = result
            print(f"{args.label} {mb:g} MB: {json.dumps(result)}", flush=True)
            path.unlink()
            out_path.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
