"""Backbone factory and the two feature paths the fusion model needs.

`create_backbone` maps (name, pretrained) to a frozen image + text tower pair behind one interface
(`Backbone`: image embeddings, token-level text states + mask + pooling index, tokenizer, logit
scale / bias). open_clip models (`ClipBackbone`) the way open_clip's own factory does: a hub tag,
a local checkpoint file or directory, or the literal ``random`` (explicit opt-in: same
architecture and compute, random weights). `vision.model: hf:<dir or hub id>` (or a local
transformers directory) loads a transformers CLIPModel / SiglipModel instead (`models.hf_backbone`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator, Optional

import open_clip
import torch

from .config import VisionConfig
from .errors import UserError, WeightsUnavailable, one_line
from .towers import RANDOM, Backbone, ImagePreprocess, TextStates, TextTokenizer, _hub_offline, _hub_reachable

# The interface lives in models.towers (shared with models.hf_backbone); re-exported for callers of this module.
__all__ = ["RANDOM", "Backbone", "ClipBackbone", "ImagePreprocess", "TextStates", "TextTokenizer", "create_backbone",
           "hf_checkpoint", "resolve_device", "resolve_dtype", "weights_fingerprint"]

log = logging.getLogger(__name__)

_register_lock = threading.Lock()


def _quiet_open_clip(record: logging.LogRecord) -> bool:
    # open_clip warns through the root logger when it builds random weights (we say so ourselves)
    # and logs download failures as errors (we raise one clear line instead).
    return not any(m in record.getMessage() for m in ("No pretrained weights loaded", "Failed to download weights"))


@contextlib.contextmanager
def _open_clip_logs_filtered() -> Iterator[None]:
    root = logging.getLogger()
    root.addFilter(_quiet_open_clip)
    try:
        yield
    finally:
        root.removeFilter(_quiet_open_clip)


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"bad device '{spec}': use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{spec}' asked for but no CUDA GPU is available (use --set vision.device=cpu)")
    return device


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def _register_arch(name: str, arch: dict[str, Any]) -> None:
    """Make an architecture given as config data known to open_clip under `name`."""
    with _register_lock:
        if open_clip.get_model_config(name) == arch:
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.json"
            path.write_text(json.dumps(arch))
            open_clip.add_model_config(path)


def _create(cfg: VisionConfig, device: torch.device) -> tuple[torch.nn.Module, str]:
    """Returns the model and the weights kind ("pretrained" or "random")."""
    if cfg.arch is not None:
        _register_arch(cfg.model, cfg.arch)
    pretrained = cfg.pretrained
    kwargs: dict[str, Any] = dict(device=device, pretrained_text=False, cache_dir=cfg.cache_dir)
    if pretrained == RANDOM:
        if cfg.model not in open_clip.list_models():
            raise UserError(f"unknown CLIP model '{cfg.model}' (see open_clip.list_models(), or give vision.arch)")
        # Seeded so "random" is the same network every run: a checkpoint trained on it stays valid.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return open_clip.create_model(cfg.model, pretrained=None, **kwargs), RANDOM
    local = Path(pretrained).expanduser()
    if local.is_dir():
        if not (local / "open_clip_config.json").is_file():
            raise WeightsUnavailable(f"CLIP weights dir {local} has no open_clip_config.json (expected an open_clip/HF hub snapshot)")
        try:
            return open_clip.create_model(f"local-dir:{local}", **kwargs), "pretrained"
        except Exception as exc:  # open_clip raises several types for bad dirs
            raise WeightsUnavailable(f"could not load CLIP weights from {local}: {str(exc).splitlines()[0]}") from None
    looks_like_path = any(c in pretrained for c in "/\\") or pretrained.startswith(("~", "."))
    if local.suffix in {".pt", ".pth", ".bin", ".safetensors"} or local.exists() or looks_like_path:
        if not local.is_file():
            raise WeightsUnavailable(f"CLIP weights file or dir not found: {local}")
    elif cfg.model in open_clip.list_models() and pretrained not in open_clip.list_pretrained_tags_by_model(cfg.model):
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(cfg.model)) or "none"
        raise UserError(f"unknown pretrained tag '{pretrained}' for {cfg.model} (known: {tags}; or a local file/dir, or 'random')")
    if cfg.model not in open_clip.list_models():
        raise UserError(f"unknown CLIP model '{cfg.model}' (see open_clip.list_models(), or give vision.arch)")
    online = local.is_file() or _hub_reachable()
    try:
        with _hub_offline(not online):
            model = open_clip.create_model(cfg.model, pretrained=str(local) if local.is_file() else pretrained, **kwargs)
    except Exception as exc:
        reason = "the hub is unreachable (offline?) and they are not cached" if not online else one_line(exc, 140)
        raise WeightsUnavailable(
            f"CLIP weights '{cfg.model}/{pretrained}' could not be loaded: {reason}. Either go online once so "
            f"open_clip downloads and caches them, or pass a local file/dir with --set vision.pretrained=/path "
            f"(for latency work only: --set vision.pretrained=random)"
        ) from None
    return model, "pretrained"


def _reparameterize(visual: torch.nn.Module) -> int:
    """Fold train-time branches (MobileOne / FastViT blocks of MobileCLIP towers) into single convs,
    in place, as the towers are meant to run at inference; returns how many blocks were folded."""
    folded = sum(1 for m in visual.modules() if hasattr(m, "reparameterize") or hasattr(m, "switch_to_deploy"))
    if folded:
        from timm.utils.model import reparameterize_model

        reparameterize_model(visual, inplace=True)
    return folded


class ClipBackbone(Backbone):
    """A frozen open_clip model (CLIP, SigLIP, MobileCLIP: any with an open_clip text transformer)."""

    def __init__(self, clip: torch.nn.Module, tokenizer: TextTokenizer, preprocess: ImagePreprocess, device: torch.device,
                 dtype: torch.dtype, weights: str, name: str = ""):
        text = getattr(clip, "text", clip)  # CustomTextCLIP keeps its text tower apart
        proj = text.text_projection
        embed_dim = proj.shape[1] if isinstance(proj, torch.Tensor) else proj.out_features
        bias = getattr(clip, "logit_bias", None)
        super().__init__(name, preprocess, tokenizer, embed_dim, float(clip.logit_scale.exp().item()),
                         None if bias is None else float(bias.item()), device, dtype, weights)
        self.clip = clip.eval().requires_grad_(False)
        self.reparameterized = _reparameterize(self.clip.visual)
        self._text = text
        # CLIP's text transformer: causal mask, pooled at EOT, no padding mask or class token.
        self.text_prefix_exact = (getattr(text, "attn_mask", None) is not None and tokenizer.pool == "eot"
                                  and getattr(text, "cls_emb", None) is None and not getattr(text, "use_pad_mask", False))
        self.to(device)
        if dtype != torch.float32:
            self.clip.to(dtype)

    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(pixels)

    def compile_image_tower(self, mode: Optional[str]) -> None:
        self.clip.visual = torch.compile(self.clip.visual, mode=mode, dynamic=True)

    def _text_token_states(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, d) states of token rows (B, T), T <= context length (shorter: a causal tower's prefix)."""
        t = self._text
        n = tokens.shape[1]
        if self.text_prefix_exact or not hasattr(t, "_embeds"):  # embeddings and causal mask cut to T
            cast = t.transformer.get_cast_dtype()
            x = t.token_embedding(tokens).to(cast) + t.positional_embedding[:n].to(cast)
            attn_mask = None if t.attn_mask is None else t.attn_mask[:n, :n]
        else:  # open_clip TextTransformer with a padding mask or class token: full rows
            x, attn_mask = t._embeds(tokens)
        x = t.ln_final(t.transformer(x, attn_mask=attn_mask))
        proj = t.text_projection
        return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


def _open_clip_text_tokenizer(cfg: VisionConfig, clip: torch.nn.Module, weights: str) -> TextTokenizer:
    text = getattr(clip, "text", clip)
    if not hasattr(text, "token_embedding") or getattr(text, "cls_emb", None) is not None:
        raise UserError(f"CLIP model '{cfg.model}' has a text tower sentistream cannot read token states from "
                        f"(it needs an open_clip text transformer); choose another model or a transformers checkpoint (hf:...)")
    pool = {"argmax": "eot", "eos": "eot"}.get(getattr(text, "pool_type", getattr(clip, "text_pool_type", "argmax")))
    pool = pool or getattr(text, "pool_type", "argmax")
    context = int(getattr(text, "context_length", None) or getattr(clip, "context_length", 77))
    if cfg.arch is not None:
        return TextTokenizer.clip_bpe(open_clip.SimpleTokenizer(), context, pool)
    try:
        with _hub_offline(not _hub_reachable()):
            tok = open_clip.get_tokenizer(cfg.model, cache_dir=cfg.cache_dir)
    except Exception as exc:  # the hub tokenizers (SigLIP's) are downloaded on first use
        if weights != RANDOM:
            raise WeightsUnavailable(f"the tokenizer of '{cfg.model}' could not be loaded ({one_line(exc, 100)}): "
                                     f"go online once so it is cached") from None
        # Random weights are for latency work: any ids inside the vocabulary cost the same.
        log.warning("tokenizer of %s not cached: random weights, so the bundled CLIP BPE stands in (same compute)", cfg.model)
        return TextTokenizer.clip_bpe(open_clip.SimpleTokenizer(), context, pool)
    if isinstance(tok, open_clip.SimpleTokenizer):
        return TextTokenizer.clip_bpe(tok, context, pool)
    return TextTokenizer.hf(tok.tokenizer, context, pool, getattr(tok, "clean_fn", None))


def _open_clip_preprocess(cfg: VisionConfig, clip: torch.nn.Module) -> ImagePreprocess:
    pp = dict(open_clip.get_model_preprocess_cfg(clip))
    if cfg.pretrained == RANDOM and cfg.arch is None:
        # Random weights carry no preprocess config: take the tower's published one (same normalisation).
        tags = open_clip.list_pretrained_tags_by_model(cfg.model)
        if tags:
            published = open_clip.get_pretrained_cfg(cfg.model, tags[0])
            pp.update({k: published[k] for k in ("mean", "std", "resize_mode", "interpolation") if k in published})
    return ImagePreprocess.of(pp.get("size", 224), pp.get("mean", open_clip.OPENAI_DATASET_MEAN),
                              pp.get("std", open_clip.OPENAI_DATASET_STD), pp.get("resize_mode"), pp.get("interpolation"))


def create_backbone(cfg: VisionConfig) -> Backbone:
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.precision, device)
    if dtype != torch.float32 and device.type == "cpu":
        raise UserError(f"vision.precision={cfg.precision} is for GPUs; use fp32 or auto on the CPU")
    hf_source = hf_checkpoint(cfg)
    if hf_source is not None:
        from .hf_backbone import create_hf_backbone  # transformers is imported only for these

        return create_hf_backbone(hf_source, cfg, device, dtype)
    with _open_clip_logs_filtered():
        clip, weights = _create(cfg, device)
    tokenizer = _open_clip_text_tokenizer(cfg, clip, weights)
    backbone = ClipBackbone(clip, tokenizer, _open_clip_preprocess(cfg, clip), device, dtype, weights, cfg.model)
    log.info("CLIP %s (%s weights) on %s/%s%s", cfg.model, weights, device, dtype,
             f", {backbone.reparameterized} blocks reparameterised" if backbone.reparameterized else "")
    return backbone


HF_PREFIX = "hf:"


def hf_checkpoint(cfg: VisionConfig) -> Optional[str]:
    """The transformers checkpoint `vision.model` names (`hf:<dir or hub id>`, or a local directory
    holding a transformers config.json), else None (an open_clip model)."""
    if cfg.model.startswith(HF_PREFIX):
        source = cfg.model[len(HF_PREFIX):].strip()
        if not source:
            raise UserError("vision.model=hf: needs a directory or hub id after 'hf:' (e.g. hf:openai/clip-vit-base-patch32)")
        return source
    local = Path(cfg.model).expanduser()
    if local.is_dir() and (local / "config.json").is_file() and not (local / "open_clip_config.json").is_file():
        return str(local)
    return None


def weights_fingerprint(cfg: VisionConfig) -> list[list[Any]]:
    """(name, size, mtime) of the local files the weights come from (a transformers directory, a
    local checkpoint file or directory): what a cache keyed on the config must also follow, since a
    path can be re-saved with other weights. Empty for hub names, tags and `random`."""
    paths = [Path(p).expanduser() for p in ((hf_checkpoint(cfg) or ""), cfg.pretrained) if p and p != RANDOM]
    rows: list[list[Any]] = []
    for path in paths:
        files = sorted(f for f in path.iterdir() if f.is_file()) if path.is_dir() else [path] if path.is_file() else []
        for f in files:
            st = f.stat()
            rows.append([str(f), st.st_size, st.st_mtime_ns])
    return rows
