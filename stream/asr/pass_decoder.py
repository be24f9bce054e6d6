"""One Whisper pass over a short buffer, with the encoder window sized to the audio.

faster-whisper pads every input to Whisper's 30 s window, so a pass over 3 s of speech pays for
30 s of encoder (with tiny.en on one CPU thread, ~290 of ~375 ms per pass), and its word-timestamp
seek often re-encodes the last fraction of a second as a second 30 s window. CTranslate2's
encoder accepts shorter inputs (whisper.cpp calls this `audio_ctx`): `ShortPassDecoder` encodes the
buffer plus `pad_seconds` of padding, decodes it once without timestamp tokens (words come from
faster-whisper's cross-attention alignment) and caps the token count so a repetition loop ends
early and is rejected by its compression ratio, as faster-whisper's fallback check would.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

FRAMES_PER_SECOND = 100  # log-mel frames (10 ms hop)
_HOP = 160  # samples per frame at 16 kHz
MAX_FRAMES = 3000  # Whisper's 30 s window
_TOKENS_PER_SECOND = 8  # generous for fast speech (300 wpm is ~6.5 tokens/s)
_MIN_NEW_TOKENS = 12
_MAX_COMPRESSION = 2.4  # faster-whisper's default: above it a decode is "too repetitive"
_PROMPT_TOKENS = 48  # previous-text tokens given to the decoder (~200 characters)


@dataclass(frozen=True, slots=True)
class DecodedWord:
    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True, slots=True)
class Decoded:
    """One decode of one window: the fields of faster-whisper's Segment that streaming uses."""

    words: list[DecodedWord]
    no_speech_prob: float
    avg_logprob: float


def encoder_frames(content_frames: int, pad_seconds: float) -> int:
    """Encoder input length for `content_frames` of audio: padded, even (stride-2 conv), <= 30 s."""
    frames = content_frames + int(round(pad_seconds * FRAMES_PER_SECOND))
    frames += frames % 2
    return min(max(frames, 2), MAX_FRAMES)


def compression_ratio(text: str) -> float:
    raw = text.encode("utf-8")
    return len(raw) / max(1, len(zlib.compress(raw)))


def _drop_restart(tokens: list[int], n: int = 4) -> list[int]:
    """Cut a decode where it starts over from its own beginning (a short window's typical
    failure: having read the audio once, the decoder reads it again instead of ending)."""
    head = tokens[:n]
    if len(head) == n:
        for k in range(1, len(tokens) - n + 1):
            if tokens[k:k + n] == head:
                return tokens[:k]
    return tokens


def _after_prefix(alignment: list[dict], n_tokens: int) -> list[dict]:
    """The aligned words after the first `n_tokens` tokens (a forced prefix); a word that straddles
    the boundary (a new token continuing the prefix's last word) goes with the prefix."""
    if not n_tokens:
        return alignment
    seen = 0
    for k, word in enumerate(alignment):
        if seen >= n_tokens:
            return alignment[k:]
        seen += len(word["tokens"])
    return []


class PassDecoder(Protocol):
    """What a transcriber decodes one pass with: a ShortPassDecoder, or a BatchedPassDecoder that
    joins other streams' passes."""

    def transcribe(self, audio: np.ndarray, prompt: Optional[str], beam_size: Optional[int] = None,
                   prefix: Optional[str] = None) -> list[Decoded]: ...


class ShortPassDecoder:
    """Transcribes buffers of at most 30 s with an encoder window of buffer + `pad_seconds`."""

    def __init__(self, model: "WhisperModel", language: Optional[str], beam_size: int, pad_seconds: float) -> None:
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self._model = model
        self._pad = pad_seconds
        self._beam_size = beam_size
        multilingual = model.model.is_multilingual
        if multilingual and not language:
            raise ValueError("asr.language is unset: language detection needs the stock 30 s window")
        self._tokenizer = Tokenizer(model.hf_tokenizer, multilingual, task="transcribe",
                                    language=language if multilingual else "en")
        self._suppress = list(get_suppressed_tokens(self._tokenizer, [-1]))

    def transcribe(self, audio: np.ndarray, prompt: Optional[str], beam_size: Optional[int] = None,
                   prefix: Optional[str] = None) -> list[Decoded]:
        """`audio` (float32 16 kHz, <= 30 s) -> at most one Decoded; `prompt` conditions the decoder;
        `beam_size` overrides the decoder's for this pass (a commit at a pause can afford a beam);
        `prefix`: text already known to be said at the start of `audio`, forced as the decoder's
        first tokens (the result holds only the words after it)."""
        return self.transcribe_batch([audio], [prompt], [beam_size], [prefix])[0]

    def transcribe_batch(self, audios: Sequence[np.ndarray], prompts: Sequence[Optional[str]],
                         beam_sizes: Optional[Sequence[Optional[int]]] = None,
                         prefixes: Optional[Sequence[Optional[str]]] = None) -> list[list[Decoded]]:
        """Several buffers (of several streams) in one encode, one decode and one alignment, each
        padded with silence to the longest one's window. CTranslate2 needs the prompts before the
        start-of-transcript token to be equally long and one beam size per batch, so prompts keep their
        last `_PROMPT_TOKENS` tokens and buffers with shorter ones (a stream's first sentences) or another
        beam size are decoded in a group of their own; prefixes (after that token) may differ in length."""
        tokenizer = self._tokenizer
        beams = [b or self._beam_size for b in (beam_sizes or [None] * len(audios))]
        forced = [tokenizer.encode(" " + p.strip()) if p else [] for p in (prefixes or [None] * len(audios))]
        previous = [tokenizer.encode(" " + p.strip())[-_PROMPT_TOKENS:] if p else [] for p in prompts]
        contents = [min(int(a.size // _HOP), MAX_FRAMES) for a in audios]
        out: list[list[Decoded]] = [[] for _ in audios]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, c in enumerate(contents):
            if c >= 2:  # under two frames there is nothing to encode
                groups.setdefault((len(previous[i]), beams[i]), []).append(i)
        for (_, beam), members in groups.items():
            decoded = self._decode([audios[i] for i in members], [previous[i] for i in members],
                                   [contents[i] for i in members], beam, [forced[i] for i in members])
            for i, result in zip(members, decoded):
                out[i] = result
        return out

    def _decode(self, audios: list[np.ndarray], previous: list[list[int]], contents: list[int],
                beam_size: int, forced: list[list[int]]) -> list[list[Decoded]]:
        from faster_whisper.transcribe import merge_punctuations

        model, tokenizer = self._model, self._tokenizer
        frames = max(encoder_frames(c, self._pad) for c in contents)
        encoded = model.encode(np.stack([self._features(a, frames) for a in audios]))
        starts = [model.get_prompt(tokenizer, prev, without_timestamps=True) + f for prev, f in zip(previous, forced)]
        budgets = [_MIN_NEW_TOKENS + int(_TOKENS_PER_SECOND * c / FRAMES_PER_SECOND) for c in contents]
        results: Any = model.model.generate(
            encoded, starts,
            beam_size=beam_size,
            max_length=min(model.max_length, len(starts[0]) + max(budgets)),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress,
        )
        # CTranslate2 returns the forced prefix at the head of each sequence: keep what follows it.
        tokens = [_drop_restart([t for t in r.sequences_ids[0][len(f):] if t < tokenizer.eot][:budget])
                  for r, budget, f in zip(results, budgets, forced)]
        # The forced prefix is aligned with the new tokens (its audio is in the window), then dropped.
        alignments = model.find_alignment(tokenizer, [f + t for f, t in zip(forced, tokens)], encoded, contents)
        out: list[list[Decoded]] = []
        for toks, result, alignment, f in zip(tokens, results, alignments, forced):
            if not toks or compression_ratio(tokenizer.decode(toks)) > _MAX_COMPRESSION:
                out.append([])  # nothing, or a repetition loop
                continue
            alignment = _after_prefix(alignment, len(f))
            merge_punctuations(alignment, "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、")
            words = [DecodedWord(round(a["start"], 2), round(a["end"], 2), a["word"], a["probability"])
                     for a in alignment if a["word"]]
            avg_logprob = result.scores[0] * len(toks) / (len(toks) + 1)  # as faster-whisper computes it
            out.append([Decoded(words, result.no_speech_prob, avg_logprob)])
        return out

    def _features(self, audio: np.ndarray, frames: int) -> np.ndarray:
        # Pad with silent audio, not with zeros after normalisation: log-mel of silence sits at the
        # spectrogram's floor (max - 8), which is what Whisper saw after speech in training.
        padded = np.zeros(frames * _HOP, dtype=np.float32)
        padded[:min(audio.size, padded.size)] = audio[:padded.size]
        window = self._model.feature_extractor(padded, padding=0)[:, :frames]
        if window.shape[-1] < frames:
            window = np.pad(window, ((0, 0), (0, frames - window.shape[-1])), mode="edge")
        return window
