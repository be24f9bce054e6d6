"""The frame-sampling rule that the live pipeline and training share: which frames of a video are
looked at (an fps cap on a fixed grid)."""
from __future__ import annotations

import math
from typing import Optional


class FrameSampler:
    """Keeps at most `fps` frames per media second, on a fixed grid so the rate does not drift.

    The first frame is kept; each next one once t reaches the next slot (previous slot + 1/fps). A
    frame a little early still counts (tolerance: 10 % of the period, but under half the source's
    frame interval, so 30 -> 2 fps keeps exactly 2/s). After a gap, or if time goes backwards, the
    grid restarts at the frame. `fps <= 0` or infinite keeps every frame.
    """

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self.period = 0.0
        self.set_fps(fps)
        self._next: Optional[float] = None
        self._prev: Optional[float] = None  # last frame seen, kept or not

    def set_fps(self, fps: float) -> None:
        """Change the rate from the next kept frame on (the live pipeline lowers it under overload).
        One float assignment: safe to call from another thread than the one calling `keep`."""
        self.fps = fps
        self.period = 0.0 if fps <= 0 or math.isinf(fps) else 1.0 / fps

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
