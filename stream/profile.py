"""`sentistream profile`: N concurrent streams of one source through the real pipeline.

One Runtime (one engine, one Whisper) serves every stream, exactly as `run`/`serve` do; each stream
gets its own source (its own decoder) and `StreamSession`. The report has per-stage latency
percentiles, throughput, drops, memory and a per-minute p95 of frame_to_estimate (drift). Stdout
carries only the table; everything else goes to stderr or to --json / --plot.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import math
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from models.errors import UserError

from .config import AppConfig
from .events import input_warnings
from .metrics import LatencyStats
from .runtime import Runtime, build_runtime, build_runtime_blocking
from .session import StreamSession
from .sources import FramePolicy, MediaItem, MediaSource, VideoFrame, open_source, pump

STAGES = ("decode", "face_detect", "clip_image", "asr", "clip_text", "fusion", "frame_to_estimate", "transcript_lag")
DRIFT_STAGE = "frame_to_estimate"
MINUTE = 60.0


class TimedStats(LatencyStats):
    """LatencyStats that also remembers *when* each sample of `timed` stages landed (for drift)."""

    def __init__(self, origin: float, timed: tuple[str, ...] = (DRIFT_STAGE,), capacity: int = 100_000):
        super().__init__(capacity)
        self.origin = origin
        self.timed = timed
        self.stamped: collections.deque[tuple[float, float]] = collections.deque(maxlen=capacity)

    def add(self, stage: str, seconds: float) -> None:
        super().add(stage, seconds)
        if stage in self.timed:
            self.stamped.append((time.perf_counter() - self.origin, seconds))


def _paced(source: MediaSource) -> float:
    # AvSource counts the time it sleeps to pace a --realtime file; other sources never sleep.
    return float(getattr(source, "paced_seconds", 0.0))


def timed_frames(source: MediaSource, stats: LatencyStats, duration: Optional[float],
                 policy: Optional[FramePolicy] = None) -> Iterator[MediaItem]:
    """source.frames(), recording "decode" per video frame and stopping after `duration` media s.

    "decode" is the wall time spent inside the generator for the call that produced the frame
    (demux + decode + conversion of kept frames), minus pacing sleeps. For files this is the decode cost; for
    cameras/URLs it also includes waiting for the device/network, so read it as an upper bound.
    "decode_cpu" is the CPU time of the thread that runs the generator (sleeps and waits for a core
    excluded), audio included: each video frame's sample also holds the audio items decoded since
    the previous frame. FFmpeg's own worker threads (frame-threaded decoding above 1080p) are not in it.
    """
    frames = source.frames(policy)
    cpu_since_frame = 0.0
    try:
        while True:
            waited = _paced(source)
            started, cpu_started = time.perf_counter(), time.thread_time()
            try:
                item = next(frames)
            except StopIteration:
                return
            if duration is not None and item.t >= duration:
                return  # before recording: one decode sample per frame that entered the pipeline
            cpu_since_frame += time.thread_time() - cpu_started
            if isinstance(item, VideoFrame):
                paced = _paced(source) - waited
                stats.add("decode", max(0.0, time.perf_counter() - started - paced))
                stats.add("decode_cpu", cpu_since_frame)
                cpu_since_frame = 0.0
            yield item
    finally:
        frames.close()  # AvSource closes its container in the generator's finally


@dataclass
class ProfileResult:
    report: dict[str, Any]
    stats: LatencyStats  # every sample of every stream (plots)
    runtimes: list[Runtime] = field(default_factory=list)  # closed; batch counters stay readable


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


async def run_profile(cfg: AppConfig, spec: str, *, streams: int = 1, realtime: bool = False,
                      duration: Optional[float] = None, shared: bool = True,
                      on_event: Optional[Callable[[dict], None]] = None, frame_policy: bool = True) -> ProfileResult:
    """Runs `streams` copies of `spec` concurrently; `shared=False` is the one-model-per-stream baseline;
    `frame_policy=False`: every decoded frame full-size RGB as before issue 11 (benchmark baseline)."""
    if streams < 1:
        raise UserError(f"--streams must be at least 1, got {streams}")
    if duration is not None and duration <= 0:
        raise UserError(f"--duration must be positive seconds of media, got {duration}")
    if streams > 1 and spec.strip().isdigit():
        raise UserError("--streams > 1 needs a file or URL source (a camera can be opened only once)")
    sources = [open_source(spec, realtime=realtime) for _ in range(streams)]
    runtimes: list[Runtime] = []
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=streams, thread_name_prefix="sentistream-decode")
    errors: list[str] = []
    try:
        infos = [s.open() for s in sources]  # bad input fails here, before any model is loaded
        info = infos[0]
        if shared:
            runtimes.append(await build_runtime(cfg, need_asr=info.has_audio))
        else:
            for _ in range(streams):
                runtimes.append(await asyncio.to_thread(build_runtime_blocking, cfg, info.has_audio, False))
        for message in input_warnings(info.description, weights=runtimes[0].engine.weights, has_video=info.has_video,
                                      has_audio=info.has_audio, asr_enabled=cfg.asr.enabled,
                                      language=cfg.asr.language, vision_model=cfg.vision.model):
            _warn(message)
        origin = time.perf_counter()
        emit = on_event or (lambda event: None)
        sessions = [StreamSession(str(i), runtimes[i if not shared else 0], emit, live=info.live,
                                  has_video=info.has_video, has_audio=info.has_audio, stats=TimedStats(origin))
                    for i in range(streams)]
        runners = [asyncio.create_task(s.run(), name=f"profile-{s.name}") for s in sessions]
        pumps = [pump(timed_frames(src, s.stats, duration, s.frame_policy() if frame_policy else None), s, executor=pool)
                 for src, s in zip(sources, sessions)]
        try:
            for i, res in enumerate(await asyncio.gather(*pumps, return_exceptions=True)):
                if isinstance(res, UserError):  # e.g. a truncated file: keep what was analysed
                    errors.append(f"stream {i}: {res}")
                    print(f"error: stream {i}: {res}", file=sys.stderr)
                elif isinstance(res, BaseException):
                    raise res
            summaries = await asyncio.gather(*runners)
        except BaseException:
            for r in runners:
                r.cancel()
            await asyncio.gather(*runners, return_exceptions=True)
            raise
        wall = time.perf_counter() - origin
    finally:
        for s in sources:
            s.close()
        for rt in runtimes:
            await rt.close()
        pool.shutdown(wait=False, cancel_futures=True)
    stats = LatencyStats()
    for rt in runtimes:  # sessions merged their own stats into their runtime's at the end
        stats.merge(rt.stats)
    report = build_report(cfg, spec, realtime, duration, shared, sessions, summaries, runtimes, stats, wall)
    # Sampled files skip the packets no kept frame needs: frames_in counts only decoded frames.
    undecoded = [int(getattr(src, "frames_undecoded", 0)) for src in sources]
    report["frames_undecoded"] = sum(undecoded)
    for row, n in zip(report["per_stream"], undecoded):
        row["frames_undecoded"] = n
    report["errors"] = errors
    return ProfileResult(report, stats, runtimes)


# ---------------------------------------------------------------------------------------- report
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({os.cpu_count()} logical CPUs)"


def peak_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB (macOS in bytes; this project targets Linux).
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def gpu_peak_mb(device: torch.device) -> Optional[float]:
    # torch's allocator only: CTranslate2 (Whisper) allocations on the GPU are not included.
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def drift(sessions: list[StreamSession], wall: float) -> tuple[list[dict[str, Any]], Optional[float]]:
    """Per wall-clock minute p95 of frame_to_estimate over all streams; ratio last/first full minute."""
    buckets: dict[int, list[float]] = collections.defaultdict(list)
    for s in sessions:
        if isinstance(s.stats, TimedStats):
            for at, seconds in s.stats.stamped:
                buckets[int(at // MINUTE)].append(seconds * 1000.0)
    rows = [{"minute": m + 1, "p95_ms": round(float(np.percentile(v, 95)), 2), "count": len(v),
             "complete": (m + 1) * MINUTE <= wall} for m, v in sorted(buckets.items())]
    full = [r for r in rows if r["complete"]]
    ratio = round(full[-1]["p95_ms"] / full[0]["p95_ms"], 3) if len(full) >= 2 and full[0]["p95_ms"] > 0 else None
    return rows, ratio


def _batching(runtimes: list[Runtime]) -> dict[str, Any]:
    """Batch statistics per micro-batcher (summed over runtimes): CLIP images, fusion, and Whisper
    passes when `asr.batch` > 1."""
    groups: dict[str, list[Any]] = {
        "clip_image": [rt.engine.images for rt in runtimes],
        "fusion": [rt.engine.fusion for rt in runtimes],
        "asr": [rt.asr_batcher.batcher for rt in runtimes if rt.asr_batcher is not None],
        "asr_commit": [rt.asr_batcher.commit_batcher for rt in runtimes
                       if rt.asr_batcher is not None and rt.asr_batcher.commit_batcher is not None],
    }
    out: dict[str, Any] = {}
    for name, batchers in groups.items():
        if not batchers:
            continue
        sizes: collections.Counter[int] = collections.Counter()
        for b in batchers:
            sizes.update(b.batch_sizes)
        batches, items = sum(b.batches for b in batchers), sum(b.items for b in batchers)
        out[name] = {"batches": batches, "items": items, "mean_batch": round(items / batches, 2) if batches else None,
                     "max_batch": max(sizes) if sizes else None, "sizes": {str(k): v for k, v in sorted(sizes.items())},
                     "expired": sum(getattr(b, "expired", 0) for b in batchers),
                     "time_capped": sum(getattr(b, "time_capped", 0) for b in batchers)}
    return out


def _text_passes(runtimes: list[Runtime], summaries: list[dict]) -> dict[str, Any]:
    """How often the window text changed (by cause, summed over streams) and what the engine's text
    cache did with it: each miss is one CLIP text pass."""
    causes: collections.Counter[str] = collections.Counter()
    for summ in summaries:
        causes.update(summ.get("text_updates") or {})
    hits = sum(rt.engine.text_cache.hits for rt in runtimes)
    misses = sum(rt.engine.text_cache.misses for rt in runtimes)
    return {"updates": dict(causes), "cache_hits": hits, "cache_misses": misses,
            "partial_text_every": runtimes[0].cfg.engine.partial_text_every}


def build_report(cfg: AppConfig, spec: str, realtime: bool, duration: Optional[float], shared: bool,
                 sessions: list[StreamSession], summaries: list[dict], runtimes: list[Runtime],
                 stats: LatencyStats, wall: float) -> dict[str, Any]:
    stages = stats.summary(STAGES)
    stages.update(stats.summary([s for s in stats.stages() if s not in STAGES]))
    media = [float(s["media_seconds"]) for s in summaries]
    frames_processed = sum(int(s["frames_processed"]) for s in summaries)
    device = runtimes[0].engine.model.device
    drift_rows, drift_ratio = drift(sessions, wall)
    per_stream = []
    for sess, summ in zip(sessions, summaries):
        f2e = sess.stats.summary([DRIFT_STAGE])[DRIFT_STAGE]
        per_stream.append({k: summ.get(k) for k in ("stream", "frames_in", "frames_processed", "frames_dropped",
                                                    "frames_stale", "frames_skipped", "media_seconds", "estimates",
                                                    "transcripts", "sampler_fps", "text_updates")}
                          | {"realtime_factor": round(summ["media_seconds"] / wall, 3) if wall > 0 else None,
                             "frame_to_estimate_p95_ms": f2e["p95_ms"]})
    return {
        "source": spec,
        "streams": len(sessions),
        "mode": "paced" if realtime else ("live" if sessions[0].live else "file"),
        "engine": "shared" if shared else "per-stream",
        "duration_limit_s": duration,
        "stages": stages,
        # Media seconds each stream advanced per wall second (mean over streams); >= 1 keeps up.
        "realtime_factor": round(float(np.mean(media)) / wall, 3) if wall > 0 else None,
        "aggregate_realtime_factor": round(sum(media) / wall, 3) if wall > 0 else None,
        "frames_in": sum(int(s["frames_in"]) for s in summaries),
        "frames_processed": frames_processed,
        "frames_dropped": sum(int(s["frames_dropped"]) for s in summaries),
        "frames_stale": sum(int(s.get("frames_stale", 0)) for s in summaries),
        "frames_skipped": sum(int(s["frames_skipped"]) for s in summaries),
        # Estimates per wall second of each stream (mean): the hop rate kept (or not) under load.
        "estimates_per_second": round(float(np.mean([int(s["estimates"]) for s in summaries])) / wall, 3) if wall > 0 else None,
        "text": _text_passes(runtimes, summaries),
        "frames_per_second": round(frames_processed / wall, 3) if wall > 0 else None,
        "media_seconds": round(float(np.mean(media)), 3),
        "wall_seconds": round(wall, 3),
        "device": describe_device(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mb": peak_rss_mb(),
        "gpu_peak_mb": gpu_peak_mb(device),
        "drift": drift_rows,
        "drift_ratio": drift_ratio,
        "batching": _batching(runtimes),
        "per_stream": per_stream,
        "config": {"vision": f"{cfg.vision.model}/{cfg.vision.pretrained}", "vision_device": str(device),
                   "precision": str(runtimes[0].engine.model.backbone.dtype).replace("torch.", ""),
                   "clip_backend": runtimes[0].engine.model.backbone.backend,
                   "sampler_fps": cfg.sampler.fps, "hop_s": cfg.window.hop, "max_batch": cfg.engine.max_batch,
                   "max_wait_ms": cfg.engine.max_wait_ms, "max_batch_ms": cfg.engine.max_batch_ms,
                   "max_frame_age_ms": cfg.pipeline.max_frame_age_ms, "partial_text_every": cfg.engine.partial_text_every,
                   "asr": f"{cfg.asr.model}/{cfg.asr.compute_type}" if cfg.asr.enabled else None,
                   "asr_workers": cfg.asr.workers},
    }


def format_table(report: dict[str, Any]) -> str:
    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:.1f}"

    lines = [f"{'stage':<18} {'count':>7} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9}"]
    for stage, row in report["stages"].items():
        lines.append(f"{stage:<18} {row['count']:>7} {cell(row['p50_ms']):>9} {cell(row['p95_ms']):>9} {cell(row['p99_ms']):>9}")
    return "\n".join(lines)


def plot_histograms(stats: LatencyStats, path: str, title: str) -> None:
    """One latency histogram per stage (ms) with p50/p95 marks; Agg via Figure, no pyplot state."""
    from matplotlib.figure import Figure

    stages = [s for s in (*STAGES, *[x for x in stats.stages() if x not in STAGES]) if stats.values(s)]
    cols = 3
    rows = max(1, math.ceil(len(stages) / cols))
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows))
    for i, stage in enumerate(stages):
        ax = fig.add_subplot(rows, cols, i + 1)
        vals = np.asarray(stats.values(stage)) * 1000.0
        ax.hist(vals, bins=min(50, max(5, vals.size // 4)), color="#4c72b0")
        p50, p95 = np.percentile(vals, [50, 95])
        ax.axvline(p50, color="black", lw=1, label=f"p50 {p50:.1f}")
        ax.axvline(p95, color="#c44e52", lw=1, ls="--", label=f"p95 {p95:.1f}")
        ax.set_title(f"{stage} (n={vals.size})", fontsize=9)
        ax.set_xlabel("ms", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    if not stages:
        fig.text(0.5, 0.5, "no samples", ha="center")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
