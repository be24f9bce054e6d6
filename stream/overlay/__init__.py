"""The overlay: the estimate drawn onto video (draw), written to mp4 (writer), live as frames pass (live)."""
from __future__ import annotations

from .draw import OverlayState, OverlayTracker, draw_overlay
from .live import LiveOverlay, display_available
from .writer import OverlayWriter, render_overlay_file

__all__ = ["LiveOverlay", "OverlayState", "OverlayTracker", "OverlayWriter", "display_available", "draw_overlay",
           "render_overlay_file"]
