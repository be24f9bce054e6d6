"""Rate control for live media: the frame sampler (fps cap) and the drop-oldest queue that keeps
latency flat when compute is slower than the source."""
from __future__ import annotations

import asyncio
import collections
import math
from typing import Any, Optional


class FrameSampler:
    """Keeps at most `fps` frames per media second, on a fixed grid so the rate does not drift.

    The first frame is kept; each next one once t reaches the next slot (previous slot + 1/fps). A
    frame a little early still counts (tolerance: 10 % of the period, but under half the source's
    frame interval, so 30 -> 2 fps keeps exactly 2/s). After a gap, or if time goes backwards, the
    grid restarts at the frame. `fps <= 0` or infinite keeps every frame.
    """

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self.period = 0.0 if fps <= 0 or math.isinf(fps) else 1.0 / fps
        self._next: Optional[float] = None
        self._prev: Optional[float] = None  # last frame seen, kept or not

    def keep(self, t: float) -> bool:
        if self.period == 0.0:
            return True
        prev, self._prev = self._prev, t
        if self._next is None or (prev is not None and t < prev):
            self._next = t + self.period
            return True
        tol = 0.1 * self.period if prev is None else min(0.1 * self.period, 0.5 * (t - prev))
        if t < self._next - tol:
            return False
        # Advance by one slot from the schedule (not from t) so rounding never accumulates.
        self._next = self._next + self.period if t < self._next + self.period else t + self.period
        return True


class LatestQueue:
    """Bounded asyncio queue for live sources: when full, `put_nowait` drops the OLDEST item.

    Dropping stale items instead of blocking keeps latency flat when compute is slower than the
    source; `dropped` counts them for the summary/metrics. After `close()`, `get()` returns the
    remaining items and then the sentinel `LatestQueue.CLOSED` (forever). Items put after close are
    discarded. Not thread-safe: from a source thread use `loop.call_soon_threadsafe(q.put_nowait, x)`.
    """

    CLOSED: Any = object()

    def __init__(self, maxsize: int = 1) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self.dropped = 0
        self.closed = False
        self._items: collections.deque[Any] = collections.deque()
        self._event = asyncio.Event()

    def put_nowait(self, item: Any) -> None:
        if self.closed:
            return
        if len(self._items) >= self.maxsize:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        self._event.set()

    async def get(self) -> Any:
        while not self._items:
            if self.closed:
                return LatestQueue.CLOSED
            self._event.clear()
            await self._event.wait()
        return self._items.popleft()

    def get_nowait(self) -> Any:
        """The oldest item, `CLOSED` once closed and drained, or None when empty."""
        if self._items:
            return self._items.popleft()
        return LatestQueue.CLOSED if self.closed else None

    def qsize(self) -> int:
        return len(self._items)

    def close(self) -> None:
        self.closed = True
        self._event.set()
