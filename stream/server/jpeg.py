"""JPEG frames of `/ws` clients, decoded with bounded memory and concurrency.

A frame is checked before it is decoded: its first bytes must be a JPEG's (a PNG, say, is refused
at once) and its size comes from the JPEG header alone (Pillow's JPEG parser reads the markers up
to the first scan, no pixels). Frames larger than `server.max_video_width` x `max_video_height`
are scaled down like WebRTC video (aspect kept): the decoder shrinks by 2, 4 or 8 in the DCT
(Pillow's draft mode, libjpeg's scaled decoding), so a big baseline frame never exists at full
size in memory, and then resizes the rest of the way. What would still cost too much is refused
before decoding: more than `MAX_SCALE`^2 times the maximum pixel count, or a progressive JPEG
(libjpeg keeps every coefficient of those, whatever the scale) over `PROGRESSIVE_FACTOR` times it.
At most `concurrency` frames decode at once (the others wait their turn), in the given executor.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import io
from typing import Optional

import numpy as np
from PIL import ExifTags, Image, ImageOps, JpegImagePlugin

from ..sources.webrtc import fit_within

JPEG_MAGIC = b"\xff\xd8\xff"
MAX_SCALE = 6  # frames up to 6x the maximum width and height in pixels (7680x4320 for 1280x720) are scaled down
PROGRESSIVE_FACTOR = 4  # progressive JPEGs up to 4x the maximum pixel count (decoded whole)
DECODE_CONCURRENCY = 2


class FrameRefused(ValueError):
    """A frame that is not decoded: `code` is the /ws error code ("bad_message" or "too_large")."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def jpeg_size(data: bytes) -> tuple[JpegImagePlugin.JpegImageFile, int, int]:
    """The JPEG's header parsed (no pixels decoded yet) and its width and height; FrameRefused when
    the bytes are not a JPEG."""
    if not data.startswith(JPEG_MAGIC):
        kind = "a PNG" if data.startswith(b"\x89PNG") else "not a JPEG"
        raise FrameRefused("bad_message", f"video payload is {kind} image: send each frame as one JPEG")
    try:
        # The JPEG plugin's parser itself: Image.open would also guess other formats and warn about
        # large images before our own limits apply.
        im = JpegImagePlugin.JpegImageFile(io.BytesIO(data))
    except (SyntaxError, OSError, ValueError, EOFError) as exc:
        raise FrameRefused("bad_message", f"video payload is not a JPEG image: {exc}") from None
    width, height = im.size
    if width < 1 or height < 1:
        raise FrameRefused("bad_message", f"video payload is not a JPEG image: size {width}x{height}")
    return im, width, height


class JpegDecoder:
    """Decodes `/ws` JPEG frames to RGB arrays fitting `max_size` (width, height)."""

    def __init__(self, max_size: tuple[int, int], executor: Optional[concurrent.futures.Executor] = None,
                 concurrency: int = DECODE_CONCURRENCY) -> None:
        self.max_size = max_size
        self.executor = executor
        self.concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self.decoding = 0  # frames in the executor now
        self.peak = 0  # the most frames ever decoding at once

    def limits(self, width: int, height: int, progressive: bool) -> None:
        """FrameRefused("too_large") for a frame that would cost too much to decode."""
        max_w, max_h = self.max_size
        pixels, budget = width * height, max_w * max_h
        if pixels > MAX_SCALE * MAX_SCALE * budget:
            raise FrameRefused("too_large", (
                f"JPEG frame of {width}x{height} is too large: frames of up to {MAX_SCALE * MAX_SCALE * budget} pixels "
                f"({MAX_SCALE * max_w}x{MAX_SCALE * max_h}) are scaled to fit {max_w}x{max_h} "
                "(server.max_video_width/height); send smaller frames"))
        if progressive and pixels > PROGRESSIVE_FACTOR * budget:
            raise FrameRefused("too_large", (
                f"progressive JPEG frame of {width}x{height} is too large (progressive frames are decoded whole: at most "
                f"{PROGRESSIVE_FACTOR * budget} pixels); send baseline JPEG or frames of at most {max_w}x{max_h}"))

    def decode_sync(self, data: bytes) -> np.ndarray:
        """The frame as an RGB uint8 array (height, width, 3) that fits max_size; FrameRefused if not."""
        im, width, height = jpeg_size(data)
        self.limits(width, height, bool(im.info.get("progressive") or im.info.get("progression")))
        try:
            # A camera's orientation tag turns the frame (as cv2.imdecode did): the turned frame must fit.
            turned = im.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
            if turned:
                fit_h, fit_w = fit_within(height, width, self.max_size)
                target = (fit_w, fit_h)
            else:
                target = fit_within(width, height, self.max_size)
            if target != (width, height):
                im.draft("RGB", target)  # DCT scaling: decodes at 1/2, 1/4 or 1/8, never below the target
            im.load()
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            if rgb.size != target:
                rgb = rgb.resize(target, Image.Resampling.BILINEAR)
            ImageOps.exif_transpose(rgb, in_place=True)
            return np.array(rgb)
        except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt scan data
            raise FrameRefused("bad_message", f"video payload is not a decodable JPEG image: {exc}") from None
        finally:
            im.close()

    async def decode(self, data: bytes) -> np.ndarray:
        """decode_sync in the executor, at most `concurrency` at a time."""
        async with self._slots:
            self.decoding += 1
            self.peak = max(self.peak, self.decoding)
            try:
                return await asyncio.get_running_loop().run_in_executor(self.executor, self.decode_sync, data)
            finally:
                self.decoding -= 1
