#!/usr/bin/env python3
"""Spoken-sentiment evaluation: human-rated sentences, spoken by espeak-ng into one audio file with
pauses, run through the pipeline (file mode, the given config); the estimate just before the next
sentence starts (the end of the pause after a sentence) is compared with the sentence's human label.

Reports macro-F1, accuracy, the share of sentences each class was predicted for, the confusion matrix,
and two references on the same sentences: the text expert on the exact text, and on what Whisper
heard (so ASR's share of the errors shows). Default sentences: a seeded, class-balanced draw from the
held-back part of the tuning data (scripts/sentiment_data.py: never used for fitting); `--data F --all`
speaks every sentence of another file (a JSON list of {"text", "label"}).

    .venv/bin/python scripts/sentiment_eval.py [--per-class 30] [--pause 2.0] [--json docs/sentiment-eval.json]
        [--config configs/default.yaml] [--set vision.pretrained=random ...]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.experts import create_text_experts  # noqa: E402
from models.prompts import LABELS  # noqa: E402
from models.training.metrics import classification_metrics, confusion_matrix  # noqa: E402
from scripts import sentiment_data  # noqa: E402
from scripts.media import make_speech_clip, require_tools  # noqa: E402
from stream.api import analyze_sync  # noqa: E402

SEED = 7


def pick(records: list[dict], per_class: int) -> list[dict]:
    rng = random.Random(SEED)
    chosen = []
    for label in LABELS:
        group = [r for r in records if r["label"] == label]
        chosen += rng.sample(group, min(per_class, len(group)))
    rng.shuffle(chosen)  # mixed order: an estimate must follow the change of sentence
    return chosen


def scores(y: list[int], pred: list[int]) -> dict:
    m = classification_metrics(np.array(y), np.array(pred))
    share = np.bincount(np.array(pred, dtype=int), minlength=len(LABELS)) / max(1, len(pred))
    return {"macro_f1": round(m["macro_f1"], 4), "accuracy": round(m["accuracy"], 4),
            "predicted_share": {lab: round(float(s), 3) for lab, s in zip(LABELS, share)},
            "confusion": confusion_matrix(np.array(y), np.array(pred)).tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=sentiment_data.DEFAULT_DATA)
    ap.add_argument("--all", action="store_true", help="speak every sentence of --data (default: the held-back draw)")
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--pause", type=float, default=2.0, help="silence between sentences (s)")
    ap.add_argument("--wpm", type=int, default=160)
    ap.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=None, help="keep the audio here (default: a temp dir)")
    args = ap.parse_args()
    require_tools("espeak-ng")
    records = sentiment_data.load(args.data)
    sentences = records if args.all else pick(sentiment_data.split(records)[1], args.per_class)
    work = args.work or Path(tempfile.mkdtemp(prefix="sentiment-eval-"))
    work.mkdir(parents=True, exist_ok=True)
    wav, timings = make_speech_clip([r["text"] for r in sentences], args.pause, work / "spoken.wav", wpm=args.wpm)
    print(f"{len(sentences)} sentences, {timings[-1][2] + args.pause:.0f} s of speech+pauses: {wav}", file=sys.stderr)

    started = time.perf_counter()
    sentiment, finals = [], []
    for event in analyze_sync(wav, args.config, args.overrides):
        e = event.to_dict() if hasattr(event, "to_dict") else dict(event)
        if e["type"] == "sentiment":
            sentiment.append(e)
        elif e["type"] == "transcript" and e.get("final"):
            finals.append(e)
    wall = time.perf_counter() - started
    if not sentiment:
        raise SystemExit("error: the pipeline gave no sentiment events")

    y, pred, heard = [], [], []
    for i, (r, (_, start, end)) in enumerate(zip(sentences, timings)):
        nxt = timings[i + 1][1] if i + 1 < len(timings) else end + args.pause
        before = [e for e in sentiment if end <= e["t"] < nxt]
        chosen = before[-1] if before else max((e for e in sentiment if e["t"] <= nxt), key=lambda e: e["t"])
        y.append(LABELS.index(r["label"]))
        pred.append(LABELS.index(chosen["label"]))
        heard.append(" ".join(f["text"] for f in finals if start - 0.3 <= (f["t_start"] + f["t_end"]) / 2 <= nxt).strip())

    experts = create_text_experts("lexicon", "minilm")
    expert = experts["lexicon"]
    exact, transcript = [r["text"] for r in sentences], [h or "" for h in heard]
    result = {
        "sentences": len(sentences), "data": str(args.data), "selection": "all" if args.all else f"held-back, {args.per_class} per class, seed {SEED}",
        "pause_s": args.pause, "wpm": args.wpm, "config": args.config, "overrides": args.overrides,
        "estimate": "the last estimate in the pause after the sentence (before the next one starts)",
        "pipeline": scores(y, pred),
        **{f"{head}_on_{where}": scores(y, list(e.predict(texts).argmax(1)))
           for head, e in experts.items() for where, texts in (("exact_text", exact), ("transcript", transcript))},
        "vader_cut_on_exact_text": scores(y, [2 if c >= 0.05 else 0 if c <= -0.05 else 1
                                              for c in expert.vader.features(exact)[:, 0]]),
        "wall_s": round(wall, 1), "media_s": round(timings[-1][2] + args.pause, 1),
        "weights": sentiment[-1].get("weights"),
        "rows": [{"text": r["text"], "label": r["label"], "predicted": LABELS[p], "heard": h} for r, p, h in zip(sentences, pred, heard)],
    }
    summary = {k: (v["macro_f1"], v["accuracy"]) for k, v in result.items() if isinstance(v, dict) and "macro_f1" in v}
    print(json.dumps({"macro_f1, accuracy": summary, "predicted_share": result["pipeline"]["predicted_share"]}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
