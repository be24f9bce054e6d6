"""Hand a blocking source's items to an asyncio consumer: decode in a worker thread, push on the loop."""
from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Callable, Iterable, Optional, Protocol

from .base import MediaItem


class MediaSink(Protocol):
    """What takes a stream's media (a StreamSession): `push` may wait (files: back-pressure)."""

    async def push(self, item: MediaItem) -> None: ...
    def end_input(self) -> None: ...


async def pump(items: Iterable[MediaItem], sink: MediaSink,
               on_item: Optional[Callable[[MediaItem], None]] = None,
               executor: Optional[concurrent.futures.Executor] = None) -> None:
    """Decode in a worker thread and hand items to `sink` on the loop (blocking only for files:
    back-pressure). `executor`: many streams need their own pool (the default one has only
    cpu_count + 4 threads). Ends the sink's input however decoding stops."""
    loop = asyncio.get_running_loop()

    def produce() -> None:
        for item in items:
            if on_item is not None:
                on_item(item)
            asyncio.run_coroutine_threadsafe(sink.push(item), loop).result()

    try:
        await loop.run_in_executor(executor, produce)
    finally:
        sink.end_input()
