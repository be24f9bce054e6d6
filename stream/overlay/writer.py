"""Writing overlay video: an mp4 writer, and `render_overlay_file`, the second pass over a file at
native rate (so the result plays smoothly whatever frame rate the analysis sampled at)."""
from __future__ import annotations

import os
import secrets
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Optional

import av
import cv2
import numpy as np

from models.errors import UserError, one_line
from models.media import DamagedPackets, decode_packets, media_t0

from ..sources.files import URL_RE, URL_TIMEOUT, check_local_file, describe_open_error
from .draw import OverlayTracker, draw_overlay

# Containers that take the writer's H.264 (or MPEG-4) video and AAC audio; not .webm (VP8/VP9 + Opus only).
OVERLAY_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv")


def _video_codec() -> str:
    for name in ("libx264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:
            continue
    raise UserError("this FFmpeg build has neither libx264 nor mpeg4 encoders; cannot write the overlay video")


class OverlayWriter:
    """mp4 (H.264 yuv420p, or MPEG-4 part 2 without libx264) with optional AAC mono audio.

    Odd frame sizes are cropped by one pixel (yuv420p needs even dimensions). Timestamps come from
    media time `t`, so variable frame rates and gaps are kept as they were.

    The video is written to a hidden temporary file beside `path` and moved into place by `close()`
    only when it is complete; `abort()` (or leaving a `with` block on an exception) removes it, so a
    failed run never leaves a half-written file nor clobbers what `path` held before.
    """

    def __init__(self, path: str, width: int, height: int, fps: float, with_audio: bool,
                 audio_rate: int = 48000) -> None:
        self.path = str(path)
        self.width, self.height = width - width % 2, height - height % 2
        if self.width < 2 or self.height < 2:
            raise UserError(f"cannot write {path}: frame size {width}x{height} is too small")
        target = Path(self.path)
        # Beside the target (same file system: os.replace is atomic), same extension (the container
        # format follows the file name), hidden; av.open creates it with the usual permissions.
        self.tmp_path = str(target.with_name(f".{target.stem}.{secrets.token_hex(4)}.partial{target.suffix}"))
        try:
            self._out = av.open(self.tmp_path, mode="w")
        except Exception as exc:
            _remove(self.tmp_path)
            raise UserError(f"cannot write {path}: {one_line(exc)}") from None
        self._closed = False
        try:
            self._add_streams(fps, with_audio, audio_rate)
        except BaseException:
            self.abort()
            raise

    def _add_streams(self, fps: float, with_audio: bool, audio_rate: int) -> None:
        self._tb = Fraction(1, 1000)  # ms timestamps: any fps, variable rate
        rate = Fraction(fps).limit_denominator(1001) if fps and fps > 0 else Fraction(30)
        self._v = self._out.add_stream(_video_codec(), rate=rate)
        self._v.width, self._v.height, self._v.pix_fmt = self.width, self.height, "yuv420p"
        self._v.time_base = self._tb
        self._v.codec_context.time_base = self._tb
        if self._v.codec_context.name == "libx264":
            self._v.options = {"crf": "23", "preset": "veryfast"}
        else:
            self._v.bit_rate = 2_000_000
        self._last_pts = -1
        self.frames = 0
        self._a = None
        if with_audio:
            self.audio_rate = int(audio_rate)
            self._a = self._out.add_stream("aac", rate=self.audio_rate, layout="mono")
            self._resampler: Optional[av.AudioResampler] = None
            self._resampler_rate: Optional[int] = None
            self._audio_pos = 0  # samples written so far at audio_rate

    def write_video(self, image_rgb: np.ndarray, t: float) -> None:
        img = np.ascontiguousarray(image_rgb[: self.height, : self.width], dtype=np.uint8)
        if img.shape[0] != self.height or img.shape[1] != self.width:
            img = cv2.resize(img, (self.width, self.height), interpolation=cv2.INTER_AREA)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        pts = max(int(round(t / self._tb)), self._last_pts + 1)  # strictly increasing for the muxer
        frame.pts, frame.time_base = pts, self._tb
        self._last_pts = pts
        self._out.mux(self._v.encode(frame))
        self.frames += 1

    def write_audio(self, samples_f32_mono: np.ndarray, t: float, rate: int) -> None:
        if self._a is None:
            return
        data = np.ascontiguousarray(samples_f32_mono, dtype=np.float32).reshape(-1)
        if rate != self.audio_rate:
            if self._resampler is None or self._resampler_rate != rate:
                self._resampler = av.AudioResampler(format="flt", layout="mono", rate=self.audio_rate)
                self._resampler_rate = rate
            src = av.AudioFrame.from_ndarray(data.reshape(1, -1), format="flt", layout="mono")
            src.sample_rate = rate
            data = np.concatenate([f.to_ndarray().reshape(-1) for f in self._resampler.resample(src)] or
                                  [np.zeros(0, np.float32)])
        # Keep audio on the media clock: fill gaps with silence, drop what overlaps what was written.
        start = int(round(t * self.audio_rate))
        if start > self._audio_pos + self.audio_rate // 20:
            data = np.concatenate([np.zeros(start - self._audio_pos, np.float32), data])
        elif start < self._audio_pos - self.audio_rate // 20:
            data = data[self._audio_pos - start:]
        if data.size:
            self._encode_audio(data)

    def _encode_audio(self, data: np.ndarray) -> None:
        frame = av.AudioFrame.from_ndarray(data.reshape(1, -1).astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = self.audio_rate
        frame.pts, frame.time_base = self._audio_pos, Fraction(1, self.audio_rate)
        self._audio_pos += data.size
        self._out.mux(self._a.encode(frame))

    def close(self) -> None:
        """Flush the encoders, finish the file and move it into place."""
        if self._closed:
            return
        self._closed = True
        try:
            self._out.mux(self._v.encode(None))
            if self._a is not None:
                self._out.mux(self._a.encode(None))
            self._out.close()
            os.replace(self.tmp_path, self.path)
        except BaseException:
            self._discard()
            raise

    def abort(self) -> None:
        """Drop what was written: `path` is left as it was before."""
        if self._closed:
            return
        self._closed = True
        self._discard()

    def _discard(self) -> None:
        try:
            self._out.close()
        except Exception:
            pass
        _remove(self.tmp_path)

    def __enter__(self) -> "OverlayWriter":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def render_overlay_file(source_path: str, events: Iterable[dict], out_path: str, blur_faces: bool = False) -> int:
    """Second pass over a file: every frame at native rate with the estimate as of its time, plus the
    original audio (mono AAC), faces blurred with `blur_faces`. Returns the number of frames written."""
    evs = list(events)
    # Sentiment counts from its `t`; transcript from its end, when its words had been heard.
    timeline = sorted(
        ((float(e.get("t_end", e.get("t", 0.0))) if e.get("type") == "transcript" else float(e.get("t", 0.0)), i, e)
         for i, e in enumerate(evs) if e.get("type") in ("sentiment", "transcript")),
        key=lambda x: (x[0], x[1]))
    is_url = bool(URL_RE.match(str(source_path)))
    if not is_url:
        check_local_file(source_path)
    try:
        src = av.open(str(source_path), timeout=URL_TIMEOUT) if is_url else av.open(str(source_path))
    except Exception as exc:
        raise UserError(describe_open_error(str(source_path), exc, is_url=is_url)) from None
    with src:
        if not src.streams.video:
            raise UserError(f"{source_path} has no video stream to draw the overlay on")
        vs = src.streams.video[0]
        aus = src.streams.audio[0] if src.streams.audio else None
        rate = vs.average_rate or vs.guessed_rate or 30
        t0 = media_t0(src)
        a_rate = aus.codec_context.sample_rate if aus is not None else 48000
        if a_rate not in (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000):
            a_rate = 48000
        tracker, k = OverlayTracker(blur_faces=blur_faces), 0
        resampler = av.AudioResampler(format="flt", layout="mono", rate=a_rate) if aus is not None else None
        writer = OverlayWriter(out_path, vs.codec_context.width, vs.codec_context.height, float(rate),
                               with_audio=aus is not None, audio_rate=a_rate)
        a_pos: Optional[float] = None
        try:
            # Damaged packets are skipped: keep what decodes, as the analysis pass did.
            for stream, frame in decode_packets(src, *[s for s in (vs, aus) if s is not None], damaged=DamagedPackets()):
                ft = 0.0 if frame.time is None else max(0.0, frame.time - (t0 or 0.0))
                if stream is vs:
                    while k < len(timeline) and timeline[k][0] <= ft + 1e-6:
                        tracker.feed(timeline[k][2])
                        k += 1
                    writer.write_video(draw_overlay(frame.to_ndarray(format="rgb24"), tracker.state()), ft)
                else:
                    assert resampler is not None
                    a_pos = ft if a_pos is None else a_pos
                    for out in resampler.resample(frame):
                        data = out.to_ndarray().reshape(-1)
                        writer.write_audio(data, a_pos, a_rate)
                        a_pos += data.size / a_rate
        except BaseException:  # failed or interrupted: the target keeps what it held
            writer.abort()
            raise
        writer.close()
    return writer.frames
