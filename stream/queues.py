"""The queues between a source and a stream's workers, one Protocol for both clock policies:
`LatestQueue` (live: bounded, drops the oldest item, never blocks the source) and `FileQueue`
(files: bounded, back-pressure, loses nothing). Both end with the `CLOSED` sentinel."""
from __future__ import annotations

import asyncio
import collections
from typing import Any, Protocol

CLOSED: Any = object()  # what get() returns once a closed queue is drained


class MediaQueue(Protocol):
    """What a stream's branch reads from: `get()` waits, `get_nowait()` returns None when empty;
    both return `CLOSED` after `close()` once drained. `dropped` counts items lost (live only)."""

    dropped: int

    async def put(self, item: Any) -> None: ...
    async def get(self) -> Any: ...
    def get_nowait(self) -> Any: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class LatestQueue:
    """Bounded asyncio queue for live sources: when full, `put_nowait` drops the OLDEST item.

    Dropping stale items instead of blocking keeps latency flat when compute is slower than the
    source; `dropped` counts them for the summary/metrics. After `close()`, `get()` returns the
    remaining items and then the sentinel `LatestQueue.CLOSED` (forever). Items put after close are
    discarded. Not thread-safe: from a source thread use `loop.call_soon_threadsafe(q.put_nowait, x)`.
    """

    CLOSED = CLOSED

    def __init__(self, maxsize: int = 1) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self.dropped = 0
        self.closed = False
        self._items: collections.deque[Any] = collections.deque()
        self._event = asyncio.Event()

    async def put(self, item: Any) -> None:
        """Never waits: the source must not be slowed down by compute."""
        self.put_nowait(item)

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

    def abort(self) -> None:
        """The consumer died: nothing more will be read (a live source never blocks on us anyway)."""
        self.close()


class FileQueue:
    """Bounded queue for files: `put` waits for room (back-pressure) instead of dropping."""

    def __init__(self, maxsize: int):
        self._q: asyncio.Queue = asyncio.Queue(maxsize)
        self.dropped = 0
        self.aborted = False

    async def put(self, item: Any) -> None:
        if not self.aborted:
            await self._q.put(item)

    def abort(self) -> None:
        """The consumer died: empty the queue so a blocked producer wakes up, refuse the rest."""
        self.aborted = True
        while not self._q.empty():
            self._q.get_nowait()

    def close(self) -> None:
        """Queue the end marker after everything already queued (waits for room if full)."""
        if self._q.full():
            asyncio.ensure_future(self._q.put(CLOSED))
        else:
            self._q.put_nowait(CLOSED)

    async def get(self) -> Any:
        return await self._q.get()

    def get_nowait(self) -> Any:
        return self._q.get_nowait() if not self._q.empty() else None
