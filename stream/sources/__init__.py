"""Media sources: camera, file, URL or WebRTC track -> time-ordered video frames and audio chunks.

`open_source(spec)` is the front door for a CLI `--source` value; `pump` runs a blocking source
into the event loop. Any problem the user can fix (bad path, no camera, URL down, broken file) is a
`UserError` with one line naming the source and what to do.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from models.errors import UserError

from .audio import SAMPLE_RATE, AudioResampler, load_audio_16k
from .base import AudioChunk, MediaItem, MediaSource, SourceInfo, VideoFrame
from .files import AvSource, check_local_file, describe_open_error
from .policy import FramePolicy, cover_size
from .pump import MediaSink, pump

__all__ = [
    "SAMPLE_RATE", "AudioChunk", "AudioResampler", "AvSource", "FramePolicy", "MediaItem", "MediaSink", "MediaSource",
    "SourceInfo", "VideoFrame", "check_local_file", "cover_size", "demo_path", "describe_open_error", "load_audio_16k",
    "open_source", "pump",
]

SAMPLES_DIR = Path(__file__).resolve().parents[2] / "samples"


def demo_path(samples_dir: Optional[Path] = None) -> Path:
    return Path(samples_dir if samples_dir is not None else SAMPLES_DIR) / "demo.mp4"


def open_source(spec: str, *, realtime: bool = False, samples_dir: Optional[Path] = None) -> MediaSource:
    """Build (not yet open) the source for a CLI `--source` value: camera index, "demo", path or URL."""
    spec = spec.strip()
    if spec.isdigit():
        from .camera import CameraSource  # OpenCV only when a camera is asked for

        return CameraSource(int(spec))
    if spec == "demo":
        path = demo_path(samples_dir)
        if not path.is_file():
            raise UserError(f"the demo sample {path} is missing; create it with: python scripts/make_sample.py")
        return AvSource(str(path), realtime=realtime)
    return AvSource(spec, realtime=realtime)
