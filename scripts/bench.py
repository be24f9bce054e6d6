#!/usr/bin/env python3
"""Side-by-side benchmarks of the multi-stream engine, in ONE run so that ratios survive noise:

1. CLIP image throughput, batched vs batch-1, through the engine's own image path;
2. the shared engine vs one model per stream (own CLIP, engine thread and Whisper) for N streams:
   `fast` = files analysed as fast as possible (frames/s = throughput; frame_to_estimate then
   includes back-pressure queueing), `paced` = files at native rate with live semantics (latency,
   drops). Each run is a fresh subprocess, so peak RSS is that configuration's own;
3. streaming transcript (LocalAgreement through the real pipeline, paced) vs offline
   `model.transcribe` of the whole file with the same Whisper model: WER and per-word lag.

    .venv/bin/python scripts/bench.py --json docs/results/bench-cpu.json        # CPU, ViT-B-32 random weights
    .venv/bin/python scripts/bench.py --quick --config configs/tiny-test.yaml --json /tmp/bench.json
    .venv/bin/python scripts/bench.py --cuda --json docs/results/bench-gpu.json # GPU: configs/gpu.yaml, fp16,
        # plus streams per GPU (paced 5 frames/s streams added until frame_to_estimate p95 > 200 ms)
    .venv/bin/python scripts/bench.py --webcam --json docs/results/bench-webcam.json  # webcam-like
        # 640x480 / 1280x720 @ 30 fps clips: decode CPU before/after, file speed, 2 and 4 paced 640x480
        # streams, 1 paced 720p stream, 4 streams for --drift-minutes (default 10)

Writes the JSON and a Markdown snippet next to it (--markdown to choose). Needs espeak-ng + ffmpeg.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent


GPU_P95_LIMIT_MS = 200.0
GPU_STREAMS = (8, 16, 32, 48, 64, 80, 96, 128, 160, 192, 256)


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (default configs/default.yaml; --cuda: configs/gpu.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, applied after vision.pretrained=random (repeatable)")
    p.add_argument("--json", required=True, metavar="OUT", help="results as JSON (a .md snippet is written beside it)")
    p.add_argument("--markdown", metavar="OUT.md", help="Markdown snippet path (default: --json path with .md)")
    p.add_argument("--quick", action="store_true", help="short clip, N = 1, 2, fast mode only (tests)")
    p.add_argument("--cuda", action="store_true", help="the CUDA path: fp16 batching and streams per GPU")
    p.add_argument("--streams", default=None, help="comma list of N for the engine comparison (default 1,2,4)")
    p.add_argument("--modes", default=None, help="fast,paced (default both; --quick: fast)")
    p.add_argument("--engine-seconds", type=float, default=None, help="media seconds per engine run (default 20)")
    p.add_argument("--skip", default="", help="comma list of sections to skip: clip,engine,asr_batch,asr,gpu_streams")
    p.add_argument("--work-dir", help="keep the generated clip here (default: a temporary directory)")
    p.add_argument("--webcam", action="store_true",
                   help="only the webcam cases (640x480 and 1280x720 @ 30 fps with speech): issue 11's targets")
    p.add_argument("--webcam-seconds", type=float, default=60.0, help="media seconds per webcam case (default 60)")
    p.add_argument("--drift-minutes", type=float, default=10.0,
                   help="--webcam: minutes of 4 paced 640x480 streams for the drift check (default 10; 0 skips)")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one profile run in a fresh process
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------ utilities
def percentile_ms(values: list[float], q: float) -> Optional[float]:
    import numpy as np

    return round(float(np.percentile(np.asarray(values) * 1000.0, q)), 1) if values else None


def machine_info() -> dict[str, Any]:
    import torch

    from stream.profile import cpu_model

    git = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return {
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "git": git.stdout.strip() or None, "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def make_media(work: Path, quick: bool, fps: int) -> tuple[Path, Path, str]:
    """(speech WAV, video with that speech, reference text)."""
    from media import SPEECH_SCRIPT, make_speech_clip, make_video, read_wav

    missing = [t for t in ("espeak-ng", "ffmpeg") if shutil.which(t) is None]
    if missing:
        raise SystemExit(fail(f"needs {', '.join(missing)} on PATH (make apt)"))
    sentences = list(SPEECH_SCRIPT[:2] if quick else SPEECH_SCRIPT)
    wav, _ = make_speech_clip(sentences, 1.0, work / f"speech-{len(sentences)}.wav", wpm=150)
    audio, rate = read_wav(wav)
    video = make_video(work / f"clip-{len(sentences)}-{fps}fps.mp4", audio.size / rate, fps=fps, audio=wav)
    return wav, video, " ".join(sentences)


def run_worker(spec: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """One profile run in a fresh interpreter (clean RSS peak, clean CUDA allocator stats)."""
    out = Path(spec["out"])
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--json", str(out), "--worker", json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join(line for line in proc.stderr.strip().splitlines() if not line.startswith("warning:"))[-1500:]
        raise RuntimeError(f"profile run {spec['streams']}x {spec['engine']} failed ({proc.returncode}): {tail}")
    return json.loads(out.read_text())


def worker_main(spec: dict[str, Any]) -> int:
    from stream.config import load_config
    from stream.profile import run_profile

    cfg = load_config(spec["config"], spec["overrides"])
    result = asyncio.run(run_profile(cfg, spec["source"], streams=spec["streams"], realtime=spec["realtime"],
                                     duration=spec["duration"], shared=spec["engine"] == "shared",
                                     frame_policy=spec.get("frame_policy", True)))
    # The decode stage's total (wall in the decode threads, pacing excluded), for before/after.
    result.report["decode_total_s"] = round(sum(result.stats.values("decode")), 3)
    # Its CPU (the decode threads' own time, audio included; waits for a core excluded): the issue's measure.
    result.report["decode_cpu_s"] = round(sum(result.stats.values("decode_cpu")), 3)
    Path(spec["out"]).write_text(json.dumps(result.report), encoding="utf-8")
    return 0


# ------------------------------------------------------------------------------------- sections
def bench_clip(cfg: Any, budget_s: float) -> dict[str, Any]:
    """Frames/s of the engine's image path (per-frame preprocess + one CLIP forward) per batch size.
    Sizes alternate inside each round so that load changes hit all of them alike."""
    import numpy as np
    import torch

    from models.factory import build_model
    from stream.engine import ModelEngine

    engine = ModelEngine(build_model(cfg), cfg.engine)
    max_b = cfg.engine.max_batch
    sizes = sorted({1, max_b, *[b for b in (2, 4, 8, 16, 32, 64) if b < max_b]})
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(max_b)]

    def rate(b: int) -> float:
        started = time.perf_counter()
        for i in range(0, max_b, b):
            engine.model.backbone.encode_images(frames[i:i + b])
        if engine.model.device.type == "cuda":  # features stay on the GPU: wait for the kernels
            torch.cuda.synchronize()
        return max_b / (time.perf_counter() - started)

    for b in (1, max_b):
        rate(b)  # warm-up: allocator, kernels, caches
    fps: dict[int, list[float]] = {b: [] for b in sizes}
    began, rounds = time.perf_counter(), 0
    while rounds < 3 or (time.perf_counter() - began < budget_s and rounds < 50):
        for b in (sizes if rounds % 2 == 0 else sizes[::-1]):
            fps[b].append(rate(b))
        rounds += 1
    asyncio.run(engine.close())
    med = {b: round(float(np.median(v)), 2) for b, v in fps.items()}
    return {"model": f"{cfg.vision.model}/{cfg.vision.pretrained}", "device": str(engine.model.device),
            "precision": str(engine.model.backbone.dtype).replace("torch.", ""), "frame": "320x240 RGB",
            "rounds": rounds, "fps_by_batch": {str(b): v for b, v in med.items()}, "batch": max_b,
            "batch1_fps": med[1], "batched_fps": med[max_b], "ratio": round(med[max_b] / med[1], 2)}


def _row(mode: str, rep: dict[str, Any]) -> dict[str, Any]:
    f2e, lag = rep["stages"]["frame_to_estimate"], rep["stages"]["transcript_lag"]
    return {"mode": mode, "streams": rep["streams"], "engine": rep["engine"], "frames_per_second": rep["frames_per_second"],
            "realtime_factor": rep["realtime_factor"], "f2e_p50_ms": f2e["p50_ms"], "f2e_p95_ms": f2e["p95_ms"],
            "lag_p95_ms": lag["p95_ms"], "frames_dropped": rep["frames_dropped"], "frames_processed": rep["frames_processed"],
            "clip_mean_batch": rep["batching"]["clip_image"]["mean_batch"], "peak_rss_mb": rep["peak_rss_mb"],
            "gpu_peak_mb": rep["gpu_peak_mb"], "wall_s": rep["wall_seconds"]}


def bench_engine(base: dict[str, Any], video: Path, ns: list[int], modes: list[str], seconds: float, work: Path) -> dict[str, Any]:
    rows, ratios = [], []
    for mode in modes:
        for n in ns:
            order = ("shared", "per-stream") if n % 2 else ("per-stream", "shared")  # alternate who goes first
            got = {}
            for engine in order:
                spec = base | {"source": str(video), "streams": n, "realtime": mode == "paced", "duration": seconds,
                               "engine": engine, "out": str(work / f"run-{mode}-{n}-{engine}.json")}
                print(f"  {mode} {n} stream(s), {engine} engine ...", file=sys.stderr, flush=True)
                got[engine] = _row(mode, run_worker(spec))
            rows += [got["shared"], got["per-stream"]]
            s, p = got["shared"], got["per-stream"]
            ratios.append({"mode": mode, "streams": n,
                           "fps_shared_over_per_stream": _ratio(s["frames_per_second"], p["frames_per_second"]),
                           "f2e_p95_per_stream_over_shared": _ratio(p["f2e_p95_ms"], s["f2e_p95_ms"]),
                           "rss_per_stream_over_shared": _ratio(p["peak_rss_mb"], s["peak_rss_mb"])})
    return {"media_seconds_per_stream": seconds, "rows": rows, "ratios": ratios}


def bench_asr_batching(base: dict[str, Any], video: Path, n: int, seconds: float, work: Path) -> dict[str, Any]:
    """N paced streams with Whisper passes one at a time vs decoded together (`asr.batch`)."""
    rows = {}
    for batch in (1, n):
        spec = base | {"overrides": [*base["overrides"], f"asr.batch={batch}"], "source": str(video), "streams": n,
                       "realtime": True, "duration": seconds, "engine": "shared", "out": str(work / f"asr-batch-{batch}.json")}
        print(f"  paced {n} streams, asr.batch={batch} ...", file=sys.stderr, flush=True)
        rep = run_worker(spec)
        st = rep["stages"]
        rows[batch] = {"asr_batch": batch, "streams": n, "asr_pass_p50_ms": st["asr"]["p50_ms"], "asr_pass_p95_ms": st["asr"]["p95_ms"],
                       "lag_p50_ms": st["transcript_lag"]["p50_ms"], "lag_p95_ms": st["transcript_lag"]["p95_ms"],
                       "f2e_p95_ms": st["frame_to_estimate"]["p95_ms"], "frames_dropped": rep["frames_dropped"],
                       "mean_asr_batch": rep["batching"].get("asr", {}).get("mean_batch")}
    one, many = rows[1], rows[n]
    return {"media_seconds_per_stream": seconds, "rows": [one, many],
            "lag_p95_ratio_unbatched_over_batched": _ratio(one["lag_p95_ms"], many["lag_p95_ms"])}


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return round(a / b, 2) if a is not None and b else None


def bench_asr(cfg: Any, wav: Path, reference: str) -> dict[str, Any]:
    from media import wer as media_wer

    from stream.asr.model import load_whisper
    from stream.profile import run_profile
    from stream.sources.audio import SAMPLE_RATE, load_audio_16k

    def wer(hyp: str) -> float:
        return round(media_wer(reference, hyp), 4)

    def streaming(run_cfg: Any) -> dict[str, Any]:
        events: list[dict] = []
        result = asyncio.run(run_profile(run_cfg, str(wav), streams=1, realtime=True, on_event=events.append))
        text = " ".join(e["text"] for e in events if e["type"] == "transcript" and e["final"])
        lag = result.stats.values("transcript_lag")
        asr = result.report["stages"]["asr"]
        return {"wer": wer(text), "lag_p50_ms": percentile_ms(lag, 50), "lag_p95_ms": percentile_ms(lag, 95),
                "asr_pass_p50_ms": asr["p50_ms"], "asr_pass_p95_ms": asr["p95_ms"], "passes": asr["count"], "text": text}

    st = streaming(cfg)
    # The same stream with faster-whisper's stock 30 s encoder window on every pass.
    full = streaming(cfg.model_copy(update={"asr": cfg.asr.model_copy(update={"encoder_pad_seconds": None})}))
    audio = load_audio_16k(wav)
    duration = audio.size / SAMPLE_RATE
    model = load_whisper(cfg.asr)  # the same (cached) model the streams used
    began = time.perf_counter()
    segments, _ = model.transcribe(audio, language=cfg.asr.language, beam_size=cfg.asr.beam_size, word_timestamps=True)
    segments = list(segments)
    took = time.perf_counter() - began
    offline = " ".join(s.text.strip() for s in segments)
    # Offline lag: record everything, then transcribe: a word is known (audio end - its end) + compute later.
    off_lag = [duration - w.end + took for s in segments for w in (s.words or [])]
    off = {"wer": wer(offline), "transcribe_s": round(took, 2), "lag_p50_ms": percentile_ms(off_lag, 50),
           "lag_p95_ms": percentile_ms(off_lag, 95), "text": offline}
    return {"audio_seconds": round(duration, 2), "model": f"{cfg.asr.model}/{cfg.asr.compute_type}", "streaming": st,
            "streaming_full_window": full, "offline": off, "pad": cfg.asr.encoder_pad_seconds,
            "pass_p50_ratio_full_over_short": _ratio(full["asr_pass_p50_ms"], st["asr_pass_p50_ms"]), "wer_delta": round(st["wer"] - off["wer"], 4),
            "lag_p95_ratio_streaming_over_offline": _ratio(st["lag_p95_ms"], off["lag_p95_ms"])}


def bench_gpu_streams(base: dict[str, Any], video: Path, seconds: float, work: Path) -> dict[str, Any]:
    """Paced streams at the sampler rate, more and more, until frame_to_estimate p95 > 200 ms."""
    rows, best = [], 0
    for n in GPU_STREAMS:
        spec = base | {"source": str(video), "streams": n, "realtime": True, "duration": seconds, "engine": "shared",
                       "out": str(work / f"gpu-{n}.json")}
        print(f"  paced {n} streams ...", file=sys.stderr, flush=True)
        row = _row("paced", run_worker(spec))
        kept = row["frames_processed"] + row["frames_dropped"]
        row["ok"] = bool(row["f2e_p95_ms"] is not None and row["f2e_p95_ms"] <= GPU_P95_LIMIT_MS
                         and row["frames_dropped"] <= 0.01 * max(1, kept))
        rows.append(row)
        if not row["ok"]:
            break
        best = n
    return {"limit_p95_ms": GPU_P95_LIMIT_MS, "media_seconds_per_stream": seconds, "rows": rows, "max_streams_ok": best}


# ------------------------------------------------------------------------------ webcam (issue 11)
WEBCAM_SIZES = {"640x480": (640, 480), "1280x720": (1280, 720)}
# (case, clip, streams, paced, frame_policy, overrides): frame_policy False = every frame full-size
# RGB (before issue 11); the last case measures the CLIP text passes saved by partial_text_every.
WEBCAM_CASES: tuple[tuple[str, str, int, bool, bool, tuple[str, ...]], ...] = (
    ("file 640x480, before", "640x480", 1, False, False, ()),
    ("file 640x480", "640x480", 1, False, True, ()),
    ("paced 2x 640x480", "640x480", 2, True, True, ()),
    ("paced 4x 640x480", "640x480", 4, True, True, ()),
    ("paced 1x 1280x720", "1280x720", 1, True, True, ()),
    ("paced 2x 640x480, partial text every hop", "640x480", 2, True, True, ("engine.partial_text_every=1",)),
)


def make_webcam_media(work: Path, seconds: float) -> dict[str, Path]:
    from media import make_webcam_clip

    missing = [t for t in ("espeak-ng", "ffmpeg") if shutil.which(t) is None]
    if missing:
        raise SystemExit(fail(f"needs {', '.join(missing)} on PATH (make apt)"))
    return {name: make_webcam_clip(work / f"webcam-{name}-{seconds:g}s.mp4", seconds, size, work)
            for name, size in WEBCAM_SIZES.items()}


def decode_before(path: Path, seconds: float) -> int:
    """Decode `seconds` of a clip as before issue 11: every frame to full-size RGB, single-threaded
    decoder, audio resampled. Returns the video frames decoded."""
    import av

    from models.media import DamagedPackets, decode_packets
    from stream.sources import AudioResampler

    n = 0
    with av.open(str(path)) as c:
        resampler = AudioResampler()
        for st, frame in decode_packets(c, c.streams.video[0], c.streams.audio[0], damaged=DamagedPackets()):
            if frame.time is not None and frame.time >= seconds:
                break
            if st.type == "video":
                frame.to_ndarray(format="rgb24")
                n += 1
            else:
                resampler.resample(frame)
    return n


def decode_after(path: Path, seconds: float) -> int:
    """Decode `seconds` of a clip with the frame policy (`AvSource` + `FramePolicy`: one decoder
    thread up to 1080p, only the packets kept frames depend on, the ~2 frames/s the sampler keeps
    converted straight to 224 px short side). Returns the video frames decoded."""
    from models.sampling import FrameSampler
    from stream.sources import AvSource, FramePolicy

    src, n = AvSource(str(path)), 0
    src.open()
    try:
        for item in src.frames(FramePolicy(FrameSampler(2.0), (224, 224))):
            if item.t >= seconds:
                break
            n += hasattr(item, "keep")
    finally:
        src.close()
    return n


def decode_cpu(path: Path, seconds: float) -> dict[str, Any]:
    """Process CPU seconds to decode `seconds` of a clip (video + audio, no model): `decode_before`
    against `decode_after`."""
    out: dict[str, Any] = {}
    for name, fn in (("before", decode_before), ("after", decode_after)) * 2:
        cpu, wall = time.process_time(), time.perf_counter()
        frames = fn(path, seconds)
        row = out.setdefault(name, {"frames": frames, "cpu_s": [], "wall_s": []})
        row["cpu_s"].append(round(time.process_time() - cpu, 3))
        row["wall_s"].append(round(time.perf_counter() - wall, 3))
    for row in out.values():  # the better of two rounds: load from other processes only adds
        row["cpu_s"], row["wall_s"] = min(row["cpu_s"]), min(row["wall_s"])
    out["cpu_ratio_before_over_after"] = _ratio(out["before"]["cpu_s"], out["after"]["cpu_s"])
    return out


def _webcam_row(case: str, rep: dict[str, Any]) -> dict[str, Any]:
    st = rep["stages"]
    lowest = [s["sampler_fps"]["lowest"] for s in rep["per_stream"] if s.get("sampler_fps")]
    return {"case": case, "streams": rep["streams"], "mode": rep["mode"], "realtime_factor": rep["realtime_factor"],
            "f2e_p50_ms": st["frame_to_estimate"]["p50_ms"], "f2e_p95_ms": st["frame_to_estimate"]["p95_ms"],
            "lag_p95_ms": st["transcript_lag"]["p95_ms"],
            # per stream, per second of media it was fed (paced: of wall time while live; excludes the
            # model load and the ASR drain after the input ended, which `estimates_per_second` counts)
            "estimates_per_s": round(sum(s["estimates"] for s in rep["per_stream"])
                                     / max(1e-9, sum(s["media_seconds"] for s in rep["per_stream"])), 3),
            "frames_processed": rep["frames_processed"], "frames_dropped": rep["frames_dropped"],
            "frames_stale": rep.get("frames_stale"), "lowest_sampler_fps": min(lowest) if lowest else None,
            "clip_p95_ms": st["clip_image"]["p95_ms"], "clip_mean_batch": rep["batching"]["clip_image"]["mean_batch"],
            "fusion_p95_ms": st["fusion"]["p95_ms"], "decode_total_s": rep.get("decode_total_s"),
            "decode_cpu_s": rep.get("decode_cpu_s"),
            "text_cache_misses": rep["text"]["cache_misses"], "text_updates": rep["text"]["updates"],
            "partial_text_every": rep["text"]["partial_text_every"], "clip_text_count": st["clip_text"]["count"],
            "clip_text_p50_ms": st["clip_text"]["p50_ms"],
            "drift_ratio": rep["drift_ratio"], "peak_rss_mb": rep["peak_rss_mb"], "wall_s": rep["wall_seconds"]}


def bench_webcam(base: dict[str, Any], clips: dict[str, Path], seconds: float, drift_minutes: float,
                 work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"media_seconds_per_case": seconds, "decode": {}}
    for name, clip in clips.items():
        print(f"  decode CPU {name} ...", file=sys.stderr, flush=True)
        out["decode"][name] = decode_cpu(clip, seconds)
    rows = []
    for i, (case, clip, n, paced, policy, extra) in enumerate(WEBCAM_CASES):
        print(f"  {case} ...", file=sys.stderr, flush=True)
        spec = base | {"source": str(clips[clip]), "streams": n, "realtime": paced, "duration": seconds,
                       "engine": "shared", "frame_policy": policy, "out": str(work / f"webcam-{i}.json"),
                       "overrides": [*base["overrides"], *extra]}
        rows.append(_webcam_row(case, run_worker(spec)))
    out["rows"] = rows
    by = {r["case"]: r for r in rows}
    # The decode stage inside the pipeline, before (no frame policy) / after: its CPU (the target) and its wall
    # time (which also counts waiting for a core while CLIP and Whisper run).
    out["decode_stage_cpu_ratio_before_over_after"] = _ratio(by["file 640x480, before"]["decode_cpu_s"],
                                                             by["file 640x480"]["decode_cpu_s"])
    out["decode_stage_ratio_before_over_after"] = _ratio(by["file 640x480, before"]["decode_total_s"],
                                                         by["file 640x480"]["decode_total_s"])
    out["text_passes_every_hop_over_default"] = _ratio(by["paced 2x 640x480, partial text every hop"]["text_cache_misses"],
                                                       by["paced 2x 640x480"]["text_cache_misses"])
    if drift_minutes > 0:
        long_clip = make_webcam_media_long(work, drift_minutes * 60.0)
        print(f"  paced 4x 640x480 for {drift_minutes:g} min ...", file=sys.stderr, flush=True)
        spec = base | {"source": str(long_clip), "streams": 4, "realtime": True, "duration": drift_minutes * 60.0,
                       "engine": "shared", "out": str(work / "webcam-drift.json")}
        rep = run_worker(spec, timeout=drift_minutes * 60.0 * 2 + 600)
        out["drift"] = _webcam_row(f"paced 4x 640x480, {drift_minutes:g} min", rep) | {"per_minute": rep["drift"]}
    return out


def make_webcam_media_long(work: Path, seconds: float) -> Path:
    from media import make_webcam_clip

    return make_webcam_clip(work / f"webcam-640x480-{seconds:g}s.mp4", seconds, (640, 480), work)


def webcam_targets(w: dict[str, Any]) -> list[dict[str, Any]]:
    by = {r["case"]: r for r in w.get("rows", [])}
    out = []

    def add(name: str, value: Optional[float], limit: float, higher: bool = False) -> None:
        if value is not None:
            out.append({"target": name, "value": value, "limit": limit, "ok": value >= limit if higher else value <= limit})

    add("2 paced 640x480 streams: frame_to_estimate p95 (ms)", by.get("paced 2x 640x480", {}).get("f2e_p95_ms"), 1000)
    add("4 paced 640x480 streams: frame_to_estimate p95 (ms)", by.get("paced 4x 640x480", {}).get("f2e_p95_ms"), 1500)
    add("4 paced 640x480 streams: estimates/s per stream", by.get("paced 4x 640x480", {}).get("estimates_per_s"), 1.5, higher=True)
    add("1 paced 720p stream: frame_to_estimate p95 (ms)", by.get("paced 1x 1280x720", {}).get("f2e_p95_ms"), 300)
    add("1 paced 720p stream: transcript lag p95 (ms)", by.get("paced 1x 1280x720", {}).get("lag_p95_ms"), 2000)
    add("file 640x480@30: realtime factor", by.get("file 640x480", {}).get("realtime_factor"), 3.0, higher=True)
    add("decode CPU 640x480, before / after (x)", w.get("decode", {}).get("640x480", {}).get("cpu_ratio_before_over_after"), 3.0, higher=True)
    add("decode stage CPU in the pipeline, before / after (x)", w.get("decode_stage_cpu_ratio_before_over_after"), 3.0, higher=True)
    if "drift" in w:
        add("4 paced 640x480 streams: f2e p95 (ms) over the long run", w["drift"]["f2e_p95_ms"], 1500)
        add("4 paced 640x480 streams: estimates/s per stream over the long run", w["drift"]["estimates_per_s"], 1.5, higher=True)
        add("4 paced 640x480 streams: last / first minute p95", w["drift"]["drift_ratio"], 1.5)
    return out


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's CPU targets, where this run measured them (shared engine rows)."""
    rows = {(r["mode"], r["streams"]): r for r in results.get("engine_sharing", {}).get("rows", []) if r["engine"] == "shared"}
    out = []

    def add(name: str, value: Optional[float], limit: float, higher: bool = False) -> None:
        if value is not None:
            out.append({"target": name, "value": value, "limit": limit, "ok": value >= limit if higher else value <= limit})

    add("1 stream paced frame_to_estimate p95 (ms)", rows.get(("paced", 1), {}).get("f2e_p95_ms"), 500)
    add("2 streams paced frame_to_estimate p95 (ms)", rows.get(("paced", 2), {}).get("f2e_p95_ms"), 1000)
    add("1 stream file analysis realtime factor", rows.get(("fast", 1), {}).get("realtime_factor"), 2.0, higher=True)
    add("1 stream paced transcript_lag p95 (ms), speech only", results.get("asr", {}).get("streaming", {}).get("lag_p95_ms"), 2000)
    add("1 stream paced transcript_lag p95 (ms), video + speech", rows.get(("paced", 1), {}).get("lag_p95_ms"), 2000)
    return out


# ------------------------------------------------------------------------------------- markdown
def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    fmt = lambda v: "-" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))  # noqa: E731
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [f"Machine: {m['gpu'] or m['cpu']} ({m['cpu_count']} CPUs), torch {m['torch']}, {m['torch_threads']} threads; "
             f"load average {m['loadavg_start']} -> {m.get('loadavg_end')}; git {m['git']}; {m['date']}.",
             f"Command: `{res['command']}`", ""]
    if "clip_batching" in res:
        c = res["clip_batching"]
        lines += [f"CLIP image throughput ({c['model']}, {c['device']}/{c['precision']}, {c['frame']} frames, "
                  f"median of {c['rounds']} interleaved rounds):", ""]
        lines += _table(["batch", "frames/s"], [[b, v] for b, v in c["fps_by_batch"].items()])
        lines += ["", f"Batched ({c['batch']}) / batch-1: **{c['ratio']}x**.", ""]
    if "engine_sharing" in res:
        e = res["engine_sharing"]
        lines += [f"Shared engine vs one model per stream ({e['media_seconds_per_stream']} s of media per stream; "
                  "fast = as fast as possible, paced = native rate, live semantics):", ""]
        lines += _table(["mode", "streams", "engine", "frames/s", "realtime x", "f2e p50 ms", "f2e p95 ms",
                         "transcript lag p95 ms", "dropped", "mean CLIP batch", "peak RSS MB"],
                        [[r["mode"], r["streams"], r["engine"], r["frames_per_second"], r["realtime_factor"], r["f2e_p50_ms"],
                          r["f2e_p95_ms"], r.get("lag_p95_ms"), r["frames_dropped"], r["clip_mean_batch"], r["peak_rss_mb"]]
                         for r in e["rows"]])
        lines += ["", "Ratios:", ""]
        lines += _table(["mode", "streams", "frames/s shared / per-stream", "f2e p95 per-stream / shared", "RSS per-stream / shared"],
                        [[r["mode"], r["streams"], r["fps_shared_over_per_stream"], r["f2e_p95_per_stream_over_shared"],
                          r["rss_per_stream_over_shared"]] for r in e["ratios"]])
        lines.append("")
    if "asr" in res:
        a = res["asr"]
        lines += [f"Streaming vs offline transcription ({a['audio_seconds']} s espeak-ng speech, {a['model']}):", ""]
        lines += _table(["", "WER", "lag p50 ms", "lag p95 ms", "notes"],
                        [[name, a[key]["wer"], a[key]["lag_p50_ms"], a[key]["lag_p95_ms"],
                          f"{a[key]['passes']} passes, pass p50 {a[key]['asr_pass_p50_ms']} / p95 {a[key]['asr_pass_p95_ms']} ms"]
                         for key, name in (("streaming", f"streaming (paced), {a['pad']} s encoder padding"),
                                           ("streaming_full_window", "streaming (paced), stock 30 s window"))
                         if key in a] + [
                         ["offline (whole file, then transcribe)", a["offline"]["wer"], a["offline"]["lag_p50_ms"],
                          a["offline"]["lag_p95_ms"], f"transcribe {a['offline']['transcribe_s']} s"]])
        if a.get("pass_p50_ratio_full_over_short"):
            lines += ["", f"Whisper pass p50, stock window / short window: **{a['pass_p50_ratio_full_over_short']}x**."]
        lines.append("")
    if "asr_batching" in res:
        b = res["asr_batching"]
        lines += [f"Whisper passes of {b['rows'][0]['streams']} paced streams one at a time vs batched "
                  f"({b['media_seconds_per_stream']} s of media per stream):", ""]
        lines += _table(["asr.batch", "mean batch", "pass p50 ms", "pass p95 ms", "lag p50 ms", "lag p95 ms", "f2e p95 ms", "dropped"],
                        [[r["asr_batch"], r["mean_asr_batch"], r["asr_pass_p50_ms"], r["asr_pass_p95_ms"], r["lag_p50_ms"],
                          r["lag_p95_ms"], r["f2e_p95_ms"], r["frames_dropped"]] for r in b["rows"]])
        lines.append("")
    if "gpu_streams" in res:
        g = res["gpu_streams"]
        lines += [f"Paced streams per GPU (limit: frame_to_estimate p95 <= {g['limit_p95_ms']} ms, drops <= 1 %): "
                  f"**{g['max_streams_ok']}**", ""]
        lines += _table(["streams", "frames/s", "f2e p50 ms", "f2e p95 ms", "dropped", "mean CLIP batch", "GPU peak MB", "ok"],
                        [[r["streams"], r["frames_per_second"], r["f2e_p50_ms"], r["f2e_p95_ms"], r["frames_dropped"],
                          r["clip_mean_batch"], r["gpu_peak_mb"], r["ok"]] for r in g["rows"]])
        lines.append("")
    if "webcam" in res:
        w = res["webcam"]
        lines += [f"Webcam-like clips (espeak-ng speech over ffmpeg testsrc2, H.264, 30 fps; {w['media_seconds_per_case']:g} s "
                  "of media per case). Decode CPU, no model (process CPU s, better of 2 rounds):", ""]
        lines += _table(["clip", "before: CPU s", "after: CPU s", "before / after"],
                        [[k, d["before"]["cpu_s"], d["after"]["cpu_s"], d["cpu_ratio_before_over_after"]] for k, d in w["decode"].items()])
        lines += ["", "Pipeline:", ""]
        rows = [*w["rows"], *([w["drift"]] if "drift" in w else [])]
        lines += _table(["case", "realtime x", "f2e p50 ms", "f2e p95 ms", "lag p95 ms", "estimates/s/stream", "processed",
                         "dropped (stale)", "lowest fps", "CLIP batch p95 ms", "mean batch", "fusion p95 ms", "decode total s",
                         "decode CPU s", "text passes", "drift"],
                        [[r["case"], r["realtime_factor"], r["f2e_p50_ms"], r["f2e_p95_ms"], r["lag_p95_ms"], r["estimates_per_s"],
                          r["frames_processed"], f"{r['frames_dropped']} ({r['frames_stale']})", r["lowest_sampler_fps"],
                          r["clip_p95_ms"], r["clip_mean_batch"], r["fusion_p95_ms"], r["decode_total_s"],
                          r["decode_cpu_s"], r["text_cache_misses"], r["drift_ratio"]] for r in rows])
        lines.append("")
    if res.get("targets"):
        lines += ["Targets:", ""] + _table(["target", "value", "limit", "ok"], [[t["target"], t["value"], t["limit"], t["ok"]] for t in res["targets"]])
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------- main
def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(json.loads(args.worker))
    import torch

    if args.cuda and not torch.cuda.is_available():
        return fail("--cuda needs a CUDA GPU visible to torch, and torch.cuda.is_available() is False here "
                    "(no NVIDIA GPU/driver, or a CPU-only torch build); run the CPU benchmark without --cuda")
    from models.errors import UserError
    from stream.config import ConfigError, load_config

    config = args.config or str(ROOT / "configs" / ("gpu.yaml" if args.cuda else "default.yaml"))
    overrides = ["vision.pretrained=random", *args.overrides]
    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        return fail(str(exc))
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    ns = [int(x) for x in (args.streams or ("1,2" if args.quick else "1,2,4")).split(",")]
    modes = [x.strip() for x in (args.modes or ("fast" if args.quick else "fast,paced")).split(",")]
    seconds = args.engine_seconds or (4.0 if args.quick else 20.0)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="sentistream-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"command": " ".join(["python scripts/bench.py", *(argv if argv is not None else sys.argv[1:])]),
                           "machine": machine_info(), "config": config, "overrides": overrides}
    base = {"config": config, "overrides": overrides}
    try:
        if args.webcam:
            print("webcam clips (640x480, 1280x720 @ 30 fps) ...", file=sys.stderr, flush=True)
            clips = make_webcam_media(work, args.webcam_seconds)
            res["webcam"] = bench_webcam(base, clips, args.webcam_seconds, args.drift_minutes, work)
            skip |= {"clip", "engine", "gpu_streams", "asr_batch", "asr"}
        else:
            wav, video, reference = make_media(work, args.quick, fps=int(cfg.sampler.fps) if args.cuda else 15)
        if "clip" not in skip:
            print("CLIP batching ...", file=sys.stderr, flush=True)
            res["clip_batching"] = bench_clip(cfg, 2.0 if args.quick else 20.0)
        if "engine" not in skip and not args.cuda:
            print("shared engine vs one model per stream ...", file=sys.stderr, flush=True)
            res["engine_sharing"] = bench_engine(base, video, ns, modes, seconds, work)
        if "gpu_streams" not in skip and args.cuda:
            print("streams per GPU ...", file=sys.stderr, flush=True)
            res["gpu_streams"] = bench_gpu_streams(base, video, args.engine_seconds or 20.0, work)
        if "asr_batch" not in skip and cfg.asr.enabled and not args.cuda:
            print("Whisper passes batched across streams ...", file=sys.stderr, flush=True)
            res["asr_batching"] = bench_asr_batching(base, video, max(ns), seconds, work)
        if "asr" not in skip and cfg.asr.enabled:
            print("streaming vs offline transcription ...", file=sys.stderr, flush=True)
            res["asr"] = bench_asr(cfg, wav, reference)
    except (UserError, RuntimeError) as exc:
        return fail(str(exc))
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    res["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    res["targets"] = webcam_targets(res["webcam"]) if args.webcam else (targets(res) if not args.cuda else [])
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    md = Path(args.markdown) if args.markdown else out.with_suffix(".md")
    md.write_text(markdown(res), encoding="utf-8")
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
