"""Sliding windows of CLIP frame features and transcript words, in media time."""
from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Iterable, Optional

import torch

from .asr.agreement import Word, join_words


@dataclass(slots=True)
class FrameEntry:
    t: float
    feature: torch.Tensor  # (d,)
    wall: float  # when the frame entered the pipeline
    seen: bool = False  # already part of an emitted estimate (for frame_to_estimate)


@dataclass
class FrameSnapshot:
    features: torch.Tensor  # (n, d)
    ages: torch.Tensor  # (n,) seconds before the window end
    entries: list[FrameEntry]


class FrameWindow:
    """Frames with t in (end - seconds, end]; the newest `max_frames` if more.

    Features may arrive ahead of the estimator (files run as fast as possible), so snapshots
    cut at their own end time; `retain` bounds memory however far ahead compute runs.
    """

    def __init__(self, seconds: float, max_frames: int, retain: Optional[int] = None):
        self.seconds = seconds
        self.max_frames = max_frames
        self._entries: collections.deque[FrameEntry] = collections.deque(maxlen=retain or max_frames * 4)

    def add(self, t: float, feature: torch.Tensor, wall: float) -> None:
        self._entries.append(FrameEntry(t, feature, wall))

    def __len__(self) -> int:
        return len(self._entries)

    def snapshot(self, end: float) -> FrameSnapshot:
        while self._entries and self._entries[0].t <= end - self.seconds:
            self._entries.popleft()
        chosen = [e for e in self._entries if e.t <= end + 1e-6][-self.max_frames :]
        if not chosen:
            return FrameSnapshot(torch.zeros(0, 0), torch.zeros(0), [])
        return FrameSnapshot(
            torch.stack([e.feature for e in chosen]),
            torch.tensor([max(0.0, end - e.t) for e in chosen], dtype=torch.float32),
            chosen,
        )


_WORD_END_SLACK = 0.1  # s: Whisper's word ends are that coarse


class TranscriptWindow:
    """Committed words plus the current partial hypothesis; text of the last `seconds`."""

    def __init__(self, seconds: float, retain_words: int = 2000):
        self.seconds = seconds
        self._final: collections.deque[Word] = collections.deque(maxlen=retain_words)
        self._partial: list[Word] = []

    def add_final(self, words: Iterable[Word]) -> None:
        self._final.extend(words)
        self._partial = []

    def set_partial(self, words: Iterable[Word]) -> None:
        self._partial = list(words)

    def words(self, end: float, partial: bool = True, seconds: Optional[float] = None) -> list[Word]:
        """Words in (end - seconds, end] (default: the window's length), partial ones included unless `partial=False`."""
        start = end - (self.seconds if seconds is None else seconds)
        return [w for w in (*self._final, *(self._partial if partial else ())) if w.end > start and w.start <= end]

    def utterance(self, end: float, gap: float, max_seconds: Optional[float] = None) -> tuple[str, int]:
        """The latest utterance at `end` (partial words included), joined, and its word count: the words
        after the last pause of at least `gap` seconds between two words, reaching back at most
        `max_seconds` (default: the window's length), which may be longer than the window: a sentence
        is read whole even when it began before the window."""
        # Only words already spoken by `end`: a file's transcript may run ahead of the estimate, and Whisper
        # often starts the next sentence's first word early, in the pause, where it would replace the
        # sentence just said.
        words = [w for w in self.words(end, seconds=max_seconds) if w.end <= end + _WORD_END_SLACK]
        start = len(words) - 1
        while start > 0 and words[start].start - words[start - 1].end < gap:
            start -= 1
        last = words[max(start, 0):]
        return join_words(last), len(last)

    def text(self, end: float, partial: bool = True) -> tuple[str, int]:
        """Text of the words in (end - seconds, end] (joined as Whisper spelled them) and their count;
        `partial=False`: final words only."""
        words = self.words(end, partial)
        return join_words(words), len(words)
