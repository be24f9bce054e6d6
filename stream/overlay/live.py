"""The overlay on a live source (camera, stream, `--realtime` file): the latest estimate drawn on
every frame as it passes (never waiting for analysis), written to mp4 and/or shown in a window."""
from __future__ import annotations

import os
import threading
from typing import Optional

from ..sources import SAMPLE_RATE, AudioChunk, MediaItem, SourceInfo
from .draw import OverlayTracker, draw_overlay
from .writer import OverlayWriter


class LiveOverlay:
    """Draws the latest estimate on every frame of a live source as it passes (never waits)."""

    def __init__(self, path: Optional[str], info: SourceInfo, show: bool, blur_faces: bool = False):
        self.path, self.info, self.show = path, info, show
        self.tracker = OverlayTracker(blur_faces=blur_faces)
        self.writer: Optional[OverlayWriter] = None
        self._lock = threading.Lock()
        if path and info.width and info.height:  # open now so audio before the first frame is kept
            self.writer = OverlayWriter(path, info.width, info.height, info.fps or 15.0, with_audio=info.has_audio)

    def on_event(self, event: dict) -> None:
        with self._lock:
            self.tracker.feed(event)

    def on_item(self, item: MediaItem) -> None:
        if isinstance(item, AudioChunk):
            if self.writer is not None:
                self.writer.write_audio(item.samples, item.t, SAMPLE_RATE)
            return
        with self._lock:
            state = self.tracker.state()
        frame = item.full  # the policy made it full size for us (`display`)
        if frame is None:
            return
        image = draw_overlay(frame, state)
        if self.path and self.writer is None:
            h, w = image.shape[:2]
            self.writer = OverlayWriter(self.path, w, h, self.info.fps or 15.0, with_audio=self.info.has_audio)
        if self.writer is not None:
            self.writer.write_video(image, item.t)
        if self.show:
            import cv2

            cv2.imshow("sentistream", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            cv2.waitKey(1)

    def close(self, keep: bool = True) -> None:
        """Finish the recording and move it into place, or (`keep=False`: the run failed) drop it."""
        if self.writer is not None:
            if keep:
                self.writer.close()
            else:
                self.writer.abort()


def display_available() -> tuple[bool, str]:
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no display (DISPLAY is not set)"
    import cv2

    if "GTK" not in cv2.getBuildInformation() and "QT" not in cv2.getBuildInformation().upper():
        return False, "this OpenCV build has no GUI (opencv-python-headless)"
    return True, ""
