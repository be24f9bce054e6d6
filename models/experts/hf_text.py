"""`experts.text=hf:<dir|id>`: a transformers sequence-classification sentiment model as the text expert
(for users online, or with a model on disk: e.g. a Twitter-RoBERTa or multilingual sentiment model).

Its classes come from the model's own config (`id2label`) and are mapped onto LABELS by name:
negative / neutral / positive (any spelling containing neg, neu, pos), 1-5 stars (1-2 negative,
3 neutral, 4-5 positive). A two-class model has no neutral: its neutral probability is 0."""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch

from ..errors import UserError
from ..prompts import LABELS

_MAX_TOKENS = 128


def label_map(id2label: dict[int, str]) -> np.ndarray:
    """(num_labels, 3) 0/1 matrix: model class -> LABELS class. Unknown names are a UserError."""
    out = np.zeros((len(id2label), len(LABELS)), dtype=np.float32)
    for i, name in sorted(id2label.items()):
        low = str(name).strip().lower()
        stars = re.match(r"^([1-5])\s*stars?$", low)
        if stars:
            k = int(stars.group(1))
            target = "negative" if k <= 2 else "neutral" if k == 3 else "positive"
        else:
            hits = [lab for lab in LABELS if lab[:3] in low]
            if len(hits) != 1:
                names = ", ".join(str(v) for _, v in sorted(id2label.items()))
                raise UserError(f"experts.text: cannot map the model's class '{name}' to {'/'.join(LABELS)} "
                                f"(its classes: {names}); use a model whose config names them")
            target = hits[0]
        out[int(i), LABELS.index(target)] = 1.0
    return out


class HfTextExpert:
    """Texts -> (n, 3) probabilities over LABELS from a sequence-classification model."""

    def __init__(self, name_or_dir: str, device: str = "cpu") -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.name = f"hf:{name_or_dir}"
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_dir)
            self.model = AutoModelForSequenceClassification.from_pretrained(name_or_dir).to(device).eval()
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise UserError(f"experts.text=hf:{name_or_dir}: cannot load a sequence-classification model ({first}); "
                            "give a local directory or a hub id reachable from here") from None
        self.device = torch.device(device)
        self.mapping = torch.from_numpy(label_map(dict(self.model.config.id2label)))

    @torch.inference_mode()
    def predict(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(LABELS)), np.float32)
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=_MAX_TOKENS, return_tensors="pt").to(self.device)
        probs = self.model(**batch).logits.float().softmax(-1).cpu()
        return (probs @ self.mapping).numpy()
