"""Streaming Whisper: one shared faster-whisper model per process, one `StreamingTranscriber` per stream.

The streaming policy follows whisper_streaming (Macháček, Dabre & Bojar 2023), "LocalAgreement-2":
re-transcribe a rolling buffer every `chunk_seconds` of new audio and commit the longest prefix
that two consecutive hypotheses agree on. Additions that make it cheaper and snappier:
- Silero VAD (shipped with faster-whisper) gates every pass: silence never reaches Whisper;
- a VAD pause (>= min_silence_ms) after speech commits everything before it at once, so finals
  arrive at the end of each utterance instead of one agreement round later;
- passes encode only the buffer plus a little padding (`stream.asr.pass_decoder`), ~5x cheaper on a
  CPU, so a pass every 0.5 s fits in one core;
- agreement re-syncs after a locally misheard word instead of stalling the rest of the sentence,
  and ignores words within `settle_seconds` of either pass's audio end (cut-off words).
All times are media seconds from stream start.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Iterable, Optional

import numpy as np

from models.errors import one_line

from ..config import AsrConfig
from ..sources.audio import SAMPLE_RATE
from .agreement import Word, agreement, join_words, normalize, older_than, whole_words
from .model import load_commit_whisper
from .pass_decoder import Decoded, DecodedWord, PassDecoder, ShortPassDecoder

if TYPE_CHECKING:  # faster_whisper imports ctranslate2/onnxruntime: keep `import stream.asr` cheap
    from faster_whisper import WhisperModel


log = logging.getLogger(__name__)

_PROMPT_CHARS = 200  # tail of committed text given to the stock path as context
_TIME_TOL = 0.1  # s: words starting this much before the last commit are treated as already committed
_MAX_NGRAM = 5  # longest overlap between committed tail and new head that is dropped as a repeat
_KEEP_SILENCE = 0.5  # s of trailing silence kept when a buffer holds no speech (onset context)
_SENTENCE_END = (".", "?", "!")
_NO_SPEECH, _SURE_NO_SPEECH, _LOW_LOGPROB = 0.5, 0.7, -0.8  # see looks_hallucinated

# ---------------------------------------------------------------------------------- data types
@dataclass(frozen=True, slots=True)
class TranscriptUpdate:
    final: bool
    t_start: float
    t_end: float
    text: str
    words: tuple[Word, ...]


def _update(words: list[Word], final: bool) -> TranscriptUpdate:
    return TranscriptUpdate(
        final=final,
        t_start=words[0].start,
        t_end=words[-1].end,
        text=join_words(words),
        words=tuple(words),
    )


def looks_hallucinated(segment: Decoded) -> bool:
    """Whisper's habit on silence, noise and music: "Thank you.", "Beep", "I'm gonna play the
    game." with a high no-speech probability. Measured (tiny.en, short window): real speech stays
    at no_speech_prob <= 0.46 even for a 0.3 s buffer at an utterance's start; sox music and noise
    decodes sit at 0.52-0.93, and those under 0.7 have avg_logprob < -0.8. The confident
    "Thank you." (logprob -0.45) is why a high no-speech probability alone suffices."""
    nsp = segment.no_speech_prob
    return nsp >= _SURE_NO_SPEECH or (nsp > _NO_SPEECH and segment.avg_logprob < _LOW_LOGPROB)


def _dubious_tail(word: DecodedWord, audio_end: float) -> bool:
    """A last word that is a guess: near-zero confidence, or squeezed into the audio's last
    instant (Whisper's continuation past the end of speech). A real word there is heard again
    by the next pass; at a pause or the end it sits in the VAD padding, where speech is not."""
    squeezed = word.end - word.start < 0.02 and word.start >= audio_end - 0.1
    return word.probability < 0.1 or squeezed


def _uncovered(words: list[DecodedWord], start: float, end: float) -> float:
    """Longest stretch of (start, end) that `words` leave unheard: before the first new word, a
    word longer than any spoken one (the alignment stretched it over skipped audio), after the last."""
    new = [w for w in words if w.end > start]
    if not new:
        return end - start
    return max(new[0].start - start, end - new[-1].end, *(w.end - w.start for w in new))


def short_pass_decoder(model: "WhisperModel", cfg: AsrConfig) -> Optional[ShortPassDecoder]:
    """The short-encoder-window decoder for this config, or None for faster-whisper's stock path."""
    if cfg.encoder_pad_seconds is None:
        return None
    if cfg.language is None and model.model.is_multilingual:  # auto-detect: faster-whisper's own path
        return None
    try:
        return ShortPassDecoder(model, cfg.language, cfg.beam_size, cfg.encoder_pad_seconds)
    except Exception as exc:  # language detection, or faster-whisper internals that moved: the stock path works
        log.warning("short Whisper encoder window unavailable (%s); using 30 s windows", one_line(exc, 120))
        return None


def commit_pass_decoder(cfg: AsrConfig) -> Optional[ShortPassDecoder]:
    """The decoder for commit decodes when `asr.commit_model` names a second model (loaded once per
    process), or None: commits use the pass decoder. Its tokenizer is its own model's (tiny.en's vocabulary
    is English-only, Whisper base's multilingual); its language is asr.language (fixed: the config checks)."""
    model = load_commit_whisper(cfg)
    if model is None:
        return None
    return ShortPassDecoder(model, cfg.language, cfg.beam_size, cfg.encoder_pad_seconds or 0.0)


# --------------------------------------------------------------------------------- transcriber
class StreamingTranscriber:
    """Incremental transcript of one stream. `feed` is cheap and thread-safe; `process`/`finish`
    block (run them in an executor thread, one at a time per stream)."""

    def __init__(self, model: "WhisperModel", cfg: AsrConfig, t0: float = 0.0,
                 decoder: Optional[PassDecoder] = None, commit_decoder: Optional[PassDecoder] = None) -> None:
        """`decoder`: a shared pass decoder (a ShortPassDecoder, or a BatchedPassDecoder joining other streams'
        passes); by default one of its own, or faster-whisper's stock path without a short window.
        `commit_decoder`: what the commit decodes use (at a pause, and for words reaching the age bound)
        when `asr.commit_model` names a second model; by default one of its own over that shared model."""
        self._model = model
        self._cfg = cfg
        self._decoder = decoder if decoder is not None else short_pass_decoder(model, cfg)
        if commit_decoder is None and cfg.commit_model is not None:
            commit_decoder = commit_pass_decoder(cfg)
        self._commit_decoder = commit_decoder  # None: commits decode with `_decoder`
        self._t0 = t0
        self._lock = threading.Lock()  # feed() may run on the event loop while process() runs
        self._pending: list[np.ndarray] = []
        self._fed = 0  # samples fed so far (media clock)
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # sample index of _buf[0]
        self._history = np.zeros(0, dtype=np.float32)  # audio just before _buf (asr.context_seconds of it)
        self._last_pass = 0  # buffer end (samples) at the last pass decision
        self._processed = 0
        self._committed: list[Word] = []  # recent committed words (prompt, de-duplication, trimming)
        self._last_end = t0  # end of the last committed word
        self._hyp: list[Word] = []  # previous pass's uncommitted words (LocalAgreement)
        self._hyp_settled = t0  # words of _hyp ending after this were at that pass's audio edge
        self.passes = 0  # every Whisper decode, commit decodes included
        self.commit_passes = 0  # decodes that commit (at a pause, at the age bound), retries included
        self.retries = 0  # passes decoded again because the first skipped speech
        self.transcribe_seconds = 0.0
        self.vad_seconds = 0.0

    # -- clock ---------------------------------------------------------------------------------
    def _time(self, sample: int) -> float:
        return self._t0 + sample / SAMPLE_RATE

    @property
    def processed_until(self) -> float:
        """Media time up to which audio has been looked at by the last pass (or VAD skip)."""
        return self._time(self._processed)

    @property
    def fed_until(self) -> float:
        return self._time(self._fed)

    @property
    def audio_seconds(self) -> float:
        return self._fed / SAMPLE_RATE

    @property
    def buffered_seconds(self) -> float:
        """Audio held for the next pass (bounded by asr.max_buffer_seconds plus one step)."""
        return self._buf.size / SAMPLE_RATE

    def stats(self) -> dict[str, float]:
        return {
            "passes": self.passes,
            "commit_passes": self.commit_passes,
            "retries": self.retries,
            "transcribe_seconds": self.transcribe_seconds,
            "vad_seconds": self.vad_seconds,
            "audio_seconds": self.audio_seconds,
        }

    # -- input ---------------------------------------------------------------------------------
    def feed(self, samples: np.ndarray) -> None:
        """Append float32 mono 16 kHz samples; media time continues from the previous feed."""
        chunk = np.asarray(samples).reshape(-1)
        if np.issubdtype(chunk.dtype, np.integer):  # PCM16 from a raw source: scale to [-1, 1]
            chunk = chunk / np.float32(32768.0)
        chunk = chunk.astype(np.float32, copy=False)
        if chunk.size:
            with self._lock:
                self._pending.append(chunk)
                self._fed += chunk.size

    def _drain(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if pending:
            self._buf = np.concatenate([self._buf, *pending])

    @property
    def _buf_end(self) -> int:
        return self._buf_start + self._buf.size

    # -- passes --------------------------------------------------------------------------------
    def process(self) -> list[TranscriptUpdate]:
        """Transcribe if >= chunk_seconds of new audio arrived; return finals then a partial."""
        self._drain()
        if self._buf_end - self._last_pass < self._cfg.chunk_seconds * SAMPLE_RATE:
            return []
        return self._step(at_end=False)

    def finish(self) -> list[TranscriptUpdate]:
        """End of stream: transcribe what is left and commit all of it."""
        self._drain()
        updates = self._step(at_end=True)
        self._trim_to(self._buf_end)
        return updates

    def _stronger_commit(self) -> bool:
        """Whether a commit decode hears better than a pass: the commit model, or a wider beam."""
        beam = self._cfg.commit_beam_size
        return self._commit_decoder is not None or bool(beam and beam > self._cfg.beam_size)

    def _step(self, at_end: bool) -> list[TranscriptUpdate]:
        self._last_pass = self._processed = self._buf_end
        speech = self._speech()
        if not speech:
            self._hyp = []  # what a previous pass heard was not speech after all
            self._trim_to(max(self._buf_start, self._buf_end - int(_KEEP_SILENCE * SAMPLE_RATE)))
            return []
        self._trim_to(self._buf_start + speech[0][0])  # leading silence
        speech = [(s - speech[0][0], e - speech[0][0]) for s, e in speech]
        closed = speech if at_end else [seg for seg in speech if seg[1] < self._buf.size]
        updates: list[TranscriptUpdate] = []
        if closed:  # a pause (or the end): everything before it is final
            updates += self._commit_until(closed[-1][1])
            open_speech = [seg for seg in speech if seg[1] > closed[-1][1]]
            if not open_speech or open_speech[-1][1] - open_speech[0][0] < SAMPLE_RATE // 2:
                return updates
        return updates + self._agreement_pass()

    def _speech(self) -> list[tuple[int, int]]:
        """Speech segments (sample offsets into the buffer); the whole buffer without VAD."""
        if not self._buf.size:
            return []
        if not self._cfg.vad:
            return [(0, self._buf.size)]
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        # Padding stays below half the pause length so a closed segment ends before the buffer does.
        pad = min(200, self._cfg.min_silence_ms // 3)
        opts = VadOptions(
            threshold=self._cfg.vad_threshold,
            min_silence_duration_ms=self._cfg.min_silence_ms,
            min_speech_duration_ms=100,  # clicks are not speech
            speech_pad_ms=pad,
        )
        began = time.perf_counter()
        segments = get_speech_timestamps(self._buf, opts, sampling_rate=SAMPLE_RATE)
        self.vad_seconds += time.perf_counter() - began
        return [(int(s["start"]), int(s["end"])) for s in segments]

    def _commit_until(self, end: int) -> list[TranscriptUpdate]:
        """Transcribe buffer[:end], commit every new word, drop that audio."""
        words: list[Word] = []
        pause = self._time(self._buf_start + end)
        if pause > self._last_end + _TIME_TOL:
            words = self._new_words(self._transcribe(self._buf[:end], self._cfg.commit_beam_size, commit=True))
            if not words:  # a failed decode must not lose what the previous pass heard before the pause
                words = [w for w in self._hyp if w.end <= pause + _TIME_TOL]
        self._hyp = []
        update = self._commit(words)
        self._trim_to(self._buf_start + end)
        return [update] if update else []

    def _agreement_pass(self) -> list[TranscriptUpdate]:
        new = self._new_words(self._transcribe(self._buf))
        audio_end = self._time(self._buf_end)
        settled = audio_end - self._cfg.settle_seconds
        agreed = agreement(self._hyp, new, settled, self._hyp_settled, self._cfg.hold_probability)
        if self._cfg.max_word_age_seconds is not None:  # bounded lag: old words are final as heard now
            limit = audio_end - self._cfg.max_word_age_seconds
            if not new and self._hyp:  # a pass that heard nothing over speech: the previous pass's words still age
                new, settled = self._hyp, self._hyp_settled
            if older_than(new, limit) > agreed and self._stronger_commit():
                # Words about to be final without agreement: heard by the commit decode (a beam, or the
                # commit model), as at a pause. One that heard nothing must not drop what the pass heard.
                heard = self._new_words(self._transcribe(self._buf, self._cfg.commit_beam_size, commit=True))
                if heard:
                    new = heard
                    agreed = agreement(self._hyp, new, settled, self._hyp_settled, self._cfg.hold_probability)
            agreed = max(agreed, older_than(new, limit))
        # Never commit part of a word: "10 o" now and "'clock" later would reach the page apart.
        agreed = whole_words(new, agreed)
        self._hyp_settled = settled
        updates: list[TranscriptUpdate] = []
        update = self._commit(new[:agreed])
        if update:
            updates.append(update)
        self._hyp = new[agreed:]
        forced = self._trim_after_commit()
        if forced:
            updates.append(forced)
        if self._hyp:
            updates.append(_update(self._hyp, final=False))
        return updates

    def _transcribe(self, audio: np.ndarray, beam_size: Optional[int] = None, commit: bool = False) -> list[Word]:
        """Words of one pass over `audio` (the buffer's first samples), in media time; `commit`: a
        commit decode (the commit model's decoder when there is one)."""
        context = self._cfg.context_seconds
        if commit and self._cfg.commit_context_seconds is not None:
            context = self._cfg.commit_context_seconds
        elif commit and self._commit_decoder is not None and context is None:
            # A commit model places word boundaries differently from the pass model, so the words the passes
            # committed inside the buffer are forced as its prefix: what it returns is what comes after them.
            context = 0.0
        buffer, start = audio, self._time(self._buf_start)
        audio, offset, prompt, prefix = self._window(buffer, context)
        words = self._decode_words(audio, prompt, beam_size, prefix, commit)
        # Whisper, primed by the prompt or a forced prefix, sometimes skips speech: it stops early, or
        # jumps to a later sentence and the alignment stretches a word over the skipped audio. Decode the
        # buffer once more alone (no prompt, no prefix) and keep whichever leaves less speech uncovered.
        skip = self._cfg.retry_skipped_seconds
        # A decode that heard nothing at all over that much speech (the prompt silenced it) is decoded again too.
        if skip is not None and (prompt or prefix) and self._unheard(words, offset, audio) > skip:
            again = self._decode_words(buffer, None, beam_size, None, commit)
            self.retries += 1
            if again and self._unheard(again, start, buffer) < self._unheard(words, offset, audio):
                words, offset, prefix = again, start, None
        out = [Word(offset + w.start, offset + w.end, w.word.strip(), w.word.startswith(" "), w.probability)
               for w in words]
        if prefix:  # every word after a forced prefix is new, wherever the alignment put its start
            out = [replace(w, start=max(w.start, self._last_end), end=max(w.end, self._last_end)) for w in out]
        return out

    def _unheard(self, words: list[DecodedWord], offset: float, audio: np.ndarray) -> float:
        """Longest stretch of the not yet committed audio that a decode of `audio` (starting at `offset`) skipped."""
        return _uncovered(words, max(0.0, self._last_end - offset), audio.size / SAMPLE_RATE)

    def _window(self, audio: np.ndarray, context: Optional[float]) -> tuple[np.ndarray, float, Optional[str], Optional[str]]:
        """What one decode hears: (audio, its start time, prompt, prefix). With `context` seconds (None: none),
        the audio starts up to that long before the buffer, at a committed word, and the committed
        words from there on (before the buffer and in it) are the prefix; the prompt is the committed
        text before them. The stock 30 s path (no short-window decoder) keeps the prompt only."""
        start = self._time(self._buf_start)
        if context is None or self._decoder is None or not self._committed:
            return audio, start, self._prompt() or None, None
        # The window holds at most 29 s (Whisper's is 30 s) and only audio the history still has.
        earliest = max(start - context, self._time(self._buf_start - self._history.size),
                       self._time(self._buf_start + audio.size) - 29.0)
        first = next((k for k, w in enumerate(self._committed) if w.start >= earliest - 1e-6), len(self._committed))
        forced = self._committed[first:]
        if not forced:
            return audio, start, self._prompt() or None, None
        begin = max(min(self._sample(forced[0].start), self._buf_start), self._buf_start - self._history.size)
        if begin < self._buf_start:
            audio = np.concatenate([self._history[self._history.size - (self._buf_start - begin):], audio])
        return audio, self._time(begin), join_words(self._committed[:first]) or None, join_words(forced)

    def _decode_words(self, audio: np.ndarray, prompt: Optional[str], beam_size: Optional[int],
                      prefix: Optional[str] = None, commit: bool = False) -> list[DecodedWord]:
        """One pass: the words of its segments that are not hallucinated, minus a dubious tail."""
        began = time.perf_counter()
        decoder = self._commit_decoder if commit and self._commit_decoder is not None else self._decoder
        if decoder is not None:
            extra = {"prefix": prefix} if prefix else {}  # decoders without a prefix parameter still fit
            segments = decoder.transcribe(audio, prompt, beam_size, **extra)
        else:
            segments = self._transcribe_full(audio, prompt, beam_size or self._cfg.beam_size)
        self.transcribe_seconds += time.perf_counter() - began
        self.passes += 1
        self.commit_passes += commit
        segments = [seg for seg in segments if not looks_hallucinated(seg)]
        words = [w for seg in segments for w in (seg.words or []) if normalize(w.word)]
        audio_end = audio.size / SAMPLE_RATE
        while words and _dubious_tail(words[-1], audio_end):
            words.pop()
        return words

    def _transcribe_full(self, audio: np.ndarray, prompt: Optional[str], beam_size: int) -> list[Decoded]:
        """faster-whisper's own path: every pass pays for a full 30 s encoder window."""
        segments, _info = self._model.transcribe(
            audio,
            language=self._cfg.language,
            beam_size=beam_size,
            temperature=0.0,  # no fallback re-decodes: agreement already rejects unstable text
            word_timestamps=True,
            condition_on_previous_text=False,
            initial_prompt=prompt[-_PROMPT_CHARS:].lstrip() if prompt else None,
            vad_filter=False,  # our VAD already gated this buffer
        )
        return [Decoded([DecodedWord(w.start, w.end, w.word, w.probability) for w in seg.words or []],
                        seg.no_speech_prob, seg.avg_logprob) for seg in segments]

    def _prompt(self) -> str:
        # Only text whose audio has left the buffer: the rest will be heard again. Each decoder
        # bounds it itself (the short window by tokens, so batched prompts come out equally long).
        limit = self._time(self._buf_start) + _TIME_TOL
        return join_words(w for w in self._committed if w.end <= limit)

    # -- commits -------------------------------------------------------------------------------
    def _new_words(self, words: Iterable[Word]) -> list[Word]:
        """Words not committed yet: after the last commit, minus a re-heard committed tail."""
        fresh = [w for w in words if w.start >= self._last_end - _TIME_TOL]
        if not fresh or not self._committed or fresh[0].start - self._last_end > 1.0:
            return fresh
        tail = [normalize(w.text) for w in self._committed[-_MAX_NGRAM:]]
        head = [normalize(w.text) for w in fresh[:_MAX_NGRAM]]
        for n in range(min(len(tail), len(head)), 0, -1):
            if tail[-n:] == head[:n]:
                return fresh[n:]
        return fresh

    def _commit(self, words: list[Word]) -> Optional[TranscriptUpdate]:
        if not words:
            return None
        fixed: list[Word] = []
        for w in words:  # clamp so committed timestamps never go backwards
            start = max(w.start, self._last_end)
            fixed.append(replace(w, start=start, end=max(w.end, start)))
            self._last_end = fixed[-1].end
        self._committed = (self._committed + fixed)[-200:]
        return _update(fixed, final=True)

    def _trim_after_commit(self) -> Optional[TranscriptUpdate]:
        """Cut the buffer at the last committed sentence end (or word end when it grows too long)."""
        start = self._time(self._buf_start)
        ends = [w.end for w in self._committed if w.end > start and w.text.endswith(_SENTENCE_END)]
        if ends:
            self._trim_to(self._sample(ends[-1]))
        max_len = int(self._cfg.max_buffer_seconds * SAMPLE_RATE)
        if self._buf.size > max_len and self._last_end > self._time(self._buf_start):
            self._trim_to(self._sample(self._last_end))
        return self._force_commit(max_len) if self._buf.size > max_len else None

    def _force_commit(self, max_len: int) -> Optional[TranscriptUpdate]:
        # Safety valve when passes never agree: commit the older half of the hypothesis, then
        # drop audio so the buffer (and pass cost) stays bounded.
        limit = self._time(self._buf_end - max_len // 2)
        old = self._hyp[:whole_words(self._hyp, sum(1 for w in self._hyp if w.end <= limit))]
        self._hyp = self._hyp[len(old):]
        update = self._commit(old)
        self._trim_to(max(self._sample(self._last_end), self._buf_end - max_len // 2))
        return update

    def _sample(self, t: float) -> int:
        return int(round((t - self._t0) * SAMPLE_RATE))

    def _trim_to(self, sample: int) -> None:
        cut = min(max(sample - self._buf_start, 0), self._buf.size)
        kept = max(self._cfg.context_seconds or 0.0, self._cfg.commit_context_seconds or 0.0)
        if cut and kept:  # kept as the next decodes' acoustic context
            keep = int(kept * SAMPLE_RATE)
            self._history = np.concatenate([self._history, self._buf[:cut]])[-keep:]
        if cut:
            self._buf = self._buf[cut:]
            self._buf_start += cut
