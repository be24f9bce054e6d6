"""Human-rated sentences for the sentiment experts: loading and the one tune / held-back split.

The file is a JSON list of {"src", "id", "rating" (-4..4), "text", "label"} records (the VADER paper's
ratings, Hutto & Gilbert 2014: positive >= 1.5, negative <= -1.5, neutral |rating| <= 0.25). A seeded,
per-label 10 % is held back: scripts/fit_lexicon.py never sees it, scripts/sentiment_eval.py speaks it."""
from __future__ import annotations

import json
import random
from pathlib import Path

from models.prompts import LABELS

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "sentiment-dev.json"
HELD_BACK = 0.10
SEED = 2024


def load(path: Path) -> list[dict]:
    if not path.is_file():
        raise SystemExit(f"error: {path} not found: pass --data with a JSON list of rated sentences")
    records = json.loads(path.read_text(encoding="utf-8"))
    bad = [r for r in records if r.get("label") not in LABELS or not str(r.get("text", "")).strip()]
    if bad:
        raise SystemExit(f"error: {path}: {len(bad)} records without a text or a label in {LABELS}")
    return records


def split(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """(tune, held_back): per label, a seeded HELD_BACK share is held back."""
    rng = random.Random(SEED)
    tune, held = [], []
    for label in LABELS:
        group = [r for r in records if r["label"] == label]
        rng.shuffle(group)
        k = round(HELD_BACK * len(group))
        held += group[:k]
        tune += group[k:]
    return tune, held
