"""CLIP-CA-MSA fusion: gated bidirectional cross-attention between frame and token features,
three heads (image, text, fused) and uncertainty weighting.

Untrained it is exactly CLIP zero-shot: gates and the time embedding start at 0, and the heads
start from CLIP text embeddings of sentiment prompts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import FusionConfig
from .errors import ConfigError
from .experts import EXPERTS, TEXT_EXPERTS
from .prompts import LABELS
from .uncertainty import HEADS, combine, head_weights

IMAGE, TEXT, FUSED = 0, 1, 2


@dataclass
class FusionInputs:
    image: torch.Tensor  # (B, Tv, d) CLIP image embeddings of the frames in the window
    image_mask: torch.Tensor  # (B, Tv) bool, True = a real frame
    image_age: torch.Tensor  # (B, Tv) seconds between the frame and the window end
    text: torch.Tensor  # (B, Tw, d) CLIP text token states
    text_mask: torch.Tensor  # (B, Tw) bool, all False when there is no transcript
    text_pool: torch.Tensor  # (B,) the text tower's pooling position (CLIP: EOT, SigLIP: last)
    # The experts' probabilities (B, len(EXPERTS), 3) and which of them had evidence (B, len(EXPERTS));
    # None: no expert ran (as if every mask were False).
    experts: Optional[torch.Tensor] = None
    experts_mask: Optional[torch.Tensor] = None


@dataclass
class FusionOutput:
    logits: torch.Tensor  # (B, H heads, 3 classes): image, text, fused, then the experts (their log-probs)
    head_probs: torch.Tensor  # (B, H, 3)
    available: torch.Tensor  # (B, H) bool
    weights: torch.Tensor  # (B, H) head weights, sum 1 over available heads
    probs: torch.Tensor  # (B, 3) final class distribution

    @property
    def modality_weights(self) -> torch.Tensor:
        """(B, 2 + experts) image/text weight (each takes its own head plus half of the fused head),
        then each expert's own."""
        w = self.weights
        half_fused = w[:, FUSED:FUSED + 1] / 2
        return torch.cat([w[:, IMAGE:IMAGE + 1] + half_fused, w[:, TEXT:TEXT + 1] + half_fused, w[:, FUSED + 1:]], dim=-1)


class GatedCrossAttention(nn.Module):
    """x + tanh(g_a) * Attn(LN x, LN kv) then + tanh(g_f) * FFN; gates start at 0 (Flamingo-style)."""

    def __init__(self, dim: int, heads: int, ffn_mult: int, dropout: float):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim * ffn_mult), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim * ffn_mult, dim))
        self.gate_attn = nn.Parameter(torch.zeros(1))
        self.gate_ffn = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, kv: torch.Tensor, kv_mask: torch.Tensor) -> torch.Tensor:
        has_kv = kv_mask.any(dim=1)
        # A sample with nothing to attend to gets no update (softmax over all-masked keys is NaN).
        safe_mask = kv_mask | ~has_kv.unsqueeze(1)
        attended, _ = self.attn(self.norm_q(x), self.norm_kv(kv), self.norm_kv(kv), key_padding_mask=~safe_mask, need_weights=False)
        keep = has_kv.to(x.dtype).view(-1, 1, 1)
        x = x + torch.tanh(self.gate_attn) * attended * keep
        return x + torch.tanh(self.gate_ffn) * self.ffn(self.norm_ffn(x)) * keep


class CrossModalLayer(nn.Module):
    """One layer of image<-text and text<-image cross-attention, both from the layer's inputs."""

    def __init__(self, dim: int, heads: int, ffn_mult: int, dropout: float):
        super().__init__()
        self.image_from_text = GatedCrossAttention(dim, heads, ffn_mult, dropout)
        self.text_from_image = GatedCrossAttention(dim, heads, ffn_mult, dropout)

    def forward(self, v, v_mask, w, w_mask):
        return self.image_from_text(v, w, w_mask), self.text_from_image(w, v, v_mask)


class TimeEmbedding(nn.Module):
    """Sinusoidal features of a frame's age in the window, projected; output starts at 0."""

    def __init__(self, dim: int, n_freq: int = 8, max_period: float = 16.0):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi / max_period * 2.0 ** torch.arange(n_freq), persistent=False)
        self.proj = nn.Linear(2 * n_freq, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, age: torch.Tensor) -> torch.Tensor:
        angles = age.unsqueeze(-1) * self.freqs
        return self.proj(torch.cat([angles.sin(), angles.cos()], dim=-1))


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


class ClipCaMsa(nn.Module):
    """The fusion model on top of frozen CLIP features."""

    def __init__(self, dim: int, cfg: FusionConfig, prompt_embeddings: torch.Tensor, logit_scale: float, logit_bias: float = 0.0):
        super().__init__()
        if dim % cfg.heads:
            fits = [h for h in range(1, min(dim, 64) + 1) if dim % h == 0]
            raise ConfigError(f"model.heads={cfg.heads} must divide the CLIP embedding size {dim} "
                              f"(use one of {', '.join(map(str, fits))})")
        self.cfg = cfg
        self.dim = dim
        self.time = TimeEmbedding(dim) if cfg.time_embedding else None
        self.layers = nn.ModuleList(CrossModalLayer(dim, cfg.heads, cfg.ffn_mult, cfg.dropout) for _ in range(cfg.layers))
        self.image_head = nn.Linear(dim, len(LABELS))
        self.text_head = nn.Linear(dim, len(LABELS))
        self.fused_head = nn.Linear(2 * dim, len(LABELS))
        self.log_vars = nn.Parameter(torch.zeros(len(HEADS)))  # s_m = log sigma_m^2 of the CLIP heads
        self.expert_log_vars = nn.Parameter(torch.zeros(len(EXPERTS)))  # ... and of the experts' heads
        # False: the CLIP heads never weigh in (random CLIP weights: their features carry no sentiment).
        self.clip_heads = True
        self.init_zero_shot(prompt_embeddings, logit_scale, logit_bias)

    @torch.no_grad()
    def init_zero_shot(self, prompt_embeddings: torch.Tensor, logit_scale: float, logit_bias: float = 0.0) -> None:
        """Head weights = scaled, normalised prompt embeddings, biases = the tower's logit bias
        (SigLIP; 0 for CLIP): logits are the tower's zero-shot pair logits (see factory.ZeroShot)."""
        p = F.normalize(prompt_embeddings.float(), dim=-1) * logit_scale
        self.image_head.weight.copy_(p)
        self.text_head.weight.copy_(p)
        self.fused_head.weight.copy_(torch.cat([p, p], dim=1) / 2)
        for head in (self.image_head, self.text_head, self.fused_head):
            head.bias.fill_(logit_bias)

    def forward(self, x: FusionInputs) -> FusionOutput:
        v, v_mask, w, w_mask = x.image, x.image_mask, x.text, x.text_mask
        if self.cfg.modalities == "text":
            v_mask = torch.zeros_like(v_mask)
        elif self.cfg.modalities == "image":
            w_mask = torch.zeros_like(w_mask)
        if self.time is not None:
            v = v + self.time(x.image_age)
        for layer in self.layers:
            v, w = layer(v, v_mask, w, w_mask)
        image_pool = F.normalize(_masked_mean(v, v_mask), dim=-1)
        text_pool = F.normalize(w[torch.arange(w.shape[0], device=w.device), x.text_pool], dim=-1)
        logits = torch.stack(
            [self.image_head(image_pool), self.text_head(text_pool), self.fused_head(torch.cat([image_pool, text_pool], -1))],
            dim=1,
        )
        has_image, has_text = v_mask.any(1), w_mask.any(1)
        available = torch.stack([has_image, has_text, has_image & has_text], dim=1) & self.clip_heads
        head_probs = logits.softmax(-1)
        if self.cfg.use_experts and x.experts is not None and x.experts_mask is not None:
            e = x.experts.to(logits.dtype).clamp_min(1e-6)
            e = e / e.sum(-1, keepdim=True)
            e_mask = x.experts_mask.clone()
            if self.cfg.modalities != "both":  # single-modality ablations: the other modality's experts are out too
                out = ("expression",) if self.cfg.modalities == "text" else TEXT_EXPERTS
                e_mask[:, [EXPERTS.index(name) for name in out]] = False
            logits = torch.cat([logits, e.log()], dim=1)
            head_probs = torch.cat([head_probs, e], dim=1)
            available = torch.cat([available, e_mask], dim=1)
        weights = head_weights(head_probs, self.head_log_vars[: head_probs.shape[1]], available, self.cfg.uncertainty)
        return FusionOutput(logits, head_probs, available, weights, combine(head_probs, weights))

    @property
    def head_log_vars(self) -> torch.Tensor:
        """(3 + experts,) log-variances of every head, in head order."""
        return torch.cat([self.log_vars, self.expert_log_vars])
