"""Uncertainty weighting of the modality heads (Kendall, Gal & Cipolla, 2018).

Training: L = sum_m exp(-s_m) * CE_m + s_m, with s_m = log sigma_m^2 learned per head.
Inference: heads are mixed with weights proportional to precision exp(-s_m) times per-sample
confidence (1 - normalised entropy); a head whose modality is missing gets weight 0.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

HEADS: tuple[str, ...] = ("image", "text", "fused")
_MIN_CONFIDENCE = 1e-3  # keeps a maximally unsure head from vanishing entirely
# On separable data the optimum s_m = log CE_m runs to -inf; bounding it keeps the loss finite
# and no head's precision beyond e^5 times another's.
LOG_VAR_BOUND = 5.0


def bounded(log_vars: torch.Tensor) -> torch.Tensor:
    return log_vars.clamp(-LOG_VAR_BOUND, LOG_VAR_BOUND)


def confidence(probs: torch.Tensor) -> torch.Tensor:
    """1 - H(p)/log(K): 1 for a one-hot prediction, ~0 for a uniform one."""
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
    return (1.0 - entropy / math.log(probs.shape[-1])).clamp_min(_MIN_CONFIDENCE)


def head_weights(
    probs: torch.Tensor,  # (B, H, K)
    log_vars: torch.Tensor,  # (H,)
    available: torch.Tensor,  # (B, H) bool
    use_uncertainty: bool = True,
) -> torch.Tensor:
    """(B, H) weights that sum to 1 over available heads (all zeros when none is available)."""
    if use_uncertainty:
        raw = torch.exp(-bounded(log_vars)).unsqueeze(0) * confidence(probs)
    else:
        raw = torch.ones(probs.shape[:2], device=probs.device, dtype=probs.dtype)
    raw = raw * available.to(raw.dtype)
    total = raw.sum(-1, keepdim=True)
    return torch.where(total > 0, raw / total.clamp_min(1e-12), torch.zeros_like(raw))


def combine(probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mixture of head distributions; uniform where no head is available."""
    mixed = (weights.unsqueeze(-1) * probs).sum(1)
    uniform = torch.full_like(mixed, 1.0 / probs.shape[-1])
    return torch.where(weights.sum(-1, keepdim=True) > 0, mixed, uniform)


def uncertainty_loss(
    logits: torch.Tensor,  # (B, H, K)
    target: torch.Tensor,  # (B,) class indices
    available: torch.Tensor,  # (B, H) bool
    log_vars: torch.Tensor,  # (H,)
    use_uncertainty: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (total loss, per-head mean CE (H,)); each head's CE averages its available samples."""
    b, h, k = logits.shape
    ce = F.cross_entropy(logits.reshape(b * h, k), target.repeat_interleave(h), reduction="none").view(b, h)
    avail = available.to(ce.dtype)
    per_head = (ce * avail).sum(0) / avail.sum(0).clamp_min(1.0)
    present = avail.sum(0) > 0
    if use_uncertainty:
        s = bounded(log_vars)
        terms = torch.exp(-s) * per_head + s
    else:
        terms = per_head
    return (terms * present.to(terms.dtype)).sum(), per_head.detach()
