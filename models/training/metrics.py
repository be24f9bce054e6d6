"""Scores: accuracy, weighted F1 (per-class F1 weighted by true support) and macro F1 (unweighted
mean over the classes present in truth or prediction, as sklearn does by default), hand-written with
sklearn-compatible definitions; and the heads' probabilities of a fusion model on a feature split."""
from __future__ import annotations

import numpy as np
import torch

from ..experts import EXPERTS
from ..fusion import FUSED, IMAGE, TEXT, ClipCaMsa
from ..prompts import LABELS
from .feature_cache import FeatureSet

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
    """Class probabilities of the final (fused) estimate and of each head, (n, 3) each; for the experts'
    heads (when the features have them) also `<expert>_available`, (n,) bool."""
    was_training = fusion.training
    fusion.eval()
    parts: dict[str, list[np.ndarray]] = {"fused": [], "image": [], "text": [], "fused_head": []}
    for chunk in idx.split(batch):
        out = fusion(features.inputs(chunk, device))
        parts["fused"].append(out.probs.float().cpu().numpy())
        for name, head in (("image", IMAGE), ("text", TEXT), ("fused_head", FUSED)):
            parts[name].append(out.head_probs[:, head].float().cpu().numpy())
        for j, name in enumerate(EXPERTS[: out.head_probs.shape[1] - 3]):
            parts.setdefault(name, []).append(out.head_probs[:, 3 + j].float().cpu().numpy())
            parts.setdefault(f"{name}_available", []).append(out.available[:, 3 + j].cpu().numpy())
    fusion.train(was_training)
    return {k: np.concatenate(v) if v else np.zeros((0, len(LABELS)), np.float32) for k, v in parts.items()}


def score_model(fusion: ClipCaMsa, features: FeatureSet, split: str, device: torch.device) -> dict[str, dict[str, float]]:
    """{"fused": M, "image": M, "text": M, ...}: the estimate, the model's own single-modality heads and
    each expert's head on the samples it had evidence for (absent where it had none)."""
    idx = features.indices(split)
    heads = run_heads(fusion, features, idx, device)
    y = features.labels[idx].numpy()
    scores = {name: classification_metrics(y, heads[name].argmax(-1)) for name in ("fused", "image", "text")}
    for name in EXPERTS:
        seen = heads.get(f"{name}_available")
        if seen is not None and seen.any():
            scores[name] = classification_metrics(y[seen], heads[name][seen].argmax(-1))
    return scores
