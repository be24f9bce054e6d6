"""CLIP backbone factory and the two feature paths the fusion model needs.

`create_backbone` maps (name, pretrained) to a frozen open_clip model, the way open_clip's own
factory does: a hub tag, a local checkpoint file or directory, or the literal ``random``
(explicit opt-in: same architecture and compute, random weights).
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
    """Token-level CLIP text states in the joint embedding space, with a validity mask."""

    states: torch.Tensor  # (B, T, d), projected with the CLIP text projection
    mask: torch.Tensor  # (B, T) bool, True = real token (SOT..EOT)
    pooled_index: torch.Tensor  # (B,) index of EOT: CLIP's own pooling position


class ClipBackbone(torch.nn.Module):
    """A frozen open_clip CLIP with tensor-only preprocessing on its device."""

    def __init__(self, clip: torch.nn.Module, tokenizer: Any, device: torch.device, dtype: torch.dtype, weights: str):
        super().__init__()
        self.clip = clip.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.weights = weights
        pp = open_clip.get_model_preprocess_cfg(clip)
        size = pp.get("size", 224)
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        self.register_buffer("mean", torch.tensor(pp.get("mean", open_clip.OPENAI_DATASET_MEAN)).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(pp.get("std", open_clip.OPENAI_DATASET_STD)).view(1, 3, 1, 1))
        self.context_length = int(getattr(clip, "context_length", 77))
        self.embed_dim = int(clip.text_projection.shape[1]) if isinstance(clip.text_projection, torch.Tensor) else int(clip.text_projection.out_features)
        self.sot = int(tokenizer.sot_token_id)
        self.eot = int(tokenizer.eot_token_id)
        # The two towers' forward passes: torch by default; `vision.backend: onnx` swaps in ONNX
        # Runtime sessions of the same graphs (models/onnx_backend.py). Preprocessing, tokenising,
        # masks and the prompt embeddings stay here either way.
        self.backend = "torch"
        self.image_tower: Callable[[torch.Tensor], torch.Tensor] = self.clip.encode_image
        self.text_tower: Callable[[torch.Tensor], torch.Tensor] = self.text_states
        self.to(device)
        if dtype != torch.float32:
            self.clip.to(dtype)

    # ---------- images ----------
    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) RGB -> normalised (B, 3, S, S): resize shorter side, centre crop, all tensor ops."""
        x = frames.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        h, w = x.shape[-2:]
        th, tw = self.image_size
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

    @torch.inference_mode()
    def encode_images(self, frames: torch.Tensor | np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """Pooled, projected (not normalised) image embeddings (B, d), float32, on the model's device.
        Takes a uint8 batch (B, H, W, 3) / one frame (H, W, 3), or a list of frames of any sizes
        (live streams differ): each is resized on the device, then one forward pass for all."""
        if isinstance(frames, (list, tuple)):
            batch = torch.cat([self.preprocess(self._as_batch(f)) for f in frames])
        else:
            batch = self.preprocess(self._as_batch(frames))
        return self.image_tower(batch).float()

    # ---------- text ----------
    def tokenize(self, texts: Sequence[str], max_tokens: Optional[int] = None) -> torch.Tensor:
        """CLIP tokens; long texts keep their *latest* words (what was said last matters most live)."""
        limit = min(max_tokens or self.context_length - 2, self.context_length - 2)
        rows = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = self.tokenizer.encode(text)[-limit:] if text else []
            seq = [self.sot, *ids, self.eot]
            rows[i, : len(seq)] = torch.tensor(seq)
        return rows

    def text_states(self, tokens: torch.Tensor) -> torch.Tensor:
        """The text tower in torch: tokens (B, T) -> projected token states (B, T, d), model dtype."""
        clip = self.clip
        cast = clip.transformer.get_cast_dtype()
        x = clip.token_embedding(tokens).to(cast) + clip.positional_embedding.to(cast)
        x = clip.transformer(x, attn_mask=clip.attn_mask)
        x = clip.ln_final(x)
        proj = clip.text_projection
        return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj

    @torch.inference_mode()
    def encode_text_tokens(self, tokens: torch.Tensor) -> TextStates:
        tokens = tokens.to(self.device)
        x = self.text_tower(tokens)
        eot_index = (tokens == self.eot).int().argmax(dim=-1)
        positions = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0)
        mask = positions <= eot_index.unsqueeze(1)
        return TextStates(states=x.float(), mask=mask, pooled_index=eot_index)

    def encode_texts(self, texts: Sequence[str], max_tokens: Optional[int] = None) -> TextStates:
        return self.encode_text_tokens(self.tokenize(texts, max_tokens))

    @torch.inference_mode()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """CLIP's pooled text embedding (B, d), float32: used for the zero-shot heads."""
        return self.clip.encode_text(self.tokenize(prompts).to(self.device)).float()


def create_backbone(cfg: VisionConfig) -> ClipBackbone:
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.precision, device)
    if dtype != torch.float32 and device.type == "cpu":
        raise UserError(f"vision.precision={cfg.precision} is for GPUs; use fp32 or auto on the CPU")
    with _open_clip_logs_filtered():
        clip, weights = _create(cfg, device)
    if not hasattr(clip, "token_embedding"):
        raise UserError(f"CLIP model '{cfg.model}' has a custom text tower; sentistream needs an open_clip CLIP with a built-in text transformer")
    tokenizer = open_clip.get_tokenizer(cfg.model) if cfg.arch is None else open_clip.SimpleTokenizer()
    if not hasattr(tokenizer, "encode"):
        raise UserError(f"CLIP model '{cfg.model}' uses a non-CLIP tokenizer; choose a model with the CLIP BPE tokenizer")
    log.info("CLIP %s (%s weights) on %s/%s", cfg.model, weights, device, dtype)
    return ClipBackbone(clip, tokenizer, device, dtype, weights)
