"""One model engine per process, shared by every stream.

Requests from all streams are micro-batched (up to `max_batch` items or `max_wait_ms`), and all
torch work runs on one dedicated thread so the event loop never blocks on compute.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Generic, Optional, Sequence, TypeVar

import numpy as np
import torch

from models.backbone import TextStates
from models.factory import SentimentModel
from models.inference import Estimate, WindowInput, predict

from .config import EngineConfig
from .stats import LatencyStats

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


def compile_model(model: SentimentModel) -> None:
    """`engine.compile`: torch.compile the image tower and the fusion model. On CUDA the
    "reduce-overhead" mode captures CUDA graphs; shapes vary with the batch size, so the first
    batches of each size pay a compile (dynamic=True keeps that to a few)."""
    mode = "reduce-overhead" if model.device.type == "cuda" else None
    model.backbone.clip.visual = torch.compile(model.backbone.clip.visual, mode=mode, dynamic=True)
    model.fusion = torch.compile(model.fusion, mode=mode, dynamic=True)  # type: ignore[assignment]


class MicroBatcher(Generic[T, R]):
    """Collects concurrent `submit` calls into batches for a blocking batch function."""

    def __init__(self, name: str, fn: Callable[[list[T]], Sequence[R]], executor: concurrent.futures.Executor,
                 max_batch: int, max_wait_ms: float, stats: Optional[LatencyStats] = None):
        self.name = name
        self._fn = fn
        self._executor = executor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self._queue: Optional[asyncio.Queue[tuple[T, asyncio.Future[R]]]] = None
        self._task: Optional[asyncio.Task[None]] = None
        self._stats = stats
        self.batches = 0
        self.items = 0
        self.batch_sizes: collections.Counter[int] = collections.Counter()

    def _ensure_started(self) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        # A new event loop (tests, a restarted server) needs its own worker and queue.
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._worker(), name=f"batcher-{self.name}")
        assert self._queue is not None
        return self._queue

    async def submit(self, item: T) -> R:
        queue = self._ensure_started()
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        queue.put_nowait((item, fut))
        return await fut

    async def _collect(self, queue: asyncio.Queue) -> list[tuple[T, asyncio.Future[R]]]:
        batch = [await queue.get()]
        deadline = time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                batch.append(queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _worker(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect(self._queue)
            live = [(item, fut) for item, fut in batch if not fut.cancelled()]
            if not live:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._fn, [item for item, _ in live])
            except asyncio.CancelledError:  # closed mid-batch: nobody may wait forever
                _fail(live, RuntimeError(f"{self.name} batcher closed"))
                raise
            except Exception as exc:  # deliver the failure to every waiter, keep serving
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            elapsed = time.perf_counter() - started
            if self._stats is not None:
                self._stats.add(self.name, elapsed)
            self.batches += 1
            self.items += len(live)
            self.batch_sizes[len(live)] += 1
            for (_, fut), result in zip(live, results):
                if not fut.done():
                    fut.set_result(result)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        queued = []
        while self._queue is not None and not self._queue.empty():
            queued.append(self._queue.get_nowait())
        _fail(queued, RuntimeError(f"{self.name} batcher closed"))


def _fail(waiters: Sequence[tuple[object, "asyncio.Future[Any]"]], exc: Exception) -> None:
    for _, fut in waiters:
        if not fut.done():
            fut.set_exception(exc)


class TextStateCache:
    """LRU cache of encoded transcript texts: the window text changes only when words arrive."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._rows: collections.OrderedDict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = collections.OrderedDict()
        self.hits = 0
        self.misses = 0

    def encode(self, model: SentimentModel, texts: Sequence[str], max_tokens: int, stats: Optional[LatencyStats]) -> TextStates:
        missing = list(dict.fromkeys(t for t in texts if t not in self._rows))
        self.hits += len(texts) - len(missing)
        self.misses += len(missing)
        fresh: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        if missing:
            started = time.perf_counter()
            enc = model.backbone.encode_texts(missing, max_tokens)
            if stats is not None:
                stats.add("clip_text", time.perf_counter() - started)
            for i, text in enumerate(missing):
                fresh[text] = (enc.states[i], enc.mask[i], enc.pooled_index[i])
        rows = [fresh.get(t) or self._rows[t] for t in texts]
        for text, row in fresh.items():
            self._rows[text] = row
        for text in texts:
            if text in self._rows:
                self._rows.move_to_end(text)
        while len(self._rows) > self.capacity:
            self._rows.popitem(last=False)
        return TextStates(torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]), torch.stack([r[2] for r in rows]))


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
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.compile:
            compile_model(model)
        # One compute thread: torch parallelises inside an op; two threads would only contend.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sentistream-engine")
        self._text_cache = TextStateCache(cfg.text_cache_size)
        self.images = MicroBatcher("clip_image", self._encode_images, self._executor, cfg.max_batch, cfg.max_wait_ms, self.stats)
        self.fusion = MicroBatcher("fusion", self._fuse, self._executor, cfg.max_batch, cfg.max_wait_ms, self.stats)

    @property
    def weights(self) -> str:
        return self.model.weights

    def _encode_images(self, frames: list[np.ndarray]) -> list[torch.Tensor]:
        # Features stay on the model's device: windows and fusion use them there (GPU-resident).
        return list(self.model.backbone.encode_images(frames))

    def _fuse(self, requests: list[FusionRequest]) -> list[Estimate]:
        max_tokens = min(r.max_tokens for r in requests)
        text = self._text_cache.encode(self.model, [r.window.text for r in requests], max_tokens, self.stats)
        return predict(self.model, [r.window for r in requests], text)

    async def encode_frame(self, image: np.ndarray) -> torch.Tensor:
        return await self.images.submit(image)

    async def estimate(self, window: WindowInput, max_tokens: int = 75) -> Estimate:
        return await self.fusion.submit(FusionRequest(window, max_tokens))

    async def close(self) -> None:
        await self.images.close()
        await self.fusion.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
