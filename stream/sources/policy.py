"""Which decoded frames become pixels, and at what size: the `FramePolicy` a source decodes with.

Decoding a 30 fps camera or file costs little next to turning every frame into a full-size RGB
array, and the sampler keeps only ~2 of 30 frames a second. With a policy, a source asks the
stream's sampler about each frame first: a skipped frame stays a YUV frame in FFmpeg (only its time
moves on), a kept one is converted by swscale straight to the size CLIP needs (short side = the
model's input size, the same cover-then-centre-crop rule the backbone applies) in the same call.
Full-size RGB is made only where something shows every frame (`display`: a live overlay).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

import numpy as np

from models.sampling import FrameSampler

# swscale's filters widen when shrinking (anti-aliased), like the backbone's own antialiased resize.
# Sessions pass the tower's interpolation (bicubic for CLIP towers, bilinear for SigLIP); measured on
# 640x480 frames vs the full-size path, ViT-B-32 random weights: cosine >= 0.999.
INTERPOLATION = "BILINEAR"


def cover_size(width: int, height: int, target: tuple[int, int]) -> tuple[int, int]:
    """(w, h) of a frame scaled so it covers `target` (h, w) with its aspect kept: the resize
    step of the backbone's preprocessing (it then centre-crops), so its own resize becomes identity."""
    th, tw = target
    scale = max(th / height, tw / width)
    return max(tw, round(width * scale)), max(th, round(height * scale))


def scaled_rgb(frame: Any, width: int, height: int, interpolation: str = INTERPOLATION) -> np.ndarray:
    """An `av.VideoFrame` scaled by swscale to (height, width, 3) RGB uint8.

    swscale writes planar RGB (gbrp; PyAV hands it back as packed RGB), not packed rgb24: on
    640x480 -> 299x224 bicubic that costs 0.57 ms against 1.02 ms with the same pixels, and at
    some output widths (224, 398: a 720p frame's CLIP size) swscale's scaled rgb24 writer is
    wrong: against torch's antialiased bicubic resize of the full RGB frame, a 720p camera frame
    is off by mean 2.4 / max 233 levels that way and 1.2 / 56 planar."""
    return frame.reformat(width=width, height=height, format="gbrp", interpolation=interpolation).to_ndarray()


class Pixels(NamedTuple):
    """What a source makes of one frame under a policy."""

    image: Optional[np.ndarray]  # for CLIP, if kept
    display: Optional[np.ndarray]  # full size, every frame, if the policy has `display`
    detail: Optional[np.ndarray]  # full size, if kept and the policy has `detail`


@dataclass(frozen=True)
class FramePolicy:
    """The stream's frame sampler (shared with its VideoBranch, which may lower its rate), the CLIP
    input size (h, w) (None: keep frames full size), whether every frame is also needed full size
    (`display`) and whether kept frames are (`detail`: per-face crops and detection)."""

    sampler: FrameSampler
    size: Optional[tuple[int, int]] = None
    display: bool = False
    interpolation: str = INTERPOLATION
    detail: bool = False

    def keep(self, t: float) -> bool:
        return self.sampler.keep(t)

    def pixels(self, frame: Any, keep: bool) -> Pixels:
        """The images of one `av.VideoFrame` the policy asks for."""
        display = frame.to_ndarray(format="rgb24") if self.display else None
        if not keep:
            return Pixels(None, display, None)
        full = display
        if full is None and (self.detail or self.size is None):
            full = frame.to_ndarray(format="rgb24")
        detail = full if self.detail else None
        if self.size is None:
            return Pixels(full, display, detail)
        w, h = cover_size(frame.width, frame.height, self.size)
        if (w, h) == (frame.width, frame.height) and full is not None:
            return Pixels(full, display, detail)
        return Pixels(scaled_rgb(frame, w, h, self.interpolation), display, detail)
