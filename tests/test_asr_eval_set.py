"""The generated ASR evaluation sets (scripts/asr_eval_set.py): the 40-clip `large()` set is deterministic,
its halves have the same mix of conditions, and its sentences are new."""
from __future__ import annotations

from collections import Counter

import numpy as np

from scripts.asr_eval_set import CLIPS, FRESH, LARGE_SENTIMENT, _repeatable_noise, estimate_seconds, large
from scripts.media import SPEECH_SCRIPT, require_tools


def _condition(clip) -> tuple:
    gender = "f" if "+f" in clip.voice else "m"
    accent = clip.voice.split("+")[0]
    pause = "none" if clip.pause is None else "short" if clip.pause < 0.4 else "long" if clip.pause > 1.2 else "medium"
    return accent, gender, pause, clip.noise, (clip.wpm - 125) // 10


def test_large_set_is_deterministic_and_split_in_equal_halves():
    clips = large()
    assert clips == large()
    assert large(seed=18) != clips
    halves = {s: [c for c in clips if c.split == s] for s in ("tuning", "held-back")}
    assert [len(h) for h in halves.values()] == [20, 20]
    assert len({c.name for c in clips}) == 40


def test_large_set_halves_have_the_same_mix_of_conditions():
    clips = large()
    tuning = Counter(_condition(c)[:4] for c in clips if c.split == "tuning")
    held = Counter(_condition(c)[:4] for c in clips if c.split == "held-back")
    assert tuning == held
    for half in ("tuning", "held-back"):
        mine = [c for c in clips if c.split == half]
        assert sum(c.noise is not None for c in mine) == 10
        assert {c.noise for c in mine} == {None, ("pinknoise", 20), ("brownnoise", 20), ("pinknoise", 10),
                                           ("brownnoise", 10)}
        assert {_condition(c)[2] for c in mine} == {"none", "short", "medium", "long"}
        assert {_condition(c)[1] for c in mine} == {"f", "m"}
        assert min(c.wpm for c in mine) < 145 and max(c.wpm for c in mine) > 185
        assert all(130 <= c.wpm <= 200 for c in mine)
    # the two clips of a pair: same conditions, rates from one bucket (+-5 wpm each)
    pairs = zip([c for c in clips if c.split == "tuning"], [c for c in clips if c.split == "held-back"])
    assert all(abs(a.wpm - b.wpm) <= 10 and _condition(a)[:4] == _condition(b)[:4] for a, b in pairs)


def test_large_set_sentences_are_new_and_used_once():
    clips = large()
    used = [s for c in clips for s in c.sentences]
    assert len(used) == len(set(used))
    old = {s for c in (*CLIPS, *FRESH) for s in c.sentences} | set(SPEECH_SCRIPT)
    assert not old & set(used)
    assert all(set(c.sentences) & set(LARGE_SENTIMENT) for c in clips)  # strong sentiment in every clip
    assert all(8.0 <= estimate_seconds(c.sentences, c.wpm, c.pause) <= 15.0 for c in clips)
    assert sum(any(ch.isdigit() for ch in c.reference) for c in clips) >= 20  # numbers and times are common


def test_large_set_noise_is_repeatable(tmp_path):
    require_tools("sox")
    a = _repeatable_noise("pinknoise", tmp_path / "a")
    b = _repeatable_noise("pinknoise", tmp_path / "b")
    assert a.size == 120 * 16000 and np.array_equal(a, b) and float(np.std(a)) > 0.01
