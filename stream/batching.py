"""Micro-batching on the event loop: concurrent `submit` calls (from every stream) collected into
batches of up to `max_batch` items or `max_wait_ms`, run by a blocking batch function on an executor.
Generic: the CLIP engine and batched Whisper both use it, and it needs neither torch nor Whisper."""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from typing import Any, Callable, Generic, Optional, Sequence, TypeVar

from .metrics import LatencyStats

T = TypeVar("T")
R = TypeVar("R")


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
