"""PyAV (FFmpeg) decoding shared by the live pipeline, the overlay writer and training: where media
time 0 is, and one policy for damaged packets (skip the packet as ffmpeg does, count it, keep the
first error; the caller decides whether that fails the whole file)."""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

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
        for frame in _decode(packet, damaged):
            yield packet.stream, frame


def _decode(packet: Any, damaged: DamagedPackets) -> list[Any]:
    """The packet's frames; none if it fails to decode (recorded in `damaged`)."""
    try:
        return packet.decode()
    except (av.FFmpegError, ValueError) as exc:
        damaged.add(exc)
        return []


# Look-ahead bound of `decode_sampled`, in packets of all its streams: a longer GOP is decoded whole.
MAX_GOP_PACKETS = 2048


class UndecodedPackets:
    """How many video packets `decode_sampled` never decoded (no kept frame depended on them)."""

    def __init__(self) -> None:
        self.count = 0


def decode_sampled(container: Any, video: Any, *others: Any, keep: Callable[[float], bool],
                   damaged: DamagedPackets, undecoded: Optional[UndecodedPackets] = None,
                   ) -> Iterator[tuple[Any, Any, Optional[bool]]]:
    """(stream, frame, keep) in demux order, for a video whose frames a sampler thins out, e.g. 2 of
    30 a second: `keep(t)` (media seconds, called once per video frame in time order) says which.

    Reads one GOP ahead (bounded by MAX_GOP_PACKETS) and decodes only the video packets a kept
    frame depends on: in a stream without frame reordering each frame needs only earlier frames of
    its GOP, so the packets after the GOP's last kept frame up to the next keyframe are never
    decoded (half of H.264 decoding at 2 of 30 frames and a keyframe a second). Kept frames come
    out identical. Video frames carry `keep`; frames of `others` carry None. A stream that reorders
    frames (B-frames: a GOP may start with pictures that depend on the previous one) or whose
    packets lack timestamps is decoded whole, with `keep` asked at each frame instead."""
    tb = video.time_base
    reorders = bool(video.codec_context.has_b_frames)
    decisions: dict[int, bool] = {}  # video pts -> keep, for packets sent to the decoder
    group: list[Any] = []

    def decode(packet: Any) -> Iterator[tuple[Any, Any, Optional[bool]]]:
        for frame in _decode(packet, damaged):
            if packet.stream is not video:
                yield packet.stream, frame, None
            elif frame.pts is not None and frame.pts in decisions:
                yield video, frame, decisions.pop(frame.pts)
            else:
                yield video, frame, keep(float(frame.time)) if frame.time is not None else None

    def run(packets: list[Any], complete: bool) -> Iterator[tuple[Any, Any, Optional[bool]]]:
        """Decode one group; `complete`: it ends right before a keyframe, so its tail may be skipped."""
        pts = sorted(p.pts for p in packets if p.stream is video and p.pts is not None)
        kept = {v: keep(float(v * tb)) for v in pts}
        decisions.update(kept)
        last = len(packets)
        if complete:
            last = max((i for i, p in enumerate(packets) if p.stream is video and kept.get(p.pts)), default=-1)
        for i, packet in enumerate(packets):
            if i > last and packet.stream is video:
                decisions.pop(packet.pts, None)  # never decoded: no kept frame depends on it
                if undecoded is not None:
                    undecoded.count += 1
                continue
            yield from decode(packet)

    for packet in container.demux(video, *others):
        if reorders:
            yield from decode(packet)
            continue
        if packet.stream is video and packet.pts is None and packet.size:  # no timestamps: plan nothing
            reorders = True
            yield from run(group, complete=False)
            group = []
            yield from decode(packet)
            continue
        if packet.stream is video and packet.is_keyframe and group:
            yield from run(group, complete=True)
            group = []
        group.append(packet)
        if len(group) >= MAX_GOP_PACKETS:
            yield from run(group, complete=False)
            group = []
    yield from run(group, complete=False)
