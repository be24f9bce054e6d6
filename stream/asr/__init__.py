"""Streaming speech recognition: one shared faster-whisper model per process (`load_whisper`), one
`StreamingTranscriber` per stream (rolling buffer + LocalAgreement), passes decoded by a
`ShortPassDecoder` (encoder window sized to the audio) or batched across streams
(`WhisperBatcher`). faster-whisper's internals are touched only in `pass_decoder`."""
from __future__ import annotations

from .agreement import Word
from .batching import BatchedPassDecoder, WhisperBatcher
from .model import load_whisper
from .pass_decoder import Decoded, PassDecoder, ShortPassDecoder
from .transcriber import StreamingTranscriber, TranscriptUpdate, commit_pass_decoder, short_pass_decoder

__all__ = [
    "BatchedPassDecoder", "Decoded", "PassDecoder", "ShortPassDecoder", "StreamingTranscriber",
    "TranscriptUpdate", "WhisperBatcher", "Word", "commit_pass_decoder", "load_whisper", "short_pass_decoder",
]
