"""Name/path -> ready model: backbone + fusion (+ checkpoint), like open_clip's factory."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from .backbone import Backbone, create_backbone
from .checkpoint import load_checkpoint
from .config import ModelConfig
from .errors import UserError
from .experts import EXPERTS, TextExpert, create_face_expert, create_text_experts
from .fusion import ClipCaMsa
from .onnx_backend import resolve_backend, use_onnx
from .prompts import LABELS, PROMPTS

log = logging.getLogger(__name__)


@dataclass
class SentimentModel:
    backbone: Backbone
    fusion: ClipCaMsa
    weights: str  # "pretrained" | "random": what the backbone carries
    checkpoint: Optional[str] = None
    text_experts: dict[str, TextExpert] = field(default_factory=dict)  # by head name: experts.text, experts.sentence
    face_expert: Optional[Any] = None  # experts.face: models.experts.expression.ExpressionModel

    @property
    def device(self) -> torch.device:
        return self.backbone.device


def prompt_embeddings(backbone: Backbone) -> torch.Tensor:
    """(3, d): the mean normalised text embedding (the tower's own pooling) of each class's prompts."""
    rows = []
    for label in LABELS:
        emb = torch.nn.functional.normalize(backbone.encode_prompts(PROMPTS[label]), dim=-1)
        rows.append(emb.mean(0))
    return torch.stack(rows)


@dataclass(frozen=True)
class ZeroShot:
    """What a new fusion model starts from (heads = the tower's zero-shot classifier): the
    backbone's width, its prompt embeddings, logit scale and logit bias. From a live backbone, or
    from cached training features.

    SigLIP towers score a pair with sigmoid(scale * cos + bias). The heads keep that logit (the
    bias goes into every class's head bias) but classify with a softmax over the three classes,
    like every head here: the classes are exclusive and the uncertainty fusion needs a
    distribution. A bias shared by all classes cancels in the softmax, so the zero-shot class
    probabilities are softmax(scale * cos) for CLIP and SigLIP alike; the bias only keeps each
    logit equal to the tower's own pair logit (sigmoid(logit) = SigLIP's match probability)."""

    embed_dim: int
    prompts: torch.Tensor  # (3, d)
    logit_scale: float
    logit_bias: float = 0.0

    @classmethod
    def of(cls, backbone: Backbone) -> "ZeroShot":
        return cls(backbone.embed_dim, prompt_embeddings(backbone).cpu(), backbone.logit_scale, backbone.logit_bias or 0.0)


def build_fusion(zero_shot: ZeroShot | Backbone, cfg: ModelConfig) -> ClipCaMsa:
    """The one constructor of the fusion model (on the backbone's device in eval mode when given one)."""
    init = zero_shot if isinstance(zero_shot, ZeroShot) else ZeroShot.of(zero_shot)
    fusion = ClipCaMsa(init.embed_dim, cfg.model, init.prompts, init.logit_scale, init.logit_bias)
    return fusion.to(zero_shot.device).eval() if isinstance(zero_shot, Backbone) else fusion


def clip_heads_on(setting: str, weights: str) -> bool:
    """experts.clip_heads: auto = on unless the CLIP weights are random."""
    return setting == "on" or (setting == "auto" and weights != "random")


def build_model(cfg: ModelConfig, backbone: Optional[Backbone] = None) -> SentimentModel:
    backbone = backbone or create_backbone(cfg.vision)
    if resolve_backend(cfg.vision, backbone) == "onnx" and backbone.backend == "torch":
        try:
            use_onnx(backbone, cfg.vision)
        except UserError as exc:
            if cfg.vision.backend == "onnx":
                raise
            log.warning("vision.backend=auto: %s; the CLIP towers stay on torch", str(exc).removeprefix("vision.backend=onnx: "))
    elif cfg.vision.quantize != "none" and backbone.backend == "torch":
        log.warning("vision.quantize=%s applies to the onnx backend on a CPU only; the CLIP towers run unquantised on torch",
                    cfg.vision.quantize)
    fusion = build_fusion(backbone, cfg)
    if cfg.model.checkpoint:
        load_checkpoint(cfg.model.checkpoint, fusion, cfg, backbone.embed_dim)
        fusion.to(backbone.device)
        log.info("loaded fusion checkpoint %s", cfg.model.checkpoint)
    text_experts = create_text_experts(cfg.experts.text, cfg.experts.sentence, str(backbone.device))
    if not cfg.model.checkpoint:  # untrained: the experts' measured log-variances (a checkpoint has learned ones)
        with torch.no_grad():
            for head, expert in text_experts.items():
                fusion.expert_log_vars[EXPERTS.index(head)] = float(getattr(expert, "log_variance", 0.0))
    fusion.clip_heads = clip_heads_on(cfg.experts.clip_heads, backbone.weights)
    if not fusion.clip_heads:
        log.info("experts.clip_heads=%s: the CLIP heads carry no weight (CLIP weights: %s)", cfg.experts.clip_heads, backbone.weights)
    return SentimentModel(backbone, fusion, backbone.weights, cfg.model.checkpoint, text_experts,
                          create_face_expert(cfg.experts.face, str(backbone.device)))
