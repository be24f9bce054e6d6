"""The paper's ablations as config changes on a trained model's recipe, trained and scored alike."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..backbone import resolve_device
from ..config import C, ModelConfig
from .feature_cache import FeatureSet
from .loop import train_fusion
from .metrics import score_model

# The paper's ablations as config changes on the trained model's recipe.
ABLATIONS: dict[str, dict[str, Any]] = {
    "no_cross_attention": {"layers": 0},
    "no_uncertainty": {"uncertainty": False},
    "image_only": {"modalities": "image"},
    "text_only": {"modalities": "text"},
    "no_experts": {"use_experts": False},
}


def variant_config(cfg: C, changes: dict[str, Any]) -> C:
    data = cfg.model_dump()
    data["model"].update(changes)
    return type(cfg).model_validate(data)


def run_ablations(cfg: ModelConfig, features: FeatureSet, root: Path, *, progress: bool = True,
                  threads: int = 0) -> dict[str, dict[str, float]]:
    """Each ablation trained with `cfg`'s recipe and seed into root/<variant>, scored on the test split."""
    results = {}
    for name, changes in ABLATIONS.items():
        result = train_fusion(variant_config(cfg, changes), features, root / name, progress=progress,
                             restart_on_mismatch=True, threads=threads)
        results[name] = score_model(result.fusion, features, "test", resolve_device(cfg.vision.device))["fused"]
    return results
