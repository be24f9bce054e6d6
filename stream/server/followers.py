"""Read-only followers of one stream's events (`GET /ws/events?stream=ID`).

Each follower has its own bounded queue of encoded events; one that does not read loses events
(counted) instead of holding memory or slowing the stream. `close()` ends every follower."""
from __future__ import annotations

import asyncio
from typing import Any, Optional

from ..events import encode_event
from ..metrics import EVENTS_DROPPED

FOLLOWER_QUEUE = 256
FOLLOWERS_PER_STREAM = 8


class Followers:
    def __init__(self, limit: int = FOLLOWERS_PER_STREAM) -> None:
        self.limit = limit
        self.queues: list[asyncio.Queue[Optional[str]]] = []
        self.closed = False

    def subscribe(self) -> Optional[asyncio.Queue[Optional[str]]]:
        """A queue of JSON texts ending with None when the stream ends; None when `limit` follow already."""
        if self.closed or len(self.queues) >= self.limit:
            return None
        q: asyncio.Queue[Optional[str]] = asyncio.Queue(maxsize=FOLLOWER_QUEUE)
        self.queues.append(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[Optional[str]]) -> None:
        if q in self.queues:
            self.queues.remove(q)

    def publish(self, event: dict[str, Any]) -> None:
        if not self.queues:
            return
        text = encode_event(event)
        for q in self.queues:
            try:
                q.put_nowait(text)
            except asyncio.QueueFull:
                EVENTS_DROPPED.inc()

    def close(self) -> None:
        self.closed = True
        for q in self.queues:
            while q.full():  # the end marker must get through
                q.get_nowait()
                EVENTS_DROPPED.inc()
            q.put_nowait(None)
        self.queues.clear()
