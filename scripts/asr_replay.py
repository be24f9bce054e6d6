"""Replay generated speech through `StreamingTranscriber` in virtual real time: WER and commit lag.

Audio "arrives" in 20 ms packets on a virtual clock; a Whisper pass starts when the transcriber
asks for one and advances the clock by its measured compute time, so lag reflects real pass cost
while idle waiting is skipped (a 40 s clip replays in ~10 s). Several voices, rates and pause
patterns, because one clip's WER swings by +-0.05 with where passes happen to fall.

    python scripts/asr_replay.py --json out.json --set asr.chunk_seconds=0.5 [--set ...]

Each `--variant NAME:KEY=VALUE,KEY=VALUE` adds a configuration to compare in the same run.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


PACKET_SECONDS = 0.02


def make_clips(work: Path) -> dict[str, tuple[np.ndarray, str]]:
    from media import SPEECH_SCRIPT, make_speech_clip

    from stream.sources.audio import load_audio_16k

    clips: dict[str, tuple[np.ndarray, str]] = {}
    for name, sentences, pause, wpm in (("script-150wpm", list(SPEECH_SCRIPT), 1.0, 150),
                                        ("reversed-190wpm", list(SPEECH_SCRIPT[::-1]), 0.4, 190)):
        wav, _ = make_speech_clip(sentences, pause, work / f"{name}.wav", wpm=wpm)
        clips[name] = (load_audio_16k(wav), " ".join(sentences))
    for name, voice, wpm, gap, text in (("en-gb-170wpm", "en-gb", 170, 10, " ".join(SPEECH_SCRIPT[2:6])),
                                        ("monologue-165wpm", "en-us", 165, 2, " ".join(SPEECH_SCRIPT))):
        wav = work / f"{name}.wav"  # one espeak-ng call: short, natural pauses only
        if not wav.exists():
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-g", str(gap), "-w", str(wav), text],
                           check=True, capture_output=True)
        clips[name] = (load_audio_16k(wav), text)
    return clips


def replay(model: Any, asr_cfg: Any, audio: np.ndarray) -> tuple[list[float], str, int]:
    """(per-word lag in s, final text, passes) for one clip."""
    from stream.asr import StreamingTranscriber
    from stream.asr.agreement import join_words
    from stream.sources.audio import SAMPLE_RATE

    tr = StreamingTranscriber(model, asr_cfg)
    step = int(PACKET_SECONDS * SAMPLE_RATE)
    packets = [((i + step) / SAMPLE_RATE, audio[i:i + step]) for i in range(0, audio.size, step)]
    now, k, lags, words = 0.0, 0, [], []

    def take(updates: list, at: float) -> None:
        for up in updates:
            if up.final:
                lags.extend(max(0.0, at - w.end) for w in up.words)
                words.extend(up.words)

    while k < len(packets):
        while k < len(packets) and packets[k][0] <= now + 1e-9:
            tr.feed(packets[k][1])
            k += 1
        passes, began = tr.passes, time.perf_counter()
        updates = tr.process()
        if tr.passes > passes:
            now += time.perf_counter() - began
        elif k < len(packets):
            now = max(now, packets[k][0])
        take(updates, now)
    take(tr.finish(), now)
    return lags, join_words(words), tr.passes


def run_variant(base: Any, overrides: list[str], clips: dict[str, tuple[np.ndarray, str]]) -> dict[str, Any]:
    from media import wer

    from stream.asr.model import load_whisper
    from stream.config import load_config

    cfg = load_config(str(ROOT / "configs" / "default.yaml"), [*base, *overrides]).asr
    model = load_whisper(cfg)
    rows, all_lags = [], []
    for name, (audio, reference) in clips.items():
        lags, text, passes = replay(model, cfg, audio)
        all_lags += lags
        rows.append({"clip": name, "seconds": round(audio.size / 16000, 1), "wer": round(wer(reference, text), 4),
                     "lag_p50_ms": round(float(np.percentile(lags, 50)) * 1000),
                     "lag_p95_ms": round(float(np.percentile(lags, 95)) * 1000), "passes": passes})
    return {"overrides": overrides, "clips": rows, "mean_wer": round(float(np.mean([r["wer"] for r in rows])), 4),
            "lag_p95_ms_all_words": round(float(np.percentile(all_lags, 95)) * 1000)}


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True, metavar="OUT")
    p.add_argument("--set", dest="base", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every variant (default config otherwise)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                   help="a configuration to compare (default: the config alone)")
    p.add_argument("--work-dir", default="/tmp/sentistream-asr-replay", help="generated clips are kept here")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if shutil.which("espeak-ng") is None:
        print("error: needs espeak-ng on PATH (make apt)", file=sys.stderr)
        return 2
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    clips = make_clips(work)
    variants = [v.partition(":") for v in args.variant] or [("default", ":", "")]
    out: dict[str, Any] = {"command": " ".join(["python scripts/asr_replay.py", *(argv or sys.argv[1:])]), "variants": {}}
    for name, _, spec in variants:
        overrides = [s for s in spec.split(",") if s]
        res = run_variant(args.base, overrides, clips)
        out["variants"][name] = res
        print(f"{name:>24}: mean WER {res['mean_wer']:.3f}, lag p95 {res['lag_p95_ms_all_words']} ms  "
              + " ".join(f"[{r['clip']} {r['wer']:.3f} {r['lag_p95_ms']}ms]" for r in res["clips"]), flush=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
