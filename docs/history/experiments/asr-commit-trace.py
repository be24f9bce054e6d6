"""Why live mode commits each word (at a pause, by agreement, or by the age bound,
split by the buffer's length then) and how often each kind is wrong, on one half of `--clips large`.

    nice -n 19 .venv/bin/python docs/history/experiments/asr-commit-trace.py tuning "" 0.12

Arguments: split, comma list of KEY=VALUE overrides, clock (cpu or seconds per Whisper decode), work dir.
A diagnostic, not a test: it re-implements `StreamingTranscriber._agreement_pass` (as of this commit) with
tags. A word's "wrong" is jiwer's alignment of the live text with the reference (substitution or insertion).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import jiwer  # noqa: E402
from asr_eval_set import large, render  # noqa: E402
from asr_replay import file_mode, replay  # noqa: E402

from stream.asr import transcriber as T  # noqa: E402
from stream.asr.agreement import agreement, normalize, older_than, whole_words  # noqa: E402
from stream.asr.model import load_whisper  # noqa: E402
from stream.config import load_config  # noqa: E402

TAGS: list[tuple[object, str]] = []
_commit = T.StreamingTranscriber._commit
_commit_until = T.StreamingTranscriber._commit_until


def commit_until(self, end):  # a pause: everything before it
    updates = _commit_until(self, end)
    TAGS.extend((w, "pause") for u in updates for w in u.words)
    return updates


def agreement_pass(self):  # StreamingTranscriber._agreement_pass, tagging why each word became final
    new = self._new_words(self._transcribe(self._buf))
    audio_end = self._time(self._buf_end)
    settled = audio_end - self._cfg.settle_seconds
    agreed = agreement(self._hyp, new, settled, self._hyp_settled, self._cfg.hold_probability)
    by_agreement, beamed = agreed, False
    if self._cfg.max_word_age_seconds is not None:
        limit = audio_end - self._cfg.max_word_age_seconds
        beam = self._cfg.commit_beam_size
        if older_than(new, limit) > agreed and beam and beam > self._cfg.beam_size:
            new, beamed = self._new_words(self._transcribe(self._buf, beam)), True
            agreed = by_agreement = agreement(self._hyp, new, settled, self._hyp_settled, self._cfg.hold_probability)
        agreed = max(agreed, older_than(new, limit))
    agreed = whole_words(new, agreed)
    self._hyp_settled = settled
    seconds = self._buf.size / 16000
    bucket = "<2 s" if seconds < 2 else "2-3 s" if seconds < 3 else "3-5 s" if seconds < 5 else ">5 s"
    updates = []
    for words, why in ((new[:min(by_agreement, agreed)], "agreement"),
                       (new[min(by_agreement, agreed):agreed], f"age{' (beam)' if beamed else ''}, buffer {bucket}")):
        update = _commit(self, words)
        if update:
            TAGS.extend((w, why) for w in update.words)
            updates.append(update)
    self._hyp = new[agreed:]
    forced = self._trim_after_commit()
    if forced:
        TAGS.extend((w, "buffer limit") for w in forced.words)
        updates.append(forced)
    if self._hyp:
        updates.append(T._update(self._hyp, final=False))
    return updates


T.StreamingTranscriber._commit_until = commit_until
T.StreamingTranscriber._agreement_pass = agreement_pass
NORM = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip(),
                      jiwer.ReduceToListOfListOfWords()])


def main() -> None:
    split = sys.argv[1]
    overrides = [s for s in (sys.argv[2] if len(sys.argv) > 2 else "").split(",") if s]
    clock = sys.argv[3] if len(sys.argv) > 3 else "0.12"
    work = Path(sys.argv[4] if len(sys.argv) > 4 else "/tmp/sentistream-asr-replay/large-trace")
    cfg = load_config(str(ROOT / "configs" / "default.yaml"), overrides).asr
    model = load_whisper(cfg)
    totals: dict[str, list[int]] = {}
    for clip in large():
        if clip.split != split:
            continue
        audio = render(clip, work)
        TAGS.clear()
        _, text, _ = replay(model, cfg, audio, time.process_time, None if clock == "cpu" else float(clock))
        live = [(w, why) for w, why in TAGS if normalize(w.text)]
        print(f"== {clip.name}\nREF : {clip.reference}\nLIVE: {text}\nFILE: {file_mode(model, cfg, audio)}")
        out = jiwer.process_words(clip.reference, text, reference_transform=NORM, hypothesis_transform=NORM)
        kind = {k: ch.type for ch in out.alignments[0] for k in range(ch.hyp_start_idx, ch.hyp_end_idx)}
        wrong = []
        for k, (w, why) in enumerate(live):  # words Whisper split into pieces can shift this index a little
            why = f"{why}, p {'< 0.2' if w.probability < 0.2 else '>= 0.2'}"
            totals.setdefault(why, [0, 0])[0] += 1
            if kind.get(k, "equal") != "equal":
                totals[why][1] += 1
                wrong.append(f"[{w.text} {why} {kind.get(k)} p={w.probability:.2f}]")
        print("WRONG:", " ".join(wrong), flush=True)
    for why, (n, bad) in sorted(totals.items()):
        print(f"{why:>42}: {n:4d} words, {bad:4d} wrong ({bad / max(n, 1):.0%})")


if __name__ == "__main__":
    main()
