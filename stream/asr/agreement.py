"""Which words two consecutive Whisper passes agree on (LocalAgreement-2, re-synced after local slips)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

_ANCHOR = 2  # words both passes must share to re-sync after a disagreement
_ANCHOR_TOL = 0.3  # s: an anchor word starts at about the same time in both passes
_RESYNC_SPAN = 3  # longest disputed stretch (words) bridged by re-syncing


@dataclass(frozen=True, slots=True)
class Word:
    start: float
    end: float
    text: str  # without surrounding spaces
    space: bool = True  # Whisper spelled a space before it (False: it continues the previous word)
    probability: float = 1.0  # the decoder's confidence in it (faster-whisper's word probability)


def join_words(words: Iterable[Word]) -> str:
    """Words as Whisper spelled them: "10 o'clock", not "10 o 'clock" (a word Whisper split into
    pieces, such as " o" + "'clock", joins without a space)."""
    return "".join((" " + w.text) if w.space else w.text for w in words).strip()


def whole_words(words: Sequence[Word], n: int) -> int:
    """The largest k <= n such that words[:k] does not end inside a word (words[k] starts one)."""
    while 0 < n < len(words) and not words[n].space:
        n -= 1
    return n


def normalize(text: str) -> str:
    """Word identity for agreement: case and punctuation differ between passes, words don't."""
    return "".join(ch for ch in text.lower() if ch.isalnum())


def _same(a: Word, b: Word, tol: float) -> bool:
    return normalize(a.text) == normalize(b.text) and abs(a.start - b.start) <= tol


def _resync(prev: list[Word], new: list[Word], i: int, j: int) -> Optional[tuple[int, int]]:
    """After passes disagree at prev[i] / new[j]: the nearest place where they agree again on
    `_ANCHOR` words at the same time, within a few words (a local slip, not a different text)."""
    for dj in range(1, _RESYNC_SPAN + 1):
        for di in range(0, _RESYNC_SPAN + 1):
            a, b = prev[i + di:i + di + _ANCHOR], new[j + dj:j + dj + _ANCHOR]
            if len(a) == len(b) == _ANCHOR and all(_same(x, y, _ANCHOR_TOL) for x, y in zip(a, b)):
                return i + di, j + dj
    return None


def agreement(prev: list[Word], new: list[Word], settled: float, prev_settled: float,
              min_probability: float = 0.0) -> int:
    """How many leading words of `new` are final: LocalAgreement-2 (the prefix two consecutive
    passes share), re-synced after a local disagreement so one misheard word cannot hold back the
    rest of the sentence (the newer pass, which heard more context, wins the disputed words).
    Only words ending by `settled` count: a word at the audio's edge may still be cut short.
    A word either pass heard with a probability under `min_probability` (a disputed word: the newer
    pass's) is not final yet, even if both passes wrote it: a guess repeated is still a guess."""
    i = j = n = 0
    while i < len(prev) and j < len(new) and new[j].end <= settled and prev[i].end <= prev_settled:
        if normalize(prev[i].text) == normalize(new[j].text):
            if min(prev[i].probability, new[j].probability) < min_probability:
                break
            i, j = i + 1, j + 1
            n = j
            continue
        anchor = _resync(prev, new, i, j)
        if anchor is None or new[anchor[1] + _ANCHOR - 1].end > settled:
            break
        if any(w.probability < min_probability for w in new[j:anchor[1]]):
            break
        i, j = anchor
    return n


def older_than(words: Sequence[Word], limit: float) -> int:
    """How many leading words end by `limit` (words held back long enough: final whatever the agreement)."""
    n = 0
    while n < len(words) and words[n].end <= limit:
        n += 1
    return n
