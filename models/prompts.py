"""Sentiment classes and the CLIP prompts that give the heads their zero-shot starting weights."""
from __future__ import annotations

LABELS: tuple[str, ...] = ("negative", "neutral", "positive")

# Several phrasings per class, averaged (the usual CLIP prompt ensembling).
PROMPTS: dict[str, tuple[str, ...]] = {
    "negative": (
        "a photo of a sad or angry person.",
        "a person feeling negative emotions.",
        "this is bad, terrible and upsetting.",
    ),
    "neutral": (
        "a photo of a calm person with a neutral expression.",
        "a person feeling nothing in particular.",
        "this is ordinary and matter-of-fact.",
    ),
    "positive": (
        "a photo of a happy smiling person.",
        "a person feeling positive emotions.",
        "this is good, wonderful and delightful.",
    ),
}


def label_index(label: str) -> int:
    try:
        return LABELS.index(label)
    except ValueError:
        raise ValueError(f"unknown label '{label}' (allowed: {', '.join(LABELS)})") from None


def score_to_label(score: float, threshold: float = 0.1) -> str:
    """Map a score in [-1, 1] to a class as MMSA does for CH-SIMS: (-1,-0.1] neg, (-0.1,0.1] neu, (0.1,1] pos."""
    if score <= -threshold:
        return "negative"
    if score > threshold:
        return "positive"
    return "neutral"
