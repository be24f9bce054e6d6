"""The text `lexicon` expert: VADER (Hutto & Gilbert 2014; the vaderSentiment wheel's lexicon and rules)
with a calibration fitted on human ratings.

VADER gives each text a compound score in [-1, 1] and the shares of negative, neutral and positive
words. Its usual cut (|compound| >= 0.05) is a rule of thumb, not a probability: a small multinomial
logistic regression over those scores (`scripts/fit_lexicon.py`, fitted on sentences rated by people,
weights in data/lexicon.json) turns them into a distribution over LABELS that the uncertainty fusion
can weigh by its confidence."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import UserError

CALIBRATION = Path(__file__).with_name("data") / "lexicon.json"


def vader_features(scores: dict[str, float]) -> list[float]:
    """What the calibration reads of one VADER result: compound, its square and magnitude, and the
    negative / neutral / positive shares."""
    c = scores["compound"]
    return [c, c * c, abs(c), scores["neg"], scores["neu"], scores["pos"]]


@dataclass(frozen=True)
class Calibration:
    weight: np.ndarray  # (features, 3)
    bias: np.ndarray  # (3,)
    log_variance: float = 0.0  # s = log of the expert's out-of-fold cross-entropy (the fusion's prior)

    @classmethod
    def load(cls, path: Path = CALIBRATION) -> "Calibration":
        try:
            data = json.loads(Path(path).read_text())
            weight = np.asarray(data["weight"], dtype=np.float64)
            bias = np.asarray(data["bias"], dtype=np.float64)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"lexicon calibration {path} is unreadable ({exc}); rerun scripts/fit_lexicon.py") from None
        if weight.shape != (6, 3) or bias.shape != (3,):
            raise UserError(f"lexicon calibration {path} has shapes {weight.shape}/{bias.shape}, expected (6, 3)/(3,)")
        return cls(weight, bias, float(data.get("log_variance", 0.0)))

    def probs(self, features: np.ndarray) -> np.ndarray:
        logits = features @ self.weight + self.bias
        logits -= logits.max(-1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(-1, keepdims=True)


class Vader:
    """VADER's scores of texts, as the calibration's features."""

    def __init__(self) -> None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError:
            raise UserError("experts.text=lexicon needs the vaderSentiment package: pip install vaderSentiment "
                            "(or set experts.text=none)") from None
        self._analyzer = SentimentIntensityAnalyzer()

    def features(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([vader_features(self._analyzer.polarity_scores(t)) for t in texts], dtype=np.float64).reshape(-1, 6)


class LexiconExpert:
    """Texts -> (n, 3) probabilities over LABELS. An empty text has no evidence: callers mask it."""

    name = "vader"

    def __init__(self, vader: Vader | None = None, calibration: Calibration | None = None) -> None:
        self.vader = vader or Vader()
        self.calibration = calibration or Calibration.load()
        self.log_variance = self.calibration.log_variance

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        return self.calibration.probs(self.vader.features(texts)).astype(np.float32)
