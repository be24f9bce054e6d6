"""CLIP-CA-MSA, the model library: CLIP image + text features, gated cross-attention between them,
uncertainty-weighted fusion of the modality heads. It never imports the streaming app.

Front door: `build_model(config)` (backbone + fusion + optional checkpoint) and `predict` over
`WindowInput`s; `ModelConfig` / `load_config` for configuration; training lives in `models.training`.
Names are loaded on first use, so `import models.errors` (or `models.config`) stays free of torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ModelConfig": "config", "load_config": "config",
    "ConfigError": "errors", "UserError": "errors", "WeightsUnavailable": "errors",
    "SentimentModel": "factory", "build_model": "factory",
    "Estimate": "inference", "WindowInput": "inference", "predict": "inference",
    "LABELS": "prompts",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
