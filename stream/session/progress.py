"""The one signal a stream's branches give its clock: "something advanced, look again"."""
from __future__ import annotations

import asyncio
from typing import Callable


class Progress:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()

    async def until(self, ready: Callable[[], bool]) -> None:
        """Returns once `ready()` holds (checked after every notify)."""
        while not ready():
            self._event.clear()
            if ready():
                return
            await self._event.wait()

    async def next(self, timeout: float) -> bool:
        """Waits for the next notify; False when `timeout` seconds passed without one."""
        self._event.clear()
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False
