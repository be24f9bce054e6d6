"""A connection's event channel: every event as JSON over the client's "events" data channel.

Events emitted before the channel opens (warnings) wait in a small ring; once open, an event is
sent only while the channel's buffer is under `MAX_BUFFERED_BYTES` (a client that does not read
loses events, counted, instead of growing the server's memory)."""
from __future__ import annotations

import collections
from typing import Any

from ..events import encode_event
from ..metrics import EVENTS_DROPPED

MAX_BUFFERED_BYTES = 1 << 20
PENDING_EVENTS = 32  # events emitted before the data channel opens: keep the newest


class EventChannel:
    def __init__(self) -> None:
        self.channel: Any = None
        self.pending: collections.deque[str] = collections.deque(maxlen=PENDING_EVENTS)

    def attach(self, channel: Any) -> None:
        """The client's data channel (aiortc RTCDataChannel); sends what waited once it is open."""
        self.channel = channel
        if channel.readyState == "open":
            self._flush()
        else:
            channel.on("open", self._flush)

    @property
    def is_open(self) -> bool:
        return self.channel is not None and self.channel.readyState == "open"

    def send(self, event: dict[str, Any]) -> None:
        text = encode_event(event)
        ch = self.channel
        if ch is None:
            if len(self.pending) == self.pending.maxlen:
                EVENTS_DROPPED.inc()
            self.pending.append(text)
        elif ch.readyState == "open" and ch.bufferedAmount < MAX_BUFFERED_BYTES:
            ch.send(text)
        else:
            EVENTS_DROPPED.inc()

    def _flush(self) -> None:
        ch = self.channel
        while self.pending and ch is not None and ch.readyState == "open":
            ch.send(self.pending.popleft())

    def detach(self) -> None:
        self.channel = None
        self.pending.clear()
