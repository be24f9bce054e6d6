"""Audio plumbing: any PyAV audio frame -> float32 mono 16 kHz numpy, the format Whisper and VAD expect.

Resampling is done by FFmpeg's swresample through PyAV, never by hand: it handles every sample
format, channel layout and rate a camera, file or WebRTC track can hand us.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import av
import numpy as np

from models.errors import UserError
from models.media import DamagedPackets, decode_packets

from .base import SAMPLE_RATE


class AudioResampler:
    """Turns `av.AudioFrame`s of any format/rate/layout into float32 mono 16 kHz numpy arrays.

    PyAV's resampler is bound to the first frame's format; live sources (WebRTC renegotiation,
    concatenated files) can change it mid-stream, so we flush and rebuild when the input changes.
    """

    def __init__(self, rate: int = SAMPLE_RATE) -> None:
        self.rate = rate
        self._resampler: Optional[av.AudioResampler] = None
        self._input_key: Optional[tuple[str, str, int]] = None

    @staticmethod
    def _key(frame: av.AudioFrame) -> tuple[str, str, int]:
        return (frame.format.name, frame.layout.name, frame.sample_rate)

    def _new_resampler(self) -> av.AudioResampler:
        return av.AudioResampler(format="flt", layout="mono", rate=self.rate)

    def resample(self, frame: av.AudioFrame) -> np.ndarray:
        """Resample one frame; may return fewer/more samples than the exact ratio (filter delay)."""
        chunks: list[np.ndarray] = []
        key = self._key(frame)
        if self._resampler is None or key != self._input_key:
            if self._resampler is not None:
                chunks.append(self._drain())
            self._resampler = self._new_resampler()
            self._input_key = key
        chunks.extend(_to_numpy(f) for f in self._resampler.resample(frame))
        return _concat(chunks)

    def flush(self) -> np.ndarray:
        """Samples still held in the resampler's delay line (call at end of stream)."""
        if self._resampler is None:
            return np.zeros(0, dtype=np.float32)
        out = self._drain()
        self._resampler = None
        self._input_key = None
        return out

    def _drain(self) -> np.ndarray:
        assert self._resampler is not None
        return _concat([_to_numpy(f) for f in self._resampler.resample(None)])


def _to_numpy(frame: av.AudioFrame) -> np.ndarray:
    # Packed "flt" mono: shape (1, n) float32.
    return np.ascontiguousarray(frame.to_ndarray().reshape(-1), dtype=np.float32)


def _concat(chunks: list[np.ndarray]) -> np.ndarray:
    chunks = [c for c in chunks if c.size]
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


def load_audio_16k(path: str | Path) -> np.ndarray:
    """Decode a file's first audio stream to float32 mono 16 kHz."""
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise UserError(f"cannot open media file {path}: {exc}") from None
    with container:
        if not container.streams.audio:
            raise UserError(f"{path} has no audio stream")
        stream = container.streams.audio[0]
        resampler = AudioResampler()
        chunks: list[np.ndarray] = []
        damaged = DamagedPackets()
        try:
            for _, frame in decode_packets(container, stream, damaged=damaged):
                chunks.append(resampler.resample(frame))
        except av.FFmpegError as exc:
            raise UserError(f"cannot decode audio in {path}: {exc}") from None
        if damaged.first is not None:  # whole-file audio is all or nothing
            raise UserError(f"cannot decode audio in {path}: {damaged.first}")
        chunks.append(resampler.flush())
    return _concat(chunks)
