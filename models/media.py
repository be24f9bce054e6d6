"""PyAV (FFmpeg) decoding shared by the live pipeline, the overlay writer and training: where media
time 0 is, and one policy for damaged packets (skip the packet as ffmpeg does, count it, keep the
first error; the caller decides whether that fails the whole file)."""
from __future__ import annotations

from typing import Any, Iterator, Optional

import av


def media_t0(container: Any) -> Optional[float]:
    """First timestamp of the container in seconds (None if unknown): media time 0 of the stream."""
    start = container.start_time  # in AV_TIME_BASE (microseconds)
    if start is None:
        return None
    return float(start) / av.time_base


class DamagedPackets:
    """What `decode_packets` skipped: how many packets, and the first error (for the message)."""

    def __init__(self) -> None:
        self.count = 0
        self.first: Optional[BaseException] = None

    def add(self, exc: BaseException) -> None:
        self.count += 1
        self.first = self.first or exc


def decode_packets(container: Any, *streams: Any, damaged: DamagedPackets) -> Iterator[tuple[Any, Any]]:
    """(stream, frame) in demux order for `streams`; a packet that fails to decode (a cut-off file,
    a lost RTP packet) is skipped and recorded in `damaged`. Demuxer errors propagate."""
    for packet in container.demux(*streams):
        try:
            decoded = packet.decode()
        except (av.FFmpegError, ValueError) as exc:
            damaged.add(exc)
            continue
        for frame in decoded:
            yield packet.stream, frame
