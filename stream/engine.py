"""One model engine per process, shared by every stream.

Requests from all streams are micro-batched (up to `max_batch` items or `max_wait_ms`), and all
torch work runs on one dedicated thread so the event loop never blocks on compute.
"""
from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from models.backbone import TextStates
from models.factory import SentimentModel
from models.inference import Estimate, ExpertReading, WindowInput, predict
from models.prompts import LABELS

from .batching import Expired, MicroBatcher
from .config import EngineConfig
from .metrics import LatencyStats

log = logging.getLogger(__name__)


def compile_model(model: SentimentModel) -> None:
    """`engine.compile`: torch.compile the image tower and the fusion model. On CUDA the
    "reduce-overhead" mode captures CUDA graphs; shapes vary with the batch size, so the first
    batches of each size pay a compile (dynamic=True keeps that to a few)."""
    mode = "reduce-overhead" if model.device.type == "cuda" else None
    model.backbone.compile_image_tower(mode)
    model.fusion = torch.compile(model.fusion, mode=mode, dynamic=True)  # type: ignore[assignment]


class TextStateCache:
    """LRU cache of encoded transcript texts: the window text changes only when words arrive.
    Keyed by (text, token budget): the states depend on both. The cache belongs to one engine,
    hence one backbone, so width, tokenizer and pooling are that tower's."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._rows: collections.OrderedDict[tuple[str, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = collections.OrderedDict()
        self._lock = threading.Lock()  # fusion and the encode-ahead worker use it from their own threads
        self.hits = 0
        self.misses = 0

    def holds(self, text: str, max_tokens: int) -> bool:
        with self._lock:
            return (text, max_tokens) in self._rows

    def encode(self, model: SentimentModel, texts: Sequence[str], max_tokens: int, stats: Optional[LatencyStats]) -> TextStates:
        keys = [(t, max_tokens) for t in texts]
        with self._lock:
            known = {k: self._rows[k] for k in keys if k in self._rows}
        missing = list(dict.fromkeys(k for k in keys if k not in known))
        fresh: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        if missing:  # encoded outside the lock: the other thread's lookups never wait for a pass
            started = time.perf_counter()
            enc = model.backbone.encode_texts([t for t, _ in missing], max_tokens)
            if stats is not None:
                stats.add("clip_text", time.perf_counter() - started)
            for i, key in enumerate(missing):
                fresh[key] = (enc.states[i], enc.mask[i], enc.pooled_index[i])
        rows = [fresh.get(k) or known[k] for k in keys]
        with self._lock:
            self.hits += len(keys) - len(missing)
            self.misses += len(missing)
            self._rows.update(fresh)
            for key in keys:
                if key in self._rows:
                    self._rows.move_to_end(key)
            while len(self._rows) > self.capacity:
                self._rows.popitem(last=False)
        return TextStates(torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]), torch.stack([r[2] for r in rows]))


class TextExpertCache:
    """One text expert's readings of utterances, LRU-cached: an utterance is re-read only when it changed."""

    def __init__(self, head: str, expert, capacity: int):
        self.head = head
        self.expert = expert
        self.capacity = capacity
        self._probs: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()

    def read(self, windows: Sequence[WindowInput], stats: Optional[LatencyStats]) -> None:
        """Adds this expert's reading to each window (n = the utterance's words; 0: no words, no evidence)."""
        missing = list(dict.fromkeys(w.utterance for w in windows if w.n_utterance_words and w.utterance not in self._probs))
        if missing:
            started = time.perf_counter()
            for text, probs in zip(missing, self.expert.predict(missing)):
                self._probs[text] = probs
            if stats is not None:
                stats.add(f"{self.head}_expert", time.perf_counter() - started)
        for w in windows:
            if w.n_utterance_words:
                self._probs.move_to_end(w.utterance)
                probs = self._probs[w.utterance]
            else:
                probs = np.full(len(LABELS), 1.0 / len(LABELS), np.float32)
            w.experts[self.head] = ExpertReading(probs, w.n_utterance_words, self.expert.name)
        while len(self._probs) > self.capacity:
            self._probs.popitem(last=False)


@dataclass
class FusionRequest:
    window: WindowInput
    max_tokens: int


class ModelEngine:
    """CLIP image, CLIP text and fusion for every stream of the process, batched across streams."""

    def __init__(self, model: SentimentModel, cfg: EngineConfig, stats: Optional[LatencyStats] = None):
        self.model = model
        self.cfg = cfg
        self.stats = stats or LatencyStats()
        if cfg.compile:
            compile_model(model)
        # One compute thread: torch parallelises inside an op; two threads would only contend.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sentistream-engine")
        self._text_cache = TextStateCache(cfg.text_cache_size)
        self._text_experts = [TextExpertCache(head, expert, cfg.text_cache_size) for head, expert in model.text_experts.items()]
        self.fusion = MicroBatcher("fusion", self._fuse, self._executor, cfg.max_batch, cfg.max_wait_ms, self.stats)
        # Image batches are bounded in time and wait for queued fusion requests: estimates keep their
        # hop rate when the streams send more frames than CLIP can take.
        self.images = MicroBatcher("clip_image", self._encode_images, self._executor, cfg.max_batch, cfg.max_wait_ms,
                                   self.stats, max_batch_ms=cfg.max_batch_ms, yield_to=self.fusion)
        # Window texts encoded ahead of the estimate that will fuse them (live streams, as soon as the
        # transcript changed), on a thread of their own: the text pass is neither on frame -> estimate
        # nor in front of a frame's image batch (on 2 cores it runs beside the image tower).
        self._text_executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sentistream-text")
        self.texts = MicroBatcher("clip_text_ahead", self._encode_texts, self._text_executor, cfg.max_batch, cfg.max_wait_ms)

    @property
    def weights(self) -> str:
        return self.model.weights

    @property
    def image_size(self) -> tuple[int, int]:
        """(h, w) the image tower takes: sources scale kept frames to cover it."""
        h, w = self.model.backbone.image_size
        return int(h), int(w)

    @property
    def image_interpolation(self) -> str:
        """How the image tower resizes ("bicubic" | "bilinear"): sources that scale kept frames use it too."""
        return self.model.backbone.image_cfg.interpolation

    def _encode_images(self, frames: list[np.ndarray]) -> list[torch.Tensor]:
        # Features stay on the model's device: windows and fusion use them there (GPU-resident).
        return list(self.model.backbone.encode_images(frames))

    def _encode_texts(self, items: list[tuple[str, int]]) -> list[None]:
        for max_tokens in sorted({m for _, m in items}):  # one budget in practice: the config's
            self._text_cache.encode(self.model, [t for t, m in items if m == max_tokens], max_tokens, self.stats)
        return [None] * len(items)

    def _fuse(self, requests: list[FusionRequest]) -> list[Estimate]:
        max_tokens = min(r.max_tokens for r in requests)
        text = self._text_cache.encode(self.model, [r.window.text for r in requests], max_tokens, self.stats)
        for expert in self._text_experts:
            expert.read([r.window for r in requests], self.stats)
        return predict(self.model, [r.window for r in requests], text)

    async def encode_frame(self, image: np.ndarray, deadline: Optional[float] = None) -> Optional[torch.Tensor]:
        """The frame's CLIP feature, or None if its batch had not started by `deadline` (perf_counter)."""
        try:
            return await self.images.submit(image, deadline)
        except Expired:
            return None

    @property
    def text_cache(self) -> TextStateCache:
        return self._text_cache

    async def estimate(self, window: WindowInput, max_tokens: int = 75) -> Estimate:
        return await self.fusion.submit(FusionRequest(window, max_tokens))

    def has_text(self, text: str, max_tokens: int = 75) -> bool:
        """Whether `text` is encoded already: an estimate fusing it runs no CLIP text pass."""
        return self._text_cache.holds(text, max_tokens)

    async def prepare_text(self, text: str, max_tokens: int = 75) -> None:
        """Encode a window text into the text cache ahead of the estimate that will use it, on the
        engine's text thread (beside image batches, not in front of them); an estimate that needs it
        first encodes it itself."""
        await self.texts.submit((text, max_tokens))

    async def close(self) -> None:
        await self.texts.close()
        await self.images.close()
        await self.fusion.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._text_executor.shutdown(wait=False, cancel_futures=True)
