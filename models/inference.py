"""Batch of windows -> sentiment estimates: padding, masks and the event-ready result."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from .backbone import TextStates
from .experts import EXPERTS
from .factory import SentimentModel
from .fusion import IMAGE, TEXT, FusionInputs
from .prompts import LABELS
from .uncertainty import HEADS

CLIP_HEADS_OFF = "random CLIP weights carry no sentiment (experts.clip_heads=auto)"


@dataclass
class ExpertReading:
    """What one expert says about a window: its probabilities over LABELS and how much it read."""

    probs: np.ndarray  # (3,)
    n: int  # words read (lexicon), face frames seen (expression); 0 = no evidence
    model: str  # which model read it (events say so)


@dataclass
class WindowInput:
    """One stream's window at one hop."""

    image: torch.Tensor  # (n, d) CLIP image embeddings, n may be 0
    image_age: torch.Tensor  # (n,) seconds before the window end
    text: str = ""  # transcript text in the window ("" = no speech)
    n_words: int = 0
    utterance: str = ""  # the latest utterance (what the text expert reads)
    n_utterance_words: int = 0
    experts: dict[str, ExpertReading] = field(default_factory=dict)  # by name in EXPERTS


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


def expert_tensors(items: Sequence[WindowInput], device: torch.device) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(B, E, 3) probabilities and (B, E) evidence mask of the experts' readings, in EXPERTS order;
    (None, None) when no expert read any item (the model runs its CLIP heads only)."""
    if not any(it.experts for it in items):
        return None, None
    probs = torch.full((len(items), len(EXPERTS), len(LABELS)), 1.0 / len(LABELS))
    mask = torch.zeros(len(items), len(EXPERTS), dtype=torch.bool)
    for i, it in enumerate(items):
        for j, name in enumerate(EXPERTS):
            reading = it.experts.get(name)
            if reading is not None and reading.n > 0:
                probs[i, j] = torch.from_numpy(np.asarray(reading.probs, dtype=np.float32))
                mask[i, j] = True
    return probs.to(device), mask.to(device)


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
    experts, experts_mask = expert_tensors(items, device)
    return FusionInputs(image, mask, age, text.states[:, :used], (text.mask & has_text)[:, :used], text.pooled_index,
                        experts, experts_mask)


@torch.inference_mode()
def predict(model: SentimentModel, items: Sequence[WindowInput], text: TextStates) -> list[Estimate]:
    """`text` holds the token states of each item's text (same order)."""
    inputs = build_inputs(items, text, model.backbone.embed_dim, model.device)
    out = model.fusion(inputs)
    mod_w = out.modality_weights.float().cpu()
    probs, head_probs, weights = out.probs.float().cpu(), out.head_probs.float().cpu(), out.weights.float().cpu()
    clip_off = {} if model.fusion.clip_heads else {"off": CLIP_HEADS_OFF}
    results = []
    for i, it in enumerate(items):
        p = probs[i]
        modalities = {
            "image": {"weight": round(float(mod_w[i, 0]), 6), "probs": _probs_dict(head_probs[i, IMAGE]), "n": int(it.image.shape[0]), **clip_off},
            "text": {"weight": round(float(mod_w[i, 1]), 6), "probs": _probs_dict(head_probs[i, TEXT]), "n": it.n_words, **clip_off},
        }
        for j, name in enumerate(EXPERTS):
            reading = it.experts.get(name)
            if reading is not None:
                modalities[name] = {"weight": round(float(mod_w[i, 2 + j]), 6), "probs": _probs_dict(torch.as_tensor(reading.probs)),
                                    "n": reading.n, "model": reading.model}
        # No head had evidence (nothing seen or heard yet): uniform probabilities, and the label says neutral.
        label = LABELS[int(p.argmax())] if float(weights[i].sum()) > 0 else "neutral"
        results.append(
            Estimate(
                label=label,
                probs=_probs_dict(p),
                score=round(float(p[2] - p[0]), 6),
                modalities=modalities,
                head_weights={h: round(float(w), 6) for h, w in zip((*HEADS, *EXPERTS), weights[i])},
            )
        )
    return results
