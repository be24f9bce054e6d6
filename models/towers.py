"""The backbone interface every tower loader implements (open_clip in `models.backbone`,
transformers in `models.hf_backbone`): image embeddings, token-level text states + mask + pooling
index, the tokenizer, logit scale / bias; plus the hub's offline rule both loaders share."""
from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

RANDOM = "random"  # vision.pretrained: same architecture and compute, seeded random weights


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
    interpolation: str = "bicubic"  # as the tower was trained: bicubic (open_clip's configs, CLIP) | bilinear

    @classmethod
    def of(cls, size: Any, mean: Sequence[float], std: Sequence[float], resize_mode: Optional[str] = None,
           interpolation: Optional[str] = None) -> "ImagePreprocess":
        hw = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
        return cls(hw, tuple(float(v) for v in mean), tuple(float(v) for v in std),  # type: ignore[arg-type]
                   "squash" if resize_mode == "squash" else "shortest",
                   "bilinear" if interpolation == "bilinear" else "bicubic")


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
        # The two towers' forward passes: torch by default; `vision.backend: onnx` swaps in ONNX
        # Runtime sessions of the same graphs (models/onnx_backend.py). Preprocessing, tokenising,
        # masks and the prompt embeddings stay here either way.
        self.backend = "torch"
        self.image_tower: Callable[[torch.Tensor], torch.Tensor] = self._encode_pixels
        self.text_tower: Callable[[torch.Tensor], torch.Tensor] = self._text_token_states
        # True when the text tower is causal and pools at the closing token: a row's states up to
        # its closing token do not depend on the padding after it, so one pass over the batch's
        # longest sequence gives the same states as a pass over all `context_length` positions
        # (window texts are ~20-30 of 77 tokens). Subclasses set it; a tower with a fixed token
        # axis (an exported graph) clears it.
        self.text_prefix_exact = False

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
        mode = self.image_cfg.interpolation
        if self.image_cfg.resize_mode == "squash":
            nh, nw = th, tw
        else:
            scale = max(th / h, tw / w)
            nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
        if (nh, nw) != (h, w):
            # Antialiased like PIL's resize, clamped like its uint8 output (bicubic overshoots).
            x = F.interpolate(x, size=(nh, nw), mode=mode, antialias=True, align_corners=False).clamp_(0.0, 1.0)
        if self.image_cfg.resize_mode != "squash":
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
        return self.image_tower(pixels).float()

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
        """Token states (B, T, d) float32 of token rows (B, T), with their mask and pooling index.
        Positions the mask leaves out may be zeros (see `text_prefix_exact`): nothing reads them."""
        tokens = tokens.to(self.device)
        mask, pooled = self.tokenizer.layout(tokens)
        width = tokens.shape[1]
        used = int(pooled.max()) + 1 if self.text_prefix_exact and len(tokens) else width
        states = self.text_tower(tokens[:, :used]).float()
        if used < width:
            states = F.pad(states, (0, 0, 0, width - used))
        return TextStates(states=states, mask=mask, pooled_index=pooled)

    def encode_texts(self, texts: Sequence[str], max_tokens: Optional[int] = None) -> TextStates:
        return self.encode_text_tokens(self.tokenize(texts, max_tokens))

    @torch.inference_mode()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """The tower's pooled text embedding (B, d), float32: used for the zero-shot heads."""
        ts = self.encode_texts(prompts)
        return ts.states[torch.arange(len(prompts), device=ts.states.device), ts.pooled_index]


