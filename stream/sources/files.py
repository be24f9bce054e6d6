"""Files, URLs and capture devices through PyAV (FFmpeg) -> one time-ordered stream of video frames
and audio chunks.

Any problem the user can fix (bad path, no camera, URL down, broken file) is a `UserError` with one
line naming the source and what to do.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import av

from models.errors import UserError, one_line
from models.media import DamagedPackets, UndecodedPackets, decode_packets, decode_sampled, media_t0

from .audio import SAMPLE_RATE, AudioResampler
from .base import AudioChunk, MediaItem, MediaSource, SourceInfo, VideoFrame
from .policy import FramePolicy

# URL schemes whose streams are live by nature (pace themselves, never "end" early).
LIVE_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "udp", "srt", "rtp", "tcp"})
# Seconds to wait for a URL to answer, and for each read once it did.
URL_TIMEOUT = (5.0, 5.0)
URL_RE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def describe_open_error(spec: str, exc: BaseException, *, is_url: bool, elapsed: float = 0.0) -> str:
    """One line for a failed `av.open` of `spec` (that took `elapsed` s), naming the source and what to do."""
    msg = one_line(exc).replace(f": '{spec}'", "")
    if is_url:
        # FFmpeg reports its own timeout as "Immediate exit requested" or "Invalid data": go by the clock.
        timed_out = elapsed >= 0.9 * URL_TIMEOUT[0] or isinstance(exc, TimeoutError)
        what = f"did not answer within {URL_TIMEOUT[0]:.0f} s" if timed_out else "could not be opened"
        return f"{spec} {what} ({msg}); check the address and that the stream is running"
    return (f"{spec} is not a readable media file, or its header is corrupt or missing as in a truncated "
            f"recording ({msg}); "
            f"check the file or re-encode it, e.g. ffmpeg -i IN -c:v libx264 -c:a aac OUT.mp4")


def check_local_file(spec: str) -> None:
    """Fail early and clearly on problems FFmpeg would only describe vaguely."""
    path = Path(spec)
    if not path.exists():
        raise UserError(f"{spec}: no such file; check the path (or use --source demo, a camera index or a URL)")
    if path.is_dir():
        raise UserError(f"{spec} is a directory; pass a media file inside it")
    if path.is_file() and path.stat().st_size == 0:
        raise UserError(f"{spec} is empty (0 bytes); re-record or re-export it")


# Frames above this many pixels are decoded with FFmpeg's frame threads. Below it one thread costs
# less CPU in all: threads cost ~20 % more CPU on 640x480 H.264 (0.19 vs 0.16 s for 30 s with 2 of
# 30 frames decoded, `scripts/bench.py --webcam`), and one thread decodes 720p30 in ~3 % of a core.
THREADED_DECODE_PIXELS = 1920 * 1080


def threaded_decode(codec_context: Any) -> bool:
    """Whether a video this size is worth FFmpeg's decoder threads (its own total CPU goes up)."""
    return (codec_context.width or 0) * (codec_context.height or 0) > THREADED_DECODE_PIXELS


class AvSource(MediaSource):
    """Files, URLs and capture devices through PyAV (FFmpeg): first video + first audio stream."""

    def __init__(self, spec: str, *, realtime: bool = False) -> None:
        super().__init__()
        self.spec = spec
        m = URL_RE.match(spec)
        self.scheme = m.group(1).lower() if m else None
        self.is_device = spec.startswith("/dev/")
        self.live = (self.scheme in LIVE_SCHEMES) or self.is_device
        # realtime=True paces a file at its native rate: the pipeline sees it exactly like a live feed.
        self.pace = realtime and not self.live
        self._container: Any = None
        self._video: Any = None
        self._audio: Any = None
        self._t0: Optional[float] = None
        self.paced_seconds = 0.0  # wall time slept to pace a file (--realtime): not decode work
        self.damaged = DamagedPackets()  # packets skipped: a file with any fails at its end; live goes on
        self.undecoded = UndecodedPackets()  # video packets no kept frame needed (sampled files)

    # -- open -----------------------------------------------------------------------------------
    def _open(self) -> SourceInfo:
        if self.scheme is None and not self.is_device:
            check_local_file(self.spec)
        kwargs: dict[str, Any] = {}
        if self.scheme is not None:
            kwargs["timeout"] = URL_TIMEOUT
            if self.scheme in ("rtsp", "rtsps"):
                # TCP interleaving works through NAT/firewalls; UDP often silently gets nothing.
                kwargs["options"] = {"rtsp_transport": "tcp"}
        if self.is_device:
            kwargs["format"] = "v4l2"
        started = time.monotonic()
        try:
            container = av.open(self.spec, **kwargs)
        except Exception as exc:  # av.FFmpegError, OSError, ...: all mean "cannot open"
            raise UserError(describe_open_error(self.spec, exc, is_url=self.scheme is not None,
                                                elapsed=time.monotonic() - started)) from None
        try:
            info = self._probe(container)
        except BaseException:
            container.close()
            raise
        self._container = container
        return info

    def _probe(self, container: Any) -> SourceInfo:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        if video is None and audio is None:
            raise UserError(f"{self.spec} has no video and no audio stream; pass a video or audio file")
        for st in (video, audio):
            if st is not None and st.codec_context is None:  # PyAV's FFmpeg has no decoder for it
                raise UserError(f"{self.spec}: its {st.type} codec is not supported (no decoder in PyAV's FFmpeg); "
                                f"re-encode it, e.g. ffmpeg -i IN -c:v libx264 -c:a aac OUT.mp4")
        self._video, self._audio = video, audio
        self._t0 = media_t0(container)
        duration = None if self.live or container.duration is None else container.duration / av.time_base
        fps = None
        if video is not None:
            rate = video.average_rate or video.guessed_rate or video.base_rate
            fps = float(rate) if rate else None
        kind = "live stream" if self.live else ("file (real time)" if self.pace else "file")
        return SourceInfo(
            description=f"{kind} {self.spec}",
            live=self.live or self.pace,
            has_video=video is not None,
            has_audio=audio is not None,
            duration=duration,
            fps=fps,
            width=video.codec_context.width if video is not None else None,
            height=video.codec_context.height if video is not None else None,
        )

    # -- frames ---------------------------------------------------------------------------------
    def _is_open(self) -> bool:
        return self._container is not None

    def _items(self, policy: Optional[FramePolicy]) -> Iterator[MediaItem]:
        return self._decode(policy)

    def _rel(self, time_s: Optional[float]) -> Optional[float]:
        if time_s is None:
            return None
        if self._t0 is None:  # no container start time: the first timestamp seen is media time 0
            self._t0 = time_s
        return max(0.0, time_s - self._t0)

    def _decode(self, policy: Optional[FramePolicy]) -> Iterator[MediaItem]:
        streams = [s for s in (self._video, self._audio) if s is not None]
        if self._video is not None and threaded_decode(self._video.codec_context):
            self._video.codec_context.thread_type = "AUTO"
        resampler = AudioResampler() if self._audio is not None else None
        next_audio_t: Optional[float] = None  # media time of the next resampled sample
        last_t = 0.0
        start_wall: Optional[float] = None
        error: Optional[BaseException] = None
        damaged = self.damaged

        def pace(t: float) -> bool:
            """Sleep until the item is due; False if close() was called meanwhile."""
            nonlocal start_wall
            if not self.pace:
                return not self._stop.is_set()
            now = time.perf_counter()
            if start_wall is None:
                start_wall = now - t
            delay = start_wall + t - now
            if delay <= 0:
                return not self._stop.is_set()
            stopped = self._stop.wait(delay)
            self.paced_seconds += time.perf_counter() - now
            return not stopped

        try:
            # Damaged packets are skipped (live streams recover at the next keyframe); files report them at the end.
            for stream, frame, decided in self._frames(streams, policy, damaged):
                if self._stop.is_set():
                    return
                if stream is self._video:
                    t = self._rel(frame.time)
                    t = last_t if t is None else t
                    if policy is None:
                        keep, image, display, detail = None, frame.to_ndarray(format="rgb24"), None, None
                    else:  # skipped frames stay YUV: only their time is passed on
                        keep = decided if decided is not None else policy.keep(t)
                        image, display, detail = policy.pixels(frame, keep)
                    if not pace(t):
                        return
                    last_t = max(last_t, t)
                    yield VideoFrame(t=t, image=image, wall=time.perf_counter(), keep=keep, display=display, detail=detail)
                else:
                    assert resampler is not None
                    t_in = self._rel(frame.time)
                    samples = resampler.resample(frame)
                    # Stamp chunks by counting samples (the resampler delays a little); re-sync only on
                    # a real gap so that timestamps stay continuous for the ASR buffer.
                    if next_audio_t is None or (t_in is not None and abs(t_in - next_audio_t) > 0.5):
                        next_audio_t = t_in if t_in is not None else last_t
                    if samples.size == 0:
                        continue
                    t = next_audio_t
                    next_audio_t += samples.size / SAMPLE_RATE
                    if not pace(t):
                        return
                    last_t = max(last_t, t)
                    yield AudioChunk(t=t, samples=samples, wall=time.perf_counter())
        except (av.FFmpegError, OSError, ValueError) as exc:  # demuxer gave up: nothing more to read
            if self._stop.is_set():  # close() from another thread can surface as an I/O error
                return
            error = exc
            if self.live:
                raise UserError(f"{self.spec}: stream broke off at {last_t:.1f} s ({one_line(exc)}); "
                                f"check that the stream is still running") from None
        if resampler is not None and next_audio_t is not None:
            tail = resampler.flush()
            if tail.size:
                yield AudioChunk(t=next_audio_t, samples=tail, wall=time.perf_counter())
        error = error or damaged.first
        if error is not None and not self.live:
            raise UserError(f"{self.spec}: decoding failed at {last_t:.1f} s ({one_line(error)}); the file is "
                            f"truncated or corrupt, results up to there are kept") from None
        self._check_complete(last_t)

    def _frames(self, streams: list[Any], policy: Optional[FramePolicy],
                damaged: DamagedPackets) -> Iterator[tuple[Any, Any, Optional[bool]]]:
        """(stream, frame, keep decided at the packet or None). A file sampled without a display
        decodes only the video packets its kept frames depend on (`decode_sampled`); live sources
        and full-frame consumers decode every packet."""
        if policy is None or policy.display or self.live or self._video is None:
            for stream, frame in decode_packets(self._container, *streams, damaged=damaged):
                yield stream, frame, None
            return

        def keep(time_s: float) -> bool:
            t = self._rel(time_s)
            return policy.keep(0.0 if t is None else t)

        others = [s for s in streams if s is not self._video]
        yield from decode_sampled(self._container, self._video, *others, keep=keep, damaged=damaged,
                                  undecoded=self.undecoded)

    @property
    def frames_undecoded(self) -> int:
        """Video frames never decoded: after a GOP's last kept frame (never part of `frames`)."""
        return self.undecoded.count

    def _check_complete(self, last_t: float) -> None:
        # A file cut short (interrupted download/recording) often just ends without a decode error:
        # compare against the duration its header promised.
        dur = self.info.duration if self.info else None
        if self.live or dur is None or self._stop.is_set():
            return
        if dur - last_t > max(1.0, 0.1 * dur):
            raise UserError(f"{self.spec}: media ends at {last_t:.1f} s but the header says {dur:.1f} s; the file "
                            f"is truncated, results up to there are kept")

    # -- close ----------------------------------------------------------------------------------
    def _release(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:
                pass
            self._container = None
