"""Micro-batching on the event loop: concurrent `submit` calls (from every stream) collected into
batches of up to `max_batch` items or `max_wait_ms`, run by a blocking batch function on an executor.
Generic: the CLIP engine and batched Whisper both use it, and it needs neither torch nor Whisper.

Three live-latency controls, all optional: a batch bounded by time (`max_batch_ms`: items per batch
capped from a running estimate of the cost per item; applied when the batch's first item has a
deadline, i.e. live work), item deadlines (an item whose deadline passed
before its batch starts fails with `Expired`, never computed), and `yield_to`: another batcher
sharing the executor whose pending batch goes first (fusion before CLIP images; one batch, so a
steady stream of fusion requests cannot starve the images)."""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from typing import Any, Callable, Generic, Optional, Sequence, TypeVar

from .metrics import LatencyStats

T = TypeVar("T")
R = TypeVar("R")

_COST_SMOOTHING = 0.3  # weight of the newest batch in the running cost per item


class Expired(Exception):
    """The item waited past its deadline: it was dropped, not computed."""


class MicroBatcher(Generic[T, R]):
    """Collects concurrent `submit` calls into batches for a blocking batch function."""

    def __init__(self, name: str, fn: Callable[[list[T]], Sequence[R]], executor: concurrent.futures.Executor,
                 max_batch: int, max_wait_ms: float, stats: Optional[LatencyStats] = None, *,
                 max_batch_ms: float = 0.0, yield_to: Optional["MicroBatcher"] = None):
        self.name = name
        self._fn = fn
        self._executor = executor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_batch_s = max_batch_ms / 1000.0  # 0: bounded by count only
        self.yield_to = yield_to
        self._queue: Optional[asyncio.Queue[tuple[T, asyncio.Future[R], Optional[float]]]] = None
        self._task: Optional[asyncio.Task[None]] = None
        self._idle: Optional[asyncio.Event] = None
        self._busy = False  # from taking a batch's first item until its results are delivered
        self._rounds = 0  # batches finished (any outcome)
        self._stats = stats
        self.item_cost: Optional[float] = None  # running estimate of seconds per item
        self.batches = 0
        self.items = 0
        self.expired = 0
        self.time_capped = 0  # batches cut below max_batch by max_batch_ms
        self.batch_sizes: collections.Counter[int] = collections.Counter()

    @property
    def batch_limit(self) -> int:
        """Items the next batch may take: max_batch, or fewer so it should last <= max_batch_ms."""
        if self.max_batch_s <= 0 or not self.item_cost:
            return self.max_batch
        return max(1, min(self.max_batch, int(self.max_batch_s / self.item_cost)))

    def pending(self) -> bool:
        """Work queued or in progress."""
        return self._busy or (self._queue is not None and not self._queue.empty())

    async def wait_turn(self) -> None:
        """If work is queued or running here, wait until one batch of it has finished (not for work
        that arrives later: whoever yields to this batcher is delayed by one batch, never starved)."""
        target = self._rounds + 1
        while self.pending() and self._rounds < target and self._idle is not None:
            self._idle.clear()
            await self._idle.wait()

    def _ensure_started(self) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        # A new event loop (tests, a restarted server) needs its own worker and queue.
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._queue = asyncio.Queue()
            self._idle = asyncio.Event()
            self._busy = False
            self._task = loop.create_task(self._worker(), name=f"batcher-{self.name}")
        assert self._queue is not None
        return self._queue

    async def submit(self, item: T, deadline: Optional[float] = None) -> R:
        """The item's result; `deadline` (time.perf_counter()): raise `Expired` instead of computing
        it if its batch has not started by then."""
        queue = self._ensure_started()
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        queue.put_nowait((item, fut, deadline))
        return await fut

    async def _collect(self, queue: asyncio.Queue) -> list[tuple[T, asyncio.Future[R], Optional[float]]]:
        batch = [await queue.get()]
        self._busy = True
        # Only work with a deadline (live frames) is bounded by time; files keep full batches (throughput).
        limit = self.batch_limit if batch[0][2] is not None else self.max_batch
        if limit < self.max_batch and queue.qsize() >= limit:
            self.time_capped += 1
        deadline = time.perf_counter() + self.max_wait
        while len(batch) < limit:
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

    def _set_idle(self) -> None:
        self._busy = False
        self._rounds += 1
        if self._idle is not None:
            self._idle.set()

    async def _worker(self) -> None:
        assert self._queue is not None
        try:
            while True:
                await self._one_batch(self._queue)
                self._set_idle()
        finally:
            self._set_idle()

    async def _one_batch(self, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        batch = await self._collect(queue)
        try:
            if self.yield_to is not None:  # its queued work (fusion) goes first on the shared executor
                await self.yield_to.wait_turn()
        except asyncio.CancelledError:  # closed while waiting: nobody may wait forever
            _fail(batch, RuntimeError(f"{self.name} batcher closed"))
            raise
        now = time.perf_counter()
        live = []
        for item, fut, deadline in batch:
            if fut.cancelled():
                continue
            if deadline is not None and now > deadline:
                self.expired += 1
                fut.set_exception(Expired())
                continue
            live.append((item, fut))
        if not live:
            return
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
            return
        elapsed = time.perf_counter() - started
        cost = elapsed / len(live)
        self.item_cost = cost if self.item_cost is None else (
            (1 - _COST_SMOOTHING) * self.item_cost + _COST_SMOOTHING * cost)
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
            queued.append(self._queue.get_nowait()[:2])
        _fail(queued, RuntimeError(f"{self.name} batcher closed"))


def _fail(waiters: Sequence[tuple[Any, ...]], exc: Exception) -> None:
    for waiter in waiters:
        fut = waiter[1]
        if not fut.done():
            fut.set_exception(exc)
