"""One stream's pipeline: video and audio branches, a file or live clock, the summary."""
from __future__ import annotations

from .branches import AudioBranch, VideoBranch
from .clocks import Clock, FileClock, LiveClock
from .progress import Progress
from .session import StreamSession

__all__ = ["AudioBranch", "Clock", "FileClock", "LiveClock", "Progress", "StreamSession", "VideoBranch"]
