#!/usr/bin/env python3
"""What `SentimentProcessor` costs a Pipecat pipeline: time inside its `process_frame` per frame
and the estimates it pushes, with a camera (640x480 RGB, the gallery view: two faces) at 30 fps
and 20 ms microphone chunks, paced in real time through Pipecat's `run_test` pipeline.

    .venv/bin/python scripts/bench_pipecat.py --json docs/results/bench-pipecat.json                 # tiny CLIP
    .venv/bin/python scripts/bench_pipecat.py --config configs/default.yaml --set vision.pretrained=random

`process_frame` time: from when the processor starts a frame (observer's on_process_frame) to
when it pushes it on (on_push_frame), Pipecat's clock. The camera frames the sampler keeps are
copied out of the frame's bytes; the others are only timestamped.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's stream/models, not an installed copy


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True, metavar="OUT")
    p.add_argument("--config", default=str(ROOT / "configs" / "tiny-test.yaml"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--audio-rate", type=int, default=16000, help="Pipecat's input rate (SmallWebRTC resamples to it)")
    return p.parse_args(argv)


def _quantiles(values_ns: list[int]) -> dict[str, float]:
    us = np.asarray(values_ns, dtype=np.float64) / 1000.0
    return {"n": int(us.size), "p50_us": round(float(np.percentile(us, 50)), 1), "p99_us": round(float(np.percentile(us, 99)), 1),
            "max_us": round(float(us.max()), 1)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from pipecat.frames.frames import InputAudioRawFrame, InputImageRawFrame
    from pipecat.observers.base_observer import BaseObserver, FrameProcessed, FramePushed
    from pipecat.tests.utils import SleepFrame, run_test

    from scripts.media import gallery_frame
    from stream.integrations.pipecat import SentimentFrame, SentimentProcessor, build_runtime_for_pipecat

    runtime = await build_runtime_for_pipecat(args.config, args.set)
    processor = SentimentProcessor(runtime, rtvi=True)

    class Timer(BaseObserver):
        def __init__(self) -> None:
            super().__init__()
            self.started: dict[int, int] = {}
            self.spent: dict[str, list[int]] = {"image": [], "audio": []}

        async def on_process_frame(self, data: FrameProcessed) -> None:
            if data.processor is processor:
                self.started[data.frame.id] = data.timestamp

        async def on_push_frame(self, data: FramePushed) -> None:
            if data.source is processor and data.frame.id in self.started:
                kind = "image" if isinstance(data.frame, InputImageRawFrame) else "audio" if isinstance(data.frame, InputAudioRawFrame) else None
                start = self.started.pop(data.frame.id)
                if kind:
                    self.spent[kind].append(data.timestamp - start)

    rgb = gallery_frame(0.0, 3600.0)
    h, w = rgb.shape[:2]
    chunk = np.zeros(int(args.audio_rate * 0.02), "<i2").tobytes()
    frames: list[Any] = []
    period = 1.0 / args.fps
    audio_due = 0.0
    for k in range(int(args.seconds * args.fps)):
        t = k * period
        frames.append(InputImageRawFrame(image=rgb.tobytes(), size=(w, h), format="RGB"))
        while audio_due < t + period:
            frames.append(InputAudioRawFrame(audio=chunk, sample_rate=args.audio_rate, num_channels=1))
            audio_due += 0.02
        frames.append(SleepFrame(sleep=period))
    timer = Timer()
    try:
        down, _ = await run_test(processor, frames_to_send=frames, observers=[timer])
    finally:
        await runtime.close()
    estimates = [f for f in down if isinstance(f, SentimentFrame)]
    ts = [e.t for e in estimates]
    return {
        "config": args.config, "overrides": args.set, "seconds": args.seconds, "camera_fps": args.fps, "audio_rate": args.audio_rate,
        "frame_size": [w, h], "weights": runtime.engine.weights,
        "process_frame": {kind: _quantiles(v) for kind, v in timer.spent.items()},
        "estimates": len(estimates), "estimate_interval_s_median": round(float(np.median(np.diff(ts))), 3) if len(ts) > 1 else None,
        "estimate_latency_ms_median": round(float(np.median([e.event["latency_ms"] for e in estimates])), 1) if estimates else None,
        "faces_max": max((len(e.faces) for e in estimates), default=0),
        "events_dropped": processor.events_dropped, "summary": processor.summary,
    }


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    result = asyncio.run(run(args))
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    pf = result["process_frame"]
    print(f"process_frame: camera p50 {pf['image']['p50_us']} us / p99 {pf['image']['p99_us']} us, "
          f"audio p50 {pf['audio']['p50_us']} us / p99 {pf['audio']['p99_us']} us; {result['estimates']} estimates, "
          f"every {result['estimate_interval_s_median']} s, latency p50 {result['estimate_latency_ms_median']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
