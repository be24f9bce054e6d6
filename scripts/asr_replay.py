"""Replay generated speech through `StreamingTranscriber` in virtual real time: WER and commit lag.

Audio "arrives" in 20 ms packets on a virtual clock; a Whisper pass starts when the transcriber
asks for one and advances the clock by its measured compute time, so lag reflects real pass cost
while idle waiting is skipped (a 40 s clip replays in ~10 s). Several voices, rates and pause
patterns, because one clip's WER swings by +-0.05 with where passes happen to fall.

    python scripts/asr_replay.py --json out.json --set asr.chunk_seconds=0.5 [--set ...]

`--clips eval` (default) is the 14-clip set of `asr_eval_set.py` (tuning and held-back halves,
voices, rates, numbers, pauses, noise); `--clips revoiced` the tuning half's sentences in the other
tuning clips' voices and conditions (split "revoiced"; a second tuning sample); `--clips fresh` a
second held-back set (10 clips, new sentences, split "fresh"); `--clips large` 40 clips of 8-15 s
drawn by a seeded generator from a bank of new sentences (`asr_eval_set.large()`: 20 tuning / 20
held-back, the same mix of voices, rates, pauses and noise in each half; the issue 17 fourth round's
set); `--clips legacy` the 4 clips the defaults were tuned on.
Modes: live (the virtual clock above, `asr.chunk_seconds`), file (the same transcriber with
`asr.file_chunk_seconds`, as `sentistream run` on a file) and offline (faster-whisper's
`transcribe` on the whole clip, beam 5: the ceiling). Each `--variant NAME:KEY=VALUE,KEY=VALUE`
adds a configuration to compare in the same run. `--clock 0.12` charges every Whisper decode a fixed
0.12 s instead of its measured time: replays become deterministic (measured pass times move where
later passes fall, which moves WER by a few hundredths on this set), for comparing policies.
"""
from __future__ import annotations

import argparse
import hashlib
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


def make_legacy_clips(work: Path) -> dict[str, tuple[np.ndarray, str, str]]:
    from media import SPEECH_SCRIPT, make_speech_clip

    from stream.sources.audio import load_audio_16k

    clips: dict[str, tuple[np.ndarray, str, str]] = {}
    for name, sentences, pause, wpm in (("script-150wpm", list(SPEECH_SCRIPT), 1.0, 150),
                                        ("reversed-190wpm", list(SPEECH_SCRIPT[::-1]), 0.4, 190)):
        wav, _ = make_speech_clip(sentences, pause, work / f"{name}.wav", wpm=wpm)
        clips[name] = (load_audio_16k(wav), " ".join(sentences), "legacy")
    for name, voice, wpm, gap, text in (("en-gb-170wpm", "en-gb", 170, 10, " ".join(SPEECH_SCRIPT[2:6])),
                                        ("monologue-165wpm", "en-us", 165, 2, " ".join(SPEECH_SCRIPT))):
        wav = work / f"{name}.wav"  # one espeak-ng call: short, natural pauses only
        if not wav.exists():
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-g", str(gap), "-w", str(wav), text],
                           check=True, capture_output=True)
        clips[name] = (load_audio_16k(wav), text, "legacy")
    return clips


def make_eval_clips(work: Path, which: str = "eval") -> dict[str, tuple[np.ndarray, str, str]]:
    from asr_eval_set import CLIPS, FRESH, large, render, revoiced

    clips = {"eval": CLIPS, "revoiced": revoiced(), "fresh": FRESH, "large": large()}[which]
    folder = work / which
    if which == "large":  # renders are cached by clip name: a new draw (other sentences) gets its own folder
        folder = work / f"large-{hashlib.sha1(repr(clips).encode()).hexdigest()[:10]}"
    return {c.name: (render(c, folder), c.reference, c.split) for c in clips}


def replay(model: Any, asr_cfg: Any, audio: np.ndarray, clock: Any = time.perf_counter,
           pass_cost: Optional[float] = None) -> tuple[list[float], str, dict[str, Any]]:
    """(per-word lag in s, final text, counts) for one clip; counts: Whisper `passes` (every decode),
    `commit_passes` (the decodes that commit: at a pause, at the age bound) and `cpu_s` (the process's
    CPU time in the transcriber: VAD and Whisper). `pass_cost`: every Whisper decode advances the
    virtual clock by this many seconds instead of its measured time (deterministic replays)."""
    from stream.asr import StreamingTranscriber
    from stream.asr.agreement import join_words
    from stream.sources.audio import SAMPLE_RATE

    tr = StreamingTranscriber(model, asr_cfg)
    step = int(PACKET_SECONDS * SAMPLE_RATE)
    packets = [((i + step) / SAMPLE_RATE, audio[i:i + step]) for i in range(0, audio.size, step)]
    now, k, lags, words, cpu = 0.0, 0, [], [], 0.0

    def take(updates: list, at: float) -> None:
        for up in updates:
            if up.final:
                lags.extend(max(0.0, at - w.end) for w in up.words)
                words.extend(up.words)

    while k < len(packets):
        while k < len(packets) and packets[k][0] <= now + 1e-9:
            tr.feed(packets[k][1])
            k += 1
        passes, began, cpu_began = tr.passes, clock(), time.process_time()
        updates = tr.process()
        cpu += time.process_time() - cpu_began
        if tr.passes > passes:
            now += (tr.passes - passes) * pass_cost if pass_cost is not None else clock() - began
        elif k < len(packets):
            now = max(now, packets[k][0])
        take(updates, now)
    cpu_began = time.process_time()
    take(tr.finish(), now)
    cpu += time.process_time() - cpu_began
    return lags, join_words(words), {"passes": tr.passes, "commit_passes": tr.commit_passes, "cpu_s": round(cpu, 3)}


def file_mode(model: Any, asr_cfg: Any, audio: np.ndarray) -> str:
    """The transcriber as file analysis runs it: `file_chunk_seconds` steps, no clock."""
    from stream.asr import StreamingTranscriber
    from stream.asr.agreement import join_words
    from stream.config import file_asr_config

    tr = StreamingTranscriber(model, file_asr_config(asr_cfg))
    words: list = []
    step = 16000 // 2
    for i in range(0, audio.size, step):
        tr.feed(audio[i:i + step])
        words += [w for u in tr.process() if u.final for w in u.words]
    words += [w for u in tr.finish() if u.final for w in u.words]
    return join_words(words)


def offline(model: Any, audio: np.ndarray) -> str:
    """The variant's asr.model (not asr.commit_model) on the whole clip, beam 5."""
    segments, _ = model.transcribe(audio, language="en", beam_size=5)
    return " ".join(s.text.strip() for s in segments)


def _ms(values: list[float], q: float) -> Optional[int]:
    return round(float(np.percentile(values, q)) * 1000) if values else None


def summarize(rows: list[dict[str, Any]], lags: dict[str, list[float]]) -> dict[str, Any]:
    """Per split: mean clip WER per mode and lag percentiles over all of its words."""
    out: dict[str, Any] = {}
    for split in sorted({r["split"] for r in rows}):
        mine = [r for r in rows if r["split"] == split]
        words = [x for r in mine for x in lags[r["clip"]]]
        out[split] = {"clips": len(mine), "lag_p50_ms": _ms(words, 50), "lag_p95_ms": _ms(words, 95),
                      **{f"{m}_wer": round(float(np.mean([r[f"{m}_wer"] for r in mine])), 4)
                         for m in ("live", "file", "offline") if all(f"{m}_wer" in r for r in mine)}}
        if all("passes" in r for r in mine):  # live: Whisper work per media second
            media = sum(r["seconds"] for r in mine)
            out[split].update(passes=sum(r["passes"] for r in mine), commit_passes=sum(r["commit_passes"] for r in mine),
                              cpu_per_media_s=round(sum(r["cpu_s"] for r in mine) / media, 4))
    return out


def run_variant(base: Any, overrides: list[str], clips: dict[str, tuple[np.ndarray, str, str]],
                modes: list[str], offline_wer: dict[str, float], clock: Any = time.perf_counter,
                pass_cost: Optional[float] = None) -> dict[str, Any]:
    from media import wer

    from stream.asr.model import load_whisper
    from stream.config import load_config

    cfg = load_config(str(ROOT / "configs" / "default.yaml"), [*base, *overrides]).asr
    model = load_whisper(cfg)
    rows, lags_by_clip = [], {}
    for name, (audio, reference, split) in clips.items():
        row: dict[str, Any] = {"clip": name, "split": split, "seconds": round(audio.size / 16000, 1)}
        lags: list[float] = []
        if "live" in modes:
            lags, text, counts = replay(model, cfg, audio, clock, pass_cost)
            row.update(live_wer=round(wer(reference, text), 4), lag_p50_ms=_ms(lags, 50), lag_p95_ms=_ms(lags, 95),
                       **counts, live_text=text)
        if "file" in modes:
            row["file_wer"] = round(wer(reference, file_mode(model, cfg, audio)), 4)
        if "offline" in modes:
            key = f"{cfg.model}/{name}"
            if key not in offline_wer:  # the same for every variant of one model
                offline_wer[key] = round(wer(reference, offline(model, audio)), 4)
            row["offline_wer"] = offline_wer[key]
        lags_by_clip[name] = lags
        rows.append(row)
    return {"overrides": overrides, "clips": rows, "summary": summarize(rows, lags_by_clip)}


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True, metavar="OUT")
    p.add_argument("--set", dest="base", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every variant (default config otherwise)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                   help="a configuration to compare (default: the config alone)")
    p.add_argument("--work-dir", default="/tmp/sentistream-asr-replay", help="generated clips are kept here")
    p.add_argument("--clips", choices=("eval", "large", "revoiced", "fresh", "legacy"), default="eval",
                   help="eval: the 14-clip set with tuning/held-back halves; revoiced: the tuning half's sentences "
                        "in other voices and conditions (a second tuning sample); fresh: a second held-back set "
                        "(10 clips, new sentences); large: 40 generated clips of new sentences, 20 tuning / 20 "
                        "held-back with the same mix of conditions; legacy: the 4 tuned-on clips")
    p.add_argument("--split", choices=("all", "tuning", "held-back"), default="all", help="which half of --clips eval or large to run")
    p.add_argument("--modes", default="live,file,offline", help="comma list of live, file, offline")
    p.add_argument("--clock", default="wall", metavar="wall|cpu|SECONDS",
                   help="what a pass costs on the virtual clock: wall time (a quiet machine), the process's "
                        "CPU time (a shared machine, where waiting for a core is not the pass's cost), or a fixed "
                        "number of seconds per Whisper decode (deterministic: compare policies without timing noise)")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))  # this checkout's `stream`, not an installed one
    if shutil.which("espeak-ng") is None:
        print("error: needs espeak-ng on PATH (make apt)", file=sys.stderr)
        return 2
    pass_cost = None
    if args.clock not in ("wall", "cpu"):
        try:
            pass_cost = float(args.clock)
        except ValueError:
            print(f"error: --clock {args.clock!r}: use wall, cpu or seconds per pass (e.g. 0.12)", file=sys.stderr)
            return 2
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    clips = make_legacy_clips(work) if args.clips == "legacy" else make_eval_clips(work, args.clips)
    clips = {k: v for k, v in clips.items() if args.split in ("all", v[2])}
    modes = [m for m in args.modes.split(",") if m]
    variants = [v.partition(":") for v in args.variant] or [("default", ":", "")]
    out: dict[str, Any] = {"command": " ".join(["python scripts/asr_replay.py", *(argv or sys.argv[1:])]), "variants": {}}
    offline_wer: dict[str, float] = {}
    for name, _, spec in variants:
        overrides = [s for s in spec.split(",") if s]
        res = run_variant(args.base, overrides, clips, modes, offline_wer,
                          time.process_time if args.clock == "cpu" else time.perf_counter, pass_cost)
        out["variants"][name] = res
        for r in res["clips"]:
            print(f"  {name}: " + " ".join(f"{k}={v}" for k, v in r.items() if k != "live_text"), flush=True)
        for split, summ in res["summary"].items():
            print(f"{name:>24} [{split}]: " + " ".join(f"{k}={v}" for k, v in summ.items()), flush=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
