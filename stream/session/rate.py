"""A live stream's sampling rate under overload: slower when its frames go stale, back up when the
engine keeps up again (multiplicative both ways, with hold times so it does not oscillate)."""
from __future__ import annotations

from typing import Optional

from models.sampling import FrameSampler

DOWN = 0.75  # rate x this on overload
UP = 1.25  # rate x this after a calm spell
DOWN_HOLD_S = 1.0  # at most one step down per this long (the step needs time to show)
UP_AFTER_S = 5.0  # no loss or late frame for this long: one step up


class RateGovernor:
    """Owns the rate of the stream's `FrameSampler` (shared with the source's FramePolicy).

    `observe(lost, late, now)` after every CLIP batch: `lost` frames dropped since the last call
    (stale or pushed out of the queue), `late` whether a frame came back older than half the age
    limit. Reports the lowest rate used and how many times it stepped down."""

    def __init__(self, sampler: FrameSampler, fps_max: float, fps_min: float) -> None:
        self.sampler = sampler
        self.fps_max = fps_max
        self.fps_min = min(fps_min, fps_max)
        self.lowest = fps_max
        self.steps_down = 0
        self._changed: Optional[float] = None
        self._trouble: Optional[float] = None

    @property
    def fps(self) -> float:
        return self.sampler.fps

    def observe(self, lost: int, late: bool, now: float) -> None:
        if self.fps_max <= 0:  # "every frame": nothing to govern
            return
        if lost or late:
            self._trouble = now
            if self.fps > self.fps_min and (self._changed is None or now - self._changed >= DOWN_HOLD_S):
                self._set(max(self.fps_min, self.fps * DOWN), now)
                self.steps_down += 1
                self.lowest = min(self.lowest, self.fps)
        elif self.fps < self.fps_max and now - max(self._trouble or now, self._changed or now) >= UP_AFTER_S:
            self._set(min(self.fps_max, self.fps * UP), now)

    def _set(self, fps: float, now: float) -> None:
        self.sampler.set_fps(fps)
        self._changed = now

    def summary(self) -> dict:
        return {"configured": self.fps_max, "lowest": round(self.lowest, 3), "last": round(self.fps, 3),
                "steps_down": self.steps_down}
