#!/usr/bin/env python3
"""Backbone cost per preset (configs/edge.yaml, default.yaml, quality.yaml), random weights.

Tower section (default): each preset and backend (`--backends`: torch, onnx, onnx-int8) in a fresh
interpreter (its own peak RSS), with `--threads` intra-op threads (default 1, as `engine.threads`): per-frame image cost of 640x480
uint8 frames through the backbone's own path (preprocess on tensors + image tower) at batch 1
and 4, text cost of one 24-word transcript, load time and peak RSS.

    .venv/bin/python scripts/bench_presets.py --json docs/results/bench-presets.json            # towers (~3 min)
    .venv/bin/python scripts/bench_presets.py --full --json docs/results/bench-presets-full.json  # + pipeline

`--full` adds, per preset, the real pipeline on a generated 640x480 @ 30 fps clip with speech
(espeak-ng + ffmpeg, 43 s): `sentistream profile` as fast as possible (file speed = realtime
factor) and paced at native rate (frame -> estimate p95), each in a fresh process. `--cuda` runs
everything on the GPU (vision.device=cuda, fp16). Writes JSON and a Markdown table beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's stream/models, not an installed copy
PRESETS = ("edge", "default", "quality")
TEXT = ("so I went to the market this morning and honestly the whole thing was a lovely surprise, "
        "everyone was kind and the food was great")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", required=True, metavar="OUT", help="results as JSON (a .md table is written beside it)")
    p.add_argument("--presets", default=",".join(PRESETS), help="comma list of configs/<name>.yaml (default: edge,default,quality)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads for the tower section (default 1)")
    p.add_argument("--backends", default="torch,onnx,onnx-int8",
                   help="tower section: comma list of torch, onnx (vision.backend=onnx), onnx-int8 (+ vision.quantize=int8)")
    p.add_argument("--seconds", type=float, default=4.0, help="measuring time per tower measurement (default 4 s)")
    p.add_argument("--full", action="store_true", help="also profile the pipeline per preset on a 640x480 @ 30 clip")
    p.add_argument("--cuda", action="store_true", help="on the GPU: vision.device=cuda, vision.precision=fp16")
    p.add_argument("--work-dir", help="keep the generated clip here (default: a temporary directory)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def overrides(cuda: bool) -> list[str]:
    dev = ["vision.device=cuda", "vision.precision=fp16"] if cuda else ["vision.device=cpu"]
    return ["vision.pretrained=random", *dev]


def _rate(fn, budget_s: float, sync) -> float:
    """Seconds per call: warm up twice, then as many calls as fit the budget (at least 3)."""
    fn(), fn()
    sync()
    n, start = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - start < budget_s:
        fn()
        n += 1
    sync()
    return (time.perf_counter() - start) / n


def tower_worker(preset: str, threads: int, seconds: float, cuda: bool, backend: str = "torch") -> dict[str, Any]:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from models.backbone import create_backbone
    from models.onnx_backend import use_onnx
    from stream.config import load_config

    torch.set_num_threads(threads)
    cfg = load_config(ROOT / "configs" / f"{preset}.yaml", overrides(cuda))
    started = time.perf_counter()
    bb = create_backbone(cfg.vision)
    load_s = time.perf_counter() - started
    sync = torch.cuda.synchronize if bb.device.type == "cuda" else (lambda: None)
    frames = np.random.default_rng(0).integers(0, 256, (4, 480, 640, 3), dtype=np.uint8)
    parity = None
    if backend != "torch":  # the same tower on ONNX Runtime (graphs from the cache, exported on first use)
        ref_i, ref_t = bb.encode_images(frames), bb.encode_texts([TEXT], cfg.window.max_text_tokens)
        vision = cfg.vision.model_copy(update={"backend": "onnx", "quantize": "int8" if backend == "onnx-int8" else "none"})
        use_onnx(bb, vision, threads)
        got_i, got_t = bb.encode_images(frames), bb.encode_texts([TEXT], cfg.window.max_text_tokens)
        parity = {"image_min_cos": round(F.cosine_similarity(ref_i, got_i).min().item(), 5),
                  "text_token_min_cos": round(F.cosine_similarity(ref_t.states[ref_t.mask], got_t.states[got_t.mask]).min().item(), 5)}
    row: dict[str, Any] = {
        "preset": preset, "backend": backend, "parity_vs_torch": parity,
        "model": cfg.vision.model, "embed_dim": bb.embed_dim, "image_size": list(bb.image_size),
        "context_length": bb.context_length, "logit_bias": bb.logit_bias, "reparameterized_blocks": getattr(bb, "reparameterized", 0),
        "params_m": {"total": round(sum(p.numel() for p in bb.parameters()) / 1e6, 1)}, "load_s": round(load_s, 1),
    }
    for b in (1, 4):
        s = _rate(lambda b=b: bb.encode_images(frames[:b]), seconds, sync)
        row[f"image_ms_per_frame_b{b}"] = round(1000 * s / b, 1)
        row[f"images_per_s_b{b}"] = round(b / s, 2)
    row["text_ms"] = round(1000 * _rate(lambda: bb.encode_texts([TEXT], cfg.window.max_text_tokens), seconds, sync), 1)
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0)
    if bb.device.type == "cuda":
        row["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 0)
    return row


def spawn(spec: dict[str, Any], out: Path, timeout: float = 1800) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--json", str(out), "--worker", json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0 or not out.is_file():
        raise SystemExit(f"error: {spec} failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}")
    return json.loads(out.read_text())


def profile_row(preset: str, clip: Path, realtime: bool, cuda: bool, out: Path) -> dict[str, Any]:
    """`sentistream profile` of the clip with the preset, in a fresh process."""
    cmd = [sys.executable, "-m", "stream.cli", "profile", "--source", str(clip), "--config", str(ROOT / "configs" / f"{preset}.yaml"),
           "--json", str(out), *[a for kv in overrides(cuda) for a in ("--set", kv)], *(["--realtime"] if realtime else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}")
    rep = json.loads(out.read_text())
    st = rep["stages"]
    return {"realtime_factor": rep["realtime_factor"], "frame_to_estimate_p95_ms": st.get("frame_to_estimate", {}).get("p95_ms"),
            "clip_image_p50_ms": st.get("clip_image", {}).get("p50_ms"), "clip_text_p50_ms": st.get("clip_text", {}).get("p50_ms"),
            "frames_dropped": rep["frames_dropped"], "peak_rss_mb": rep["peak_rss_mb"], "gpu_peak_mb": rep.get("gpu_peak_mb"),
            "clip_backend": rep["config"].get("clip_backend")}


def make_clip(work: Path) -> Path:
    sys.path.insert(0, str(ROOT / "scripts"))
    from media import SPEECH_SCRIPT, make_speech_clip, make_video, read_wav

    wav, _ = make_speech_clip(list(SPEECH_SCRIPT), 1.0, work / "speech.wav", wpm=150)
    audio, rate = read_wav(wav)
    return make_video(work / "clip-640x480-30fps.mp4", audio.size / rate, size=(640, 480), fps=30, audio=wav)


def markdown(res: dict[str, Any]) -> str:
    lines = [f"Measured {res['date']} on {res['machine']}, torch {res['torch']}, {res['threads']} thread(s), "
             f"{'CUDA fp16' if res['cuda'] else 'CPU fp32'}, random weights.", "",
             "| preset | tower | backend | params (M) | image ms/frame b1 | b4 | text ms | min cosine vs torch (image / text tokens) | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["towers"]:
        par = r.get("parity_vs_torch")
        par_s = f"{par['image_min_cos']} / {par['text_token_min_cos']}" if par else "-"
        lines.append(f"| {r['preset']} | {r['model']} | {r.get('backend', 'torch')} | {r['params_m']['total']} | {r['image_ms_per_frame_b1']} | "
                     f"{r['image_ms_per_frame_b4']} | {r['text_ms']} | {par_s} | {r['peak_rss_mb']:.0f} |")
    if res.get("pipeline"):
        lines += ["", "| preset | CLIP backend (default config) | file speed (x real time) | paced f2e p95 ms | clip_image p50 ms | peak RSS MB |",
                  "|---|---|---|---|---|---|"]
        for preset, p in res["pipeline"].items():
            lines.append(f"| {preset} | {p['file'].get('clip_backend')} | {p['file']['realtime_factor']} | {p['paced']['frame_to_estimate_p95_ms']} | "
                         f"{p['file']['clip_image_p50_ms']} | {max(p['file']['peak_rss_mb'], p['paced']['peak_rss_mb']):.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    out = Path(args.json)
    if args.worker:
        spec = json.loads(args.worker)
        out.write_text(json.dumps(tower_worker(spec["preset"], spec["threads"], spec["seconds"], spec["cuda"], spec.get("backend", "torch"))))
        return 0
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    missing = [p for p in presets if not (ROOT / "configs" / f"{p}.yaml").is_file()]
    if missing:
        print(f"error: no configs/{missing[0]}.yaml (presets: {', '.join(PRESETS)})", file=sys.stderr)
        return 2
    import platform

    import torch

    from stream.profile import cpu_model

    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": f"{cpu_model()}, {os.cpu_count()} CPUs",
                           "python": platform.python_version(), "torch": torch.__version__, "threads": args.threads,
                           "cuda": args.cuda, "load_avg_start": os.getloadavg()[0], "towers": [], "pipeline": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        for preset in presets:
            for backend in backends:
                spec = {"preset": preset, "threads": args.threads, "seconds": args.seconds, "cuda": args.cuda, "backend": backend}
                res["towers"].append(spawn(spec, work / f"tower-{preset}-{backend}.json"))
                print(json.dumps(res["towers"][-1]), file=sys.stderr)
        if args.full:
            clip = make_clip(work)
            for preset in presets:
                res["pipeline"][preset] = {mode: profile_row(preset, clip, mode == "paced", args.cuda, work / f"prof-{preset}-{mode}.json")
                                           for mode in ("file", "paced")}
                print(preset, json.dumps(res["pipeline"][preset]), file=sys.stderr)
    res["load_avg_end"] = os.getloadavg()[0]
    out.write_text(json.dumps(res, indent=2))
    out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
