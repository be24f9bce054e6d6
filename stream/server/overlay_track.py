"""The video a connection returns: the newest client frame with the overlay drawn on it, one per
client frame at most, never waiting on analysis (a slow encoder skips frames, counted)."""
from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import dataclass
from typing import Any, Optional

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ..metrics import FRAMES_DROPPED
from ..overlay import OverlayState, OverlayTracker, draw_overlay


@dataclass(frozen=True)
class Latest:
    seq: int
    pts: Optional[int]
    time_base: Any
    image: Any  # the client's decoded av.VideoFrame (converted only if relayed), or RGB numpy


def _render(image: Any, state: OverlayState) -> av.VideoFrame:
    rgb = image.to_ndarray(format="rgb24") if isinstance(image, av.VideoFrame) else image
    return av.VideoFrame.from_ndarray(draw_overlay(rgb, state), format="rgb24")


class OverlayTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, tracker: OverlayTracker, pool: Optional[concurrent.futures.Executor]) -> None:
        super().__init__()
        self.tracker = tracker
        self.pool = pool
        self.latest: Optional[Latest] = None
        self._wake = asyncio.Event()
        self._seq = 0
        self._sent = 0  # seq of the last relayed frame

    def offer(self, image: Any, pts: Optional[int], time_base: Any) -> None:
        """A new client frame (av.VideoFrame or RGB numpy): the next recv() relays it (or a newer one)."""
        self._seq += 1
        self.latest = Latest(self._seq, pts, time_base, image)
        self._wake.set()

    async def recv(self) -> av.VideoFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            latest = self.latest
            if latest is not None and latest.seq != self._sent:
                break
            self._wake.clear()
            await self._wake.wait()
        if latest.seq - self._sent > 1:  # the encoder was slower than the client: skip, never queue
            FRAMES_DROPPED.labels("relay").inc(latest.seq - self._sent - 1)
        self._sent = latest.seq
        state = self.tracker.state()  # snapshot on the loop; drawing happens off it
        out = await asyncio.get_running_loop().run_in_executor(self.pool, _render, latest.image, state)
        out.pts, out.time_base = latest.pts, latest.time_base
        return out

    def stop(self) -> None:
        super().stop()
        self.latest = None
        self._wake.set()
