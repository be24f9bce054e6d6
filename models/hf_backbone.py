"""transformers checkpoints (CLIPModel, SiglipModel) behind the `Backbone` interface.

`vision.model: hf:<dir or hub id>` (or a local directory with a transformers config.json) selects
this loader. Everything that differs between towers comes from the checkpoint: embedding width
(`projection_dim` / the text head), image size and normalisation (its image processor config,
else the model config and the family's defaults), tokenizer and context length, pooling (CLIP:
the EOS position; SigLIP: the last position, sequences padded to the full length), logit scale
and bias. transformers is imported only here, so open_clip users never load it.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import torch

from .config import VisionConfig
from .errors import UserError, WeightsUnavailable, one_line
from .towers import RANDOM, Backbone, ImagePreprocess, TextTokenizer, _hub_offline, _hub_reachable

log = logging.getLogger(__name__)

# Per family: default normalisation, how the processor fits a frame, where the text tower pools.
_FAMILIES: dict[str, dict[str, Any]] = {
    "clip": {"mean": (0.48145466, 0.4578275, 0.40821073), "std": (0.26862954, 0.26130258, 0.27577711),
             "resize_mode": "shortest", "pool": "eot", "resample": 3},
    "siglip": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "resize_mode": "squash", "pool": "last", "resample": 2},
}


def _family(model_type: str) -> str:
    if model_type in ("clip", "siglip"):
        return model_type
    raise UserError(f"transformers checkpoint has model_type '{model_type}': sentistream reads CLIPModel (clip) "
                    f"and SiglipModel (siglip) checkpoints")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}


class HfBackbone(Backbone):
    """A frozen transformers CLIPModel or SiglipModel."""

    def __init__(self, model: torch.nn.Module, family: str, tokenizer: TextTokenizer, preprocess: ImagePreprocess,
                 device: torch.device, dtype: torch.dtype, weights: str, name: str):
        if family == "clip":
            embed_dim = model.text_projection.out_features
            bias = None
        else:
            embed_dim = model.text_model.head.out_features
            bias = float(model.logit_bias.item())
        super().__init__(name, preprocess, tokenizer, embed_dim, float(model.logit_scale.exp().item()), bias, device, dtype, weights)
        self.family = family
        self.hf = model.eval().requires_grad_(False)
        # transformers CLIP: causal, pooled at EOS (SigLIP attends both ways and pools the last position).
        self.text_prefix_exact = family == "clip" and tokenizer.pool == "eot"
        self.to(device)
        if dtype != torch.float32:
            self.hf.to(dtype)

    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.hf.get_image_features(pixel_values=pixels)
        return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5 returns an output object

    def compile_image_tower(self, mode: Optional[str]) -> None:
        self.hf.vision_model = torch.compile(self.hf.vision_model, mode=mode, dynamic=True)
        if self.family == "clip":
            self.hf.visual_projection = torch.compile(self.hf.visual_projection, mode=mode, dynamic=True)

    def _text_token_states(self, tokens: torch.Tensor) -> torch.Tensor:
        # No attention mask, as both families run: CLIP is causal (padding after EOS never reaches
        # it), SigLIP was trained on sequences padded to full length and pools the last position.
        hidden = self.hf.text_model(input_ids=tokens).last_hidden_state
        if self.family == "clip":
            return self.hf.text_projection(hidden)
        return self.hf.text_model.head(hidden)


def _preprocess(source: Path | None, config: Any, family: str) -> ImagePreprocess:
    """The image processor's size / mean / std / fitting, from preprocessor_config.json when the
    checkpoint has one, else from the vision config and the family's defaults."""
    defaults = _FAMILIES[family]
    pp = _read_json(source / "preprocessor_config.json") if source is not None else {}
    size: Any = config.vision_config.image_size
    crop = pp.get("crop_size")
    if pp.get("do_center_crop", family == "clip") and crop:
        size = (crop["height"], crop["width"]) if isinstance(crop, dict) else crop
        mode = "shortest"
    elif isinstance(pp.get("size"), dict) and "height" in pp["size"]:
        size, mode = (pp["size"]["height"], pp["size"]["width"]), "squash"
    else:
        mode = defaults["resize_mode"]
    # The processor's PIL resample code (2 bilinear, 3 bicubic); the family's default without one.
    interpolation = {2: "bilinear", 3: "bicubic"}.get(pp.get("resample", defaults["resample"]), "bicubic")
    return ImagePreprocess.of(size, pp.get("image_mean", defaults["mean"]), pp.get("image_std", defaults["std"]), mode,
                              interpolation)


def _load(source: str, local: Optional[Path], cfg: VisionConfig, device: torch.device) -> tuple[torch.nn.Module, Any, Optional[Path], str]:
    """(model, tokenizer, local snapshot dir or None, family)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    where = str(local) if local is not None else source
    online = local is not None or _hub_reachable()
    try:
        with _hub_offline(not online):
            config = AutoConfig.from_pretrained(where, cache_dir=cfg.cache_dir)
            family = _family(config.model_type)
            if cfg.pretrained == RANDOM:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    model = AutoModel.from_config(config)
            else:
                model = AutoModel.from_pretrained(where, cache_dir=cfg.cache_dir)
            tokenizer = AutoTokenizer.from_pretrained(where, cache_dir=cfg.cache_dir)
            snapshot = local
            if snapshot is None:  # the cached hub snapshot: where its preprocessor_config.json is
                from huggingface_hub import try_to_load_from_cache

                found = try_to_load_from_cache(source, "config.json", cache_dir=cfg.cache_dir)
                snapshot = Path(found).parent if isinstance(found, str) else None
    except UserError:
        raise
    except Exception as exc:  # transformers raises OSError/ValueError/hub errors for missing or bad checkpoints
        reason = "the hub is unreachable (offline?) and it is not cached" if not online else one_line(exc, 140)
        raise WeightsUnavailable(
            f"transformers checkpoint '{source}' could not be loaded: {reason}. Either go online once so it is "
            f"downloaded and cached, or pass a local directory saved with save_pretrained (vision.model=hf:/path)"
        ) from None
    return model.to(device), tokenizer, snapshot, family


def create_hf_backbone(source: str, cfg: VisionConfig, device: torch.device, dtype: torch.dtype) -> HfBackbone:
    if cfg.arch is not None:
        raise UserError("vision.arch is for open_clip models; a transformers checkpoint brings its own config (drop vision.arch)")
    local = Path(source).expanduser()
    looks_like_path = source.startswith(("/", "~", ".")) or local.exists()
    if looks_like_path and not (local / "config.json").is_file():
        raise WeightsUnavailable(f"transformers checkpoint dir {local} not found or has no config.json "
                                 f"(expected a directory written by save_pretrained)")
    model, tok, snapshot, family = _load(source, local if looks_like_path else None, cfg, device)
    text_cfg = model.config.text_config
    context = int(getattr(tok, "model_max_length", 0) or 0)
    context = min(context, text_cfg.max_position_embeddings) if 0 < context < 10**6 else text_cfg.max_position_embeddings
    tokenizer = TextTokenizer.hf(tok, context, _FAMILIES[family]["pool"])
    weights = RANDOM if cfg.pretrained == RANDOM else "pretrained"
    backbone = HfBackbone(model, family, tokenizer, _preprocess(snapshot, model.config, family), device, dtype, weights, f"hf:{source}")
    log.info("transformers %s %s (%s weights) on %s/%s", type(model).__name__, source, weights, device, dtype)
    return backbone
