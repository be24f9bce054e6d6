"""`sentistream evaluate`: a checkpoint's scores on the test split, and optionally the ablations.

Metrics (hand-written, sklearn-compatible definitions): accuracy, weighted F1 (per-class F1
weighted by true support) and macro F1 (unweighted mean over the classes present in truth or
prediction, as sklearn does by default). `--ablations` trains each variant with the checkpoint's
own recipe and seed on the data's train/valid splits, into `<checkpoint>/ablations/<variant>`.
"""
from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stream.config import AppConfig, load_config
from stream.errors import UserError

from .backbone import resolve_device
from .checkpoint import CONFIG_FILE, load_checkpoint, read_meta
from .data import load_dataset
from .features import FeatureSet, load_features, make_fusion
from .fusion import FUSED, IMAGE, TEXT, ClipCaMsa
from .prompts import LABELS

log = logging.getLogger(__name__)

# The paper's ablations as config changes on the trained model's recipe.
ABLATIONS: dict[str, dict[str, Any]] = {
    "no_cross_attention": {"layers": 0},
    "no_uncertainty": {"uncertainty": False},
    "image_only": {"modalities": "image"},
    "text_only": {"modalities": "text"},
}
METRICS = ("accuracy", "weighted_f1", "macro_f1")


# ------------------------------------------------------------------------------------------ metrics
def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, k: int = len(LABELS)) -> np.ndarray:
    """(k, k) counts, rows = true class, columns = predicted class."""
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    cm = confusion_matrix(y_true, y_pred)
    n = int(cm.sum())
    if n == 0:
        return {m: 0.0 for m in METRICS}
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(1).astype(float), cm.sum(0).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = (support + predicted) > 0
    return {
        "accuracy": float(tp.sum() / n),
        "weighted_f1": float((f1 * support).sum() / support.sum()),
        "macro_f1": float(f1[present].mean()),
    }


# ------------------------------------------------------------------------------------------ scoring
@torch.no_grad()
def run_heads(fusion: ClipCaMsa, features: FeatureSet, idx: torch.Tensor, device: torch.device, batch: int = 256) -> dict[str, np.ndarray]:
    """Class probabilities of the final (fused) estimate and of each head, (n, 3) each."""
    was_training = fusion.training
    fusion.eval()
    parts: dict[str, list[np.ndarray]] = {"fused": [], "image": [], "text": [], "fused_head": []}
    for chunk in idx.split(batch):
        out = fusion(features.inputs(chunk, device))
        parts["fused"].append(out.probs.float().cpu().numpy())
        for name, head in (("image", IMAGE), ("text", TEXT), ("fused_head", FUSED)):
            parts[name].append(out.head_probs[:, head].float().cpu().numpy())
    fusion.train(was_training)
    return {k: np.concatenate(v) if v else np.zeros((0, len(LABELS)), np.float32) for k, v in parts.items()}


def score_model(fusion: ClipCaMsa, features: FeatureSet, split: str, device: torch.device) -> dict[str, dict[str, float]]:
    """{"fused": M, "image": M, "text": M}: the estimate and the model's own single-modality heads."""
    idx = features.indices(split)
    heads = run_heads(fusion, features, idx, device)
    y = features.labels[idx].numpy()
    return {name: classification_metrics(y, heads[name].argmax(-1)) for name in ("fused", "image", "text")}


def variant_config(cfg: AppConfig, changes: dict[str, Any]) -> AppConfig:
    data = cfg.model_dump()
    data["model"].update(changes)
    return AppConfig.model_validate(data)


def run_ablations(cfg: AppConfig, features: FeatureSet, root: Path, *, progress: bool = True) -> dict[str, dict[str, float]]:
    # Imported here: train.py imports this module's metrics, and ablations are the only way back.
    from .train import train_fusion

    results = {}
    for name, changes in ABLATIONS.items():
        result = train_fusion(variant_config(cfg, changes), features, root / name, progress=progress, restart_on_mismatch=True)
        results[name] = score_model(result.fusion, features, "test", resolve_device(cfg.vision.device))["fused"]
    return results


def _ablation_root(ckpt: Path) -> Path:
    root = ckpt / "ablations"
    try:
        root.mkdir(exist_ok=True)
        return root
    except OSError:  # a read-only checkpoint: train the variants somewhere temporary
        return Path(tempfile.mkdtemp(prefix="sentistream-ablations-"))


# -------------------------------------------------------------------------------------------- report
def format_table(report: dict[str, Any], n_test: int) -> str:
    rows = [("full model (fused)", report["fused"]), ("  its image head", report["image"]), ("  its text head", report["text"])]
    rows += [(name, m) for name, m in report.get("ablations", {}).items()]
    lines = [f"test split, {n_test} samples", f"{'model':<22}{'accuracy':>10}{'weighted_f1':>13}{'macro_f1':>10}"]
    for name, m in rows:
        lines.append(f"{name:<22}{m['accuracy']:>10.4f}{m['weighted_f1']:>13.4f}{m['macro_f1']:>10.4f}")
    return "\n".join(lines)


def main(cfg: AppConfig, args: Any) -> int:
    ckpt = Path(args.checkpoint)
    read_meta(ckpt)  # a clear error for a directory that is not a checkpoint, before anything else
    if not (ckpt / CONFIG_FILE).is_file():
        raise UserError(f"checkpoint {ckpt} has no {CONFIG_FILE}: it cannot be rebuilt (re-run sentistream train)")
    # The checkpoint's own config rebuilds its model; --set overrides (e.g. vision.device) still apply.
    cfg = load_config(ckpt / CONFIG_FILE, getattr(args, "overrides", []) or [])
    required = ("train", "valid", "test") if args.ablations else ("test",)
    dataset = load_dataset(args.data, cfg.train.seed, require=required)
    features = load_features(cfg, dataset, progress=True)
    fusion = make_fusion(cfg, features)
    load_checkpoint(ckpt, fusion, cfg, features.embed_dim)
    device = resolve_device(cfg.vision.device)
    fusion.to(device).eval()
    report: dict[str, Any] = score_model(fusion, features, "test", device)
    report["ablations"] = run_ablations(cfg, features, _ablation_root(ckpt)) if args.ablations else {}
    print(format_table(report, len(features.indices("test"))))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"metrics written to {out}", file=sys.stderr)
    return 0
