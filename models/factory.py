"""Name/path -> ready model: backbone + fusion (+ checkpoint), like open_clip's factory."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch

from .backbone import ClipBackbone, create_backbone
from .checkpoint import load_checkpoint
from .config import ModelConfig
from .fusion import ClipCaMsa
from .onnx_backend import use_onnx
from .prompts import LABELS, PROMPTS

log = logging.getLogger(__name__)


@dataclass
class SentimentModel:
    backbone: ClipBackbone
    fusion: ClipCaMsa
    weights: str  # "pretrained" | "random": what the CLIP backbone carries
    checkpoint: Optional[str] = None

    @property
    def device(self) -> torch.device:
        return self.backbone.device


def prompt_embeddings(backbone: ClipBackbone) -> torch.Tensor:
    """(3, d): the mean normalised CLIP text embedding of each class's prompts."""
    rows = []
    for label in LABELS:
        emb = torch.nn.functional.normalize(backbone.encode_prompts(PROMPTS[label]), dim=-1)
        rows.append(emb.mean(0))
    return torch.stack(rows)


@dataclass(frozen=True)
class ZeroShot:
    """What a new fusion model starts from (heads = CLIP zero-shot): the backbone's width, its
    prompt embeddings and logit scale. From a live backbone, or from cached training features."""

    embed_dim: int
    prompts: torch.Tensor  # (3, d)
    logit_scale: float

    @classmethod
    def of(cls, backbone: ClipBackbone) -> "ZeroShot":
        scale = float(backbone.clip.logit_scale.exp().item())
        return cls(backbone.embed_dim, prompt_embeddings(backbone).cpu(), scale)


def build_fusion(zero_shot: ZeroShot | ClipBackbone, cfg: ModelConfig) -> ClipCaMsa:
    """The one constructor of the fusion model (on the backbone's device in eval mode when given one)."""
    init = zero_shot if isinstance(zero_shot, ZeroShot) else ZeroShot.of(zero_shot)
    fusion = ClipCaMsa(init.embed_dim, cfg.model, init.prompts, init.logit_scale)
    return fusion.to(zero_shot.device).eval() if isinstance(zero_shot, ClipBackbone) else fusion


def build_model(cfg: ModelConfig, backbone: Optional[ClipBackbone] = None) -> SentimentModel:
    backbone = backbone or create_backbone(cfg.vision)
    if cfg.vision.backend == "onnx" and backbone.backend != "onnx":
        use_onnx(backbone, cfg.vision)
    fusion = build_fusion(backbone, cfg)
    if cfg.model.checkpoint:
        load_checkpoint(cfg.model.checkpoint, fusion, cfg, backbone.embed_dim)
        fusion.to(backbone.device)
        log.info("loaded fusion checkpoint %s", cfg.model.checkpoint)
    return SentimentModel(backbone, fusion, backbone.weights, cfg.model.checkpoint)
