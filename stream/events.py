"""Events (JSON Lines): every event has `type`, `stream`, `t` (media seconds)."""
from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import IO, Any, Callable, Optional, Protocol

EventListener = Callable[[dict[str, Any]], None]


def make_event(kind: str, stream: str, t: float, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "stream": stream, "t": round(float(t), 3), **fields}


class EventSink(Protocol):
    def emit(self, event: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class JsonlSink:
    """Writes one JSON object per line and flushes it, so a crash never leaves half a line."""

    def __init__(self, path: Optional[str | Path] = None):
        self._own = path is not None and str(path) != "-"
        try:
            self._fh: IO[str] = open(path, "w", encoding="utf-8") if self._own else sys.stdout  # type: ignore[arg-type]
        except OSError as exc:
            from .errors import UserError

            raise UserError(f"cannot write events to {path}: {exc.strerror}") from None
        self._lock = threading.Lock()

    def emit(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()

    def close(self) -> None:
        if self._own:
            self._fh.close()


class FanoutSink:
    """Forwards events to several sinks and callbacks (JSONL file, overlay state, data channel...)."""

    def __init__(self, *sinks: EventSink, listeners: tuple[EventListener, ...] = ()):
        self.sinks = list(sinks)
        self.listeners = list(listeners)
        self.events: list[dict[str, Any]] = []
        self.keep = False  # keep a copy (the file overlay pass needs the timeline)

    def emit(self, event: dict[str, Any]) -> None:
        if self.keep:
            self.events.append(event)
        for sink in self.sinks:
            sink.emit(event)
        for listener in self.listeners:
            listener(event)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
