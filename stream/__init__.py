"""sentistream: real-time multimodal sentiment analysis (the app; the model library is `models`).

The Python API is exported lazily, so `import stream` loads nothing heavy and has no side effects:

    from stream import analyze, analyze_sync, Event
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "analyze": "stream.api",
    "analyze_sync": "stream.api",
    "stream_events": "stream.api",
    "Event": "stream.events",
    "SentimentEvent": "stream.events",
    "TranscriptEvent": "stream.events",
    "SummaryEvent": "stream.events",
    "MessageEvent": "stream.events",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'stream' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
