"""Batch of windows -> sentiment estimates: padding, masks and the event-ready result."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from .backbone import TextStates
from .factory import SentimentModel
from .fusion import IMAGE, TEXT, FusionInputs
from .prompts import LABELS


@dataclass
class WindowInput:
    """One stream's window at one hop."""

    image: torch.Tensor  # (n, d) CLIP image embeddings, n may be 0
    image_age: torch.Tensor  # (n,) seconds before the window end
    text: str = ""  # transcript text in the window ("" = no speech)
    n_words: int = 0


@dataclass
class Estimate:
    label: str
    probs: dict[str, float]
    score: float
    modalities: dict[str, dict]
    head_weights: dict[str, float] = field(default_factory=dict)

    def to_event_fields(self) -> dict:
        return {"label": self.label, "probs": self.probs, "score": self.score, "modalities": self.modalities}


def _probs_dict(p: torch.Tensor) -> dict[str, float]:
    return {label: round(float(v), 6) for label, v in zip(LABELS, p)}


def build_inputs(items: Sequence[WindowInput], text: TextStates, dim: int, device: torch.device) -> FusionInputs:
    b = len(items)
    tv = max(1, max(int(it.image.shape[0]) for it in items))
    image = torch.zeros(b, tv, dim, device=device)
    mask = torch.zeros(b, tv, dtype=torch.bool, device=device)
    age = torch.zeros(b, tv, device=device)
    for i, it in enumerate(items):
        n = int(it.image.shape[0])
        if n:
            image[i, :n] = it.image.to(device)
            age[i, :n] = it.image_age.to(device)
            mask[i, :n] = True
    has_text = torch.tensor([bool(it.text.strip()) for it in items], device=device).unsqueeze(1)
    # Text positions past the last one any row uses (its mask, which covers the pooling position)
    # are never read: fusion attends over the rest only. Window texts use ~20-30 of 77.
    used = int(text.mask.any(0).nonzero().max()) + 1 if text.mask.any() else text.mask.shape[1]
    return FusionInputs(image, mask, age, text.states[:, :used], (text.mask & has_text)[:, :used], text.pooled_index)


@torch.inference_mode()
def predict(model: SentimentModel, items: Sequence[WindowInput], text: TextStates) -> list[Estimate]:
    """`text` holds the token states of each item's text (same order)."""
    inputs = build_inputs(items, text, model.backbone.embed_dim, model.device)
    out = model.fusion(inputs)
    mod_w = out.modality_weights.cpu()
    probs, head_probs, weights = out.probs.float().cpu(), out.head_probs.float().cpu(), out.weights.float().cpu()
    results = []
    for i, it in enumerate(items):
        p = probs[i]
        results.append(
            Estimate(
                label=LABELS[int(p.argmax())],
                probs=_probs_dict(p),
                score=round(float(p[2] - p[0]), 6),
                modalities={
                    "image": {"weight": round(float(mod_w[i, 0]), 6), "probs": _probs_dict(head_probs[i, IMAGE]), "n": int(it.image.shape[0])},
                    "text": {"weight": round(float(mod_w[i, 1]), 6), "probs": _probs_dict(head_probs[i, TEXT]), "n": it.n_words},
                },
                head_weights={h: round(float(w), 6) for h, w in zip(("image", "text", "fused"), weights[i])},
            )
        )
    return results
