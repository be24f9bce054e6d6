"""CLIP-CA-MSA, the model library: CLIP image + text features, gated cross-attention between them,
uncertainty-weighted fusion of the modality heads. It never imports the streaming app.

Front door: `build_model(config)` (backbone + fusion + optional checkpoint) and `predict` over
`WindowInput`s; `ModelConfig` / `load_config` for configuration; training lives in `models.training`.
"""
from __future__ import annotations

from .config import ModelConfig, load_config
from .errors import ConfigError, UserError, WeightsUnavailable
from .factory import SentimentModel, build_model
from .inference import Estimate, WindowInput, predict
from .prompts import LABELS

__all__ = [
    "LABELS", "ConfigError", "Estimate", "ModelConfig", "SentimentModel", "UserError", "WeightsUnavailable",
    "WindowInput", "build_model", "load_config", "predict",
]
