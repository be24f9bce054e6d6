"""Local camera by index through OpenCV: live, video only (microphones are a separate device)."""
from __future__ import annotations

import time
from typing import Any, Iterator, Optional

import numpy as np

from models.errors import UserError

from .base import MediaItem, MediaSource, SourceInfo, VideoFrame
from .policy import FramePolicy, cover_size


def _quiet_capture(cv2: Any, index: int) -> Any:
    """cv2.VideoCapture(index) without OpenCV's own `[ WARN ]`/`[ERROR]` lines on stderr when the
    camera is missing (each backend it tries prints one); our error says what is wrong instead."""
    log = getattr(getattr(cv2, "utils", None), "logging", None)
    if log is None:
        return cv2.VideoCapture(index)
    level = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_SILENT)
    try:
        return cv2.VideoCapture(index)
    finally:
        log.setLogLevel(level)


class CameraSource(MediaSource):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index
        self._cap: Any = None
        self._first: Optional[np.ndarray] = None

    def _open(self) -> SourceInfo:
        import cv2

        cap = _quiet_capture(cv2, self.index)
        if not cap.isOpened():
            cap.release()
            raise UserError(f"camera {self.index} could not be opened: no such device, or it is busy or not "
                            f"permitted; check `ls /dev/video*`, or pass a file, URL or 'demo' as the source")
        ok, first = cap.read()
        if not ok or first is None:
            cap.release()
            raise UserError(f"camera {self.index} could not be opened: it returned no frame; check that no other "
                            f"program is using it")
        self._first = first
        fps = cap.get(cv2.CAP_PROP_FPS) or None
        self._cap = cap
        return SourceInfo(description=f"camera {self.index}", live=True, has_video=True, has_audio=False,
                          duration=None, fps=float(fps) if fps else None,
                          width=int(first.shape[1]), height=int(first.shape[0]))

    def _is_open(self) -> bool:
        return self._cap is not None

    def _items(self, policy: Optional[FramePolicy]) -> Iterator[MediaItem]:
        import cv2

        # A camera has no media clock we can trust across drivers: media time is wall time since start.
        start = time.perf_counter()
        first, self._first = self._first, None
        while not self._stop.is_set():
            if first is not None:
                ok, bgr = True, first
                first = None
            else:
                ok, bgr = self._cap.read()
            now = time.perf_counter()
            if not ok or bgr is None:
                if self._stop.is_set():
                    return
                raise UserError(f"camera {self.index} stopped delivering frames (unplugged or taken by "
                                f"another program)")
            t = now - start
            if policy is None:
                yield VideoFrame(t=t, image=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), wall=now)
                continue
            # OpenCV hands BGR at full size: convert (and shrink) only what the sampler keeps.
            keep = policy.keep(t)
            display = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if policy.display else None
            image = detail = None
            if keep:
                rgb = display if display is not None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                image = rgb if policy.size is None else cv2.resize(
                    rgb, cover_size(rgb.shape[1], rgb.shape[0], policy.size), interpolation=cv2.INTER_AREA)
                detail = rgb if policy.detail else None
            yield VideoFrame(t=t, image=image, wall=now, keep=keep, display=display, detail=detail)

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
