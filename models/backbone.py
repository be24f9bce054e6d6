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
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from .config import VisionConfig
from .errors import UserError, WeightsUnavailable, one_line

log = logging.getLogger(__name__)

RANDOM = "random"
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


def _hub_reachable(host: str = "huggingface.co") -> bool:
    """DNS only: fails at once offline, where the hub client would retry for half a minute."""
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Offline mode for the hub client: a cached copy still loads, a missing one fails fast."""
    if not offline:
        yield
        return
    import huggingface_hub.constants as hf_constants

    before = hf_constants.HF_HUB_OFFLINE
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = before


@dataclass
class TextStates:
    """Token-level text states in the joint embedding space, with a validity mask."""

    states: torch.Tensor  # (B, T, d), projected with the tower's text projection
    mask: torch.Tensor  # (B, T) bool, True = a real token (specials included) or the pooling position
    pooled_index: torch.Tensor  # (B,) the tower's own pooling position (CLIP: EOT; SigLIP: the last one)


@dataclass(frozen=True)
class ImagePreprocess:
    """What a tower expects of an image: input size, normalisation and how the frame is fitted.
    Read from the model (open_clip's preprocess config, a transformers image processor)."""

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_mode: str = "shortest"  # shortest: shorter side to size + centre crop (CLIP) | squash: straight to size (SigLIP)

    @classmethod
    def of(cls, size: Any, mean: Sequence[float], std: Sequence[float], resize_mode: Optional[str] = None) -> "ImagePreprocess":
        hw = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
        return cls(hw, tuple(float(v) for v in mean), tuple(float(v) for v in std),  # type: ignore[arg-type]
                   "squash" if resize_mode == "squash" else "shortest")


POOLS = ("eot", "last", "first")


class TextTokenizer:
    """Text -> fixed-length id rows the way a tower was trained: the tokenizer's leading special
    tokens, the text's ids, its trailing ones, padding. Long texts keep their *latest* ids (what
    was said last matters most live). `pool` is where the tower pools its sentence embedding:
    `eot` the end of the sequence (CLIP), `last` the last position (SigLIP), `first`."""

    def __init__(self, encode: Callable[[str], list[int]], prefix: Sequence[int], suffix: Sequence[int],
                 pad_id: int, context_length: int, pool: str):
        if pool not in POOLS:
            raise ValueError(f"unknown text pooling '{pool}' (known: {', '.join(POOLS)})")
        self.encode = encode
        self.prefix, self.suffix = list(prefix), list(suffix)
        self.pad_id = int(pad_id)
        self.context_length = int(context_length)
        self.pool = pool
        self.max_tokens = self.context_length - len(self.prefix) - len(self.suffix)
        if self.max_tokens < 1:
            raise ValueError(f"context length {context_length} leaves no room for text")

    @classmethod
    def clip_bpe(cls, tokenizer: Any, context_length: int, pool: str = "eot") -> "TextTokenizer":
        """open_clip's SimpleTokenizer (the CLIP BPE): <sot> ids <eot>, zero padding."""
        return cls(tokenizer.encode, [tokenizer.sot_token_id], [tokenizer.eot_token_id], 0, context_length, pool)

    @classmethod
    def hf(cls, tokenizer: Any, context_length: int, pool: str, clean: Optional[Callable[[str], str]] = None) -> "TextTokenizer":
        """A transformers tokenizer: its special tokens found by encoding a probe with and without them."""
        clean = clean or (lambda t: t)

        def encode(text: str) -> list[int]:
            return list(tokenizer(clean(text), add_special_tokens=False)["input_ids"])

        plain, full = encode("a photo"), list(tokenizer(clean("a photo"))["input_ids"])
        at = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), None)
        prefix, suffix = (full[:at], full[at + len(plain):]) if at is not None else ([], [])
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (suffix[-1] if suffix else 0)
        return cls(encode, prefix, suffix, pad, context_length, pool)

    def __call__(self, texts: Sequence[str], max_tokens: Optional[int] = None) -> torch.Tensor:
        limit = min(max_tokens or self.max_tokens, self.max_tokens)
        rows = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = self.encode(text)[-limit:] if text else []
            seq = [*self.prefix, *ids, *self.suffix]
            rows[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return rows

    def layout(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask, pooled_index) of token rows this tokenizer made: the mask covers the sequence
        (specials included) and the pooling position."""
        n, t = tokens.shape
        positions = torch.arange(t, device=tokens.device).unsqueeze(0)
        if self.suffix:  # the sequence ends at the first closing token (pad may equal it: SigLIP)
            after_prefix = positions >= len(self.prefix)
            end = ((tokens == self.suffix[-1]) & after_prefix).int().argmax(dim=-1)
        else:  # the last non-padding position
            end = torch.where(tokens != self.pad_id, positions, torch.zeros_like(positions)).amax(dim=-1)
        pooled = {"eot": end, "last": torch.full_like(end, t - 1), "first": torch.zeros_like(end)}[self.pool]
        mask = (positions <= end.unsqueeze(1)) | (positions == pooled.unsqueeze(1))
        return mask, pooled


class Backbone(torch.nn.Module):
    """A frozen image + text tower pair with tensor-only preprocessing on its device. What differs
    between towers is read from the model: embedding width, image size / normalisation / fitting,
    tokenizer and context length, pooling, logit scale and bias. Subclasses supply the two
    forward passes (`_encode_pixels`, `_text_token_states`) and the image tower for compile."""

    logit_bias: Optional[float]  # SigLIP: sigmoid(scale * cos + bias) is its pair probability; CLIP: None

    def __init__(self, name: str, preprocess: ImagePreprocess, tokenizer: TextTokenizer, embed_dim: int,
                 logit_scale: float, logit_bias: Optional[float], device: torch.device, dtype: torch.dtype, weights: str):
        super().__init__()
        self.name = name
        self.image_cfg = preprocess
        self.image_size = preprocess.size
        self.tokenizer = tokenizer
        self.context_length = tokenizer.context_length
        self.embed_dim = int(embed_dim)
        self.logit_scale = float(logit_scale)
        self.logit_bias = None if logit_bias is None else float(logit_bias)
        self.device = device
        self.dtype = dtype
        self.weights = weights
        self.register_buffer("mean", torch.tensor(preprocess.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(preprocess.std).view(1, 3, 1, 1))

    @property
    def sot(self) -> Optional[int]:
        return self.tokenizer.prefix[0] if self.tokenizer.prefix else None

    @property
    def eot(self) -> Optional[int]:
        return self.tokenizer.suffix[-1] if self.tokenizer.suffix else None

    # ---------- images ----------
    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) RGB -> normalised (B, 3, H', W') as the tower expects, all tensor ops:
        shorter side to size + centre crop, or straight to size (`squash`, SigLIP)."""
        x = frames.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        h, w = x.shape[-2:]
        th, tw = self.image_size
        if self.image_cfg.resize_mode == "squash":
            x = F.interpolate(x, size=(th, tw), mode="bilinear", antialias=True, align_corners=False)
        else:
            scale = max(th / h, tw / w)
            nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
            top, left = (nh - th) // 2, (nw - tw) // 2
            x = x[:, :, top : top + th, left : left + tw]
        return ((x - self.mean) / self.std).to(self.dtype)

    @staticmethod
    def _as_batch(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
        return t.unsqueeze(0) if t.ndim == 3 else t

    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pooled, projected (not normalised) embeddings (B, d), float32, of preprocessed images."""
        return self._encode_pixels(pixels).float()

    @torch.inference_mode()
    def encode_images(self, frames: torch.Tensor | np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """Pooled, projected (not normalised) image embeddings (B, d), float32, on the model's device.
        Takes a uint8 batch (B, H, W, 3) / one frame (H, W, 3), or a list of frames of any sizes
        (live streams differ): each is resized on the device, then one forward pass for all."""
        if isinstance(frames, (list, tuple)):
            batch = torch.cat([self.preprocess(self._as_batch(f)) for f in frames])
        else:
            batch = self.preprocess(self._as_batch(frames))
        return self.encode_pixels(batch)

    def compile_image_tower(self, mode: Optional[str]) -> None:
        raise NotImplementedError

    # ---------- text ----------
    def tokenize(self, texts: Sequence[str], max_tokens: Optional[int] = None) -> torch.Tensor:
        """Token rows (B, context_length); long texts keep their *latest* words."""
        return self.tokenizer(texts, max_tokens)

    def _text_token_states(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def encode_text_tokens(self, tokens: torch.Tensor) -> TextStates:
        tokens = tokens.to(self.device)
        mask, pooled = self.tokenizer.layout(tokens)
        return TextStates(states=self._text_token_states(tokens).float(), mask=mask, pooled_index=pooled)

    def encode_texts(self, texts: Sequence[str], max_tokens: Optional[int] = None) -> TextStates:
        return self.encode_text_tokens(self.tokenize(texts, max_tokens))

    @torch.inference_mode()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """The tower's pooled text embedding (B, d), float32: used for the zero-shot heads."""
        ts = self.encode_texts(prompts)
        return ts.states[torch.arange(len(prompts), device=ts.states.device), ts.pooled_index]


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
        self.to(device)
        if dtype != torch.float32:
            self.clip.to(dtype)

    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(pixels)

    def compile_image_tower(self, mode: Optional[str]) -> None:
        self.clip.visual = torch.compile(self.clip.visual, mode=mode, dynamic=True)

    def _text_token_states(self, tokens: torch.Tensor) -> torch.Tensor:
        t = self._text
        if hasattr(t, "_embeds"):  # open_clip TextTransformer: embeddings + causal / padding mask
            x, attn_mask = t._embeds(tokens)
        else:  # the built-in tower of open_clip.CLIP
            cast = t.transformer.get_cast_dtype()
            x = t.token_embedding(tokens).to(cast) + t.positional_embedding.to(cast)
            attn_mask = t.attn_mask
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
            pp.update({k: published[k] for k in ("mean", "std", "resize_mode") if k in published})
    return ImagePreprocess.of(pp.get("size", 224), pp.get("mean", open_clip.OPENAI_DATASET_MEAN),
                              pp.get("std", open_clip.OPENAI_DATASET_STD), pp.get("resize_mode"))


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
