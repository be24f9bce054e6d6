"""A generated evaluation set for streaming ASR that the defaults were not tuned on.

14 clips of 10-20 s: espeak-ng voices and variants (en-us, en-gb, Scottish, Caribbean, RP; male and
female variants), 130-200 wpm, numbers, times, names, short (0.3 s) and long (1.5 s) pauses or
none, sentences with strong sentiment words, and sox pink/brown noise mixed in at 20 and 10 dB SNR.
Split into a tuning half and a held-back half with the same mix of conditions: tune on the first,
report both, and never tune on the second.

References are written the way Whisper spells numbers ("7:45", "12"), so a WER counts words misheard,
not number formatting.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class EvalClip:
    name: str
    split: str  # "tuning" | "held-back"
    voice: str
    wpm: int
    pause: Optional[float]  # s between sentences; None: one espeak-ng call (natural pauses only)
    noise: Optional[tuple[str, float]]  # (sox noise type, SNR dB)
    sentences: tuple[str, ...]

    @property
    def reference(self) -> str:
        return " ".join(self.sentences)


CLIPS: tuple[EvalClip, ...] = (
    # ---------------------------------------------------------------------------- tuning half
    EvalClip("t-us-150-clean", "tuning", "en-us", 150, 0.8, None, (
        "I absolutely love this new design, it is fantastic.",
        "The delivery arrived three days late and the box was completely ruined.",
        "Our flight to Chicago leaves at 7:45 tomorrow morning.")),
    EvalClip("t-gb-175-short-pauses", "tuning", "en-gb", 175, 0.3, None, (
        "Doctor Patel said the results were terrible, and I felt awful all week.",
        "Sarah and Miguel won the competition with 98 points.",
        "Honestly, this is the worst service I have ever experienced.")),
    EvalClip("t-f3-135-long-pauses", "tuning", "en+f3", 135, 1.5, None, (
        "The meeting moved to 3:30 on Thursday, so please update your calendar.",
        "We built 12 schools for 300 students, which is wonderful news.")),
    EvalClip("t-m7-190-pink20", "tuning", "en-us+m7", 190, 0.6, ("pinknoise", 20), (
        "I am so disappointed that the concert was cancelled again.",
        "Emma called at 9 o'clock to say the package was stolen.",
        "The kids were thrilled when grandma brought chocolate cake.")),
    EvalClip("t-scotland-160-brown10", "tuning", "en-gb-scotland", 160, 1.0, ("brownnoise", 10), (
        "Traffic on Highway 101 was a nightmare this afternoon.",
        "Thank you so much, you made my day really special.")),
    EvalClip("t-caribbean-145-clean", "tuning", "en-029", 145, 0.5, None, (
        "He was furious when the computer crashed for the fifth time.",
        "The new office opens in London on the 1st of March.")),
    EvalClip("t-f2-200-monologue-pink10", "tuning", "en+f2", 200, None, ("pinknoise", 10), (
        "What a beautiful morning, the garden looks amazing.",
        "Professor Nakamura will give the lecture at half past ten.",
        "I hate waiting in line for hours just to be told to come back later.")),
    # ------------------------------------------------------------------------- held-back half
    EvalClip("h-f4-165-clean", "held-back", "en-us+f4", 165, 0.8, None, (
        "The team scored 2 goals in the last 5 minutes and the crowd went wild.",
        "Jennifer is nervous about the exam, but she studied really hard.",
        "This restaurant is brilliant, the pasta was perfect.")),
    EvalClip("h-rp-140-long-pauses", "held-back", "en-gb-x-rp", 140, 1.5, None, (
        "Unfortunately, the bridge will be closed until the end of October.",
        "Robert sold his old car last week and bought a bicycle instead.")),
    EvalClip("h-m3-180-short-pauses-pink20", "held-back", "en+m3", 180, 0.3, ("pinknoise", 20), (
        "I am scared of what might happen if the storm gets any worse.",
        "Congratulations, you passed the driving test on your first try.",
        "The package weighs 12 kilograms and costs 40 euros to ship.")),
    EvalClip("h-us-200-brown20", "held-back", "en-us", 200, 0.6, ("brownnoise", 20), (
        "Alex was devastated when his dog ran away last summer.",
        "Please call me back before 6 because the office closes early today.",
        "The hotel room was filthy and the staff were incredibly rude.")),
    EvalClip("h-gb-130-clean", "held-back", "en-gb", 130, 1.0, None, (
        "My sister Olivia starts her new job in Toronto on Monday.",
        "I feel so grateful for all the help you gave me this year.")),
    EvalClip("h-f5-150-pink10", "held-back", "en+f5", 150, 0.5, ("pinknoise", 10), (
        "The train to Boston departs at 8:15 from platform 4.",
        "That movie was boring, and the ending made no sense at all.")),
    EvalClip("h-m2-170-monologue-brown10", "held-back", "en-us+m2", 170, None, ("brownnoise", 10), (
        "We are delighted to announce that the hospital will open in June.",
        "Mister Johnson was angry because nobody answered his emails.",
        "The weather was miserable, but the party was a huge success.")),
)


# A second held-back set (issue 17, third round), written after the first two halves were used: new
# sentences, the same mix of conditions. Run once per candidate policy, never tuned on.
FRESH: tuple[EvalClip, ...] = (
    EvalClip("f-us-170-clean", "fresh", "en-us", 170, 0.7, None, (
        "My grandmother turned 90 last Sunday and everyone cried with joy.",
        "The printer jammed again and I lost the whole report.",
        "Lunch is at 12:30 in the small conference room.")),
    EvalClip("f-gb-150-long-pauses", "fresh", "en-gb", 150, 1.4, None, (
        "Thomas forgot his passport at home, which was a complete disaster.",
        "The museum is free for children under 16.")),
    EvalClip("f-f3-185-short-pauses-pink20", "fresh", "en+f3", 185, 0.3, ("pinknoise", 20), (
        "This is the happiest day of my life, thank you all for coming.",
        "Maria drove 300 kilometres to see the final match.",
        "Sadly, the shop closed for good after 40 years.")),
    EvalClip("f-scotland-140-clean", "fresh", "en-gb-scotland", 140, 0.9, None, (
        "The soup was cold and the waiter ignored us for an hour.",
        "We will meet David at the station at quarter past eight.")),
    EvalClip("f-m2-200-brown20", "fresh", "en-us+m2", 200, 0.5, ("brownnoise", 20), (
        "I cannot believe how generous our neighbours have been this winter.",
        "The bus to Seattle was delayed by 45 minutes because of the snow.",
        "Please send the invoice to Karen before Friday.")),
    EvalClip("f-caribbean-160-pink10", "fresh", "en-029", 160, 0.6, ("pinknoise", 10), (
        "The new phone is fast, light and beautifully made.",
        "Our landlord raised the rent again, which is outrageous.")),
    EvalClip("f-f4-135-monologue-clean", "fresh", "en-us+f4", 135, None, None, (
        "Kevin won the chess tournament in the last round.",
        "The doctor said my results look excellent.",
        "I am tired of all these pointless meetings.")),
    EvalClip("f-rp-175-brown10", "fresh", "en-gb-x-rp", 175, 0.8, ("brownnoise", 10), (
        "The garden party was lovely, and the weather was perfect.",
        "Flight 207 to Madrid has been cancelled.",
        "Laura was upset that nobody remembered her birthday.")),
    EvalClip("f-m3-145-short-pauses", "fresh", "en+m3", 145, 0.3, None, (
        "The concert starts at 7 and the tickets cost 25 dollars.",
        "I am really proud of how hard the team worked this year.")),
    EvalClip("f-f5-190-monologue-pink20", "fresh", "en+f5", 190, None, ("pinknoise", 20), (
        "What a terrible mistake, the whole shipment went to the wrong city.",
        "Anna and Peter finally bought a house near the lake.",
        "The library opens at 9 on weekdays.")),
)


def revoiced() -> tuple[EvalClip, ...]:
    """The tuning half's sentences spoken under another tuning clip's conditions (voice, rate, pauses,
    noise: rotated by three), split "revoiced": a second tuning sample, to see whether a change that
    helps the tuning half holds for other voices. Never a substitute for the held-back half (same words)."""
    tuning = [c for c in CLIPS if c.split == "tuning"]
    out = []
    for k, clip in enumerate(tuning):
        other = tuning[(k + 3) % len(tuning)]
        out.append(replace(clip, name=f"r-{k}-{other.voice}-{other.wpm}", split="revoiced", voice=other.voice,
                           wpm=other.wpm, pause=other.pause, noise=other.noise))
    return tuple(out)


def render(clip: EvalClip, work: Path) -> np.ndarray:
    """The clip as float32 16 kHz mono (generated once under `work`, then read back)."""
    from media import make_speech_clip, mix_at_snr, sox_synth

    from stream.sources.audio import load_audio_16k

    work.mkdir(parents=True, exist_ok=True)
    wav = work / f"{clip.name}.wav"
    if clip.pause is None:
        if not wav.exists():
            import subprocess

            subprocess.run(["espeak-ng", "-v", clip.voice, "-s", str(clip.wpm), "-g", "2", "-w", str(wav),
                            clip.reference], check=True, capture_output=True)
    else:
        make_speech_clip(clip.sentences, clip.pause, wav, wpm=clip.wpm, voice=clip.voice, lead_s=0.5)
    audio = load_audio_16k(wav)
    if clip.noise is None:
        return audio
    kind, snr = clip.noise
    noise = load_audio_16k(sox_synth(work / f"{kind}-{clip.name}.wav", audio.size / 16000 + 1, kind))
    return mix_at_snr(audio, noise, snr)
