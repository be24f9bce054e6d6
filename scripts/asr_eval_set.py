"""A generated evaluation set for streaming ASR that the defaults were not tuned on.

14 clips of 10-20 s: espeak-ng voices and variants (en-us, en-gb, Scottish, Caribbean, RP; male and
female variants), 130-200 wpm, numbers, times, names, short (0.3 s) and long (1.5 s) pauses or
none, sentences with strong sentiment words, and sox pink/brown noise mixed in at 20 and 10 dB SNR.
Split into a tuning half and a held-back half with the same mix of conditions: tune on the first,
report both, and never tune on the second.

References are written the way Whisper spells numbers ("7:45", "12"), so a WER counts words misheard,
not number formatting.

`large()` (`asr_replay.py --clips large`, issue 17's fourth round) is a bigger set with the same kinds of
conditions: 40 clips of 9-15 s drawn by a seeded generator from a bank of 140 sentences used nowhere else,
20 tuning / 20 held-back, each condition spec rendered once per half; its noise comes from one repeatable
`sox -R` render, so every machine and work dir gets the same audio.
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
    # s into one long repeatable noise render (sox -R) where this clip's noise starts; None: a noise
    # render of its own (the 14- and 10-clip sets; sox's random noise differs between work dirs)
    noise_offset: Optional[float] = None

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
    if clip.noise_offset is None:
        noise = load_audio_16k(sox_synth(work / f"{kind}-{clip.name}.wav", audio.size / 16000 + 1, kind))
    else:
        noise = _repeatable_noise(kind, work)
        start = int(clip.noise_offset * 16000) % noise.size
        noise = np.roll(noise, -start)[:audio.size]
    return mix_at_snr(audio, noise, snr)


_NOISE_SECONDS = 120


def _repeatable_noise(kind: str, work: Path) -> np.ndarray:
    """120 s of sox noise from `sox -R` (repeatable: the same samples on every machine and run)."""
    import subprocess

    from stream.sources.audio import load_audio_16k

    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{kind}-repeatable-{_NOISE_SECONDS}s.wav"
    if not path.exists():
        tmp = path.with_suffix(".part.wav")
        subprocess.run(["sox", "-R", "-n", "-r", "16000", "-c", "1", "-b", "16", str(tmp), "synth",
                        str(_NOISE_SECONDS), kind], check=True, capture_output=True)
        tmp.replace(path)
    return load_audio_16k(path)


# ------------------------------------------------------------------------------ the large set
# Issue 17, fourth round: 40 clips (20 tuning / 20 held-back) drawn by a seeded generator from a bank of
# sentences used nowhere else (not in CLIPS, FRESH or media.SPEECH_SCRIPT). Every sentence is spelled the
# way Whisper writes it (digits for counts, "7:45" for times) and avoids words with two spellings
# (US/UK, currency and percent signs, titles such as "Mr.") so WER counts words misheard, not spelling.
LARGE_SENTIMENT: tuple[str, ...] = (
    "This is the best birthday present anyone has ever given me.",
    "The children were overjoyed when the snow finally arrived.",
    "What a wonderful surprise, I never expected to see you here.",
    "The nurses were incredibly kind and patient with my father.",
    "I am thrilled with how quickly the garden has grown this spring.",
    "Her speech was inspiring and the whole room stood up to applaud.",
    "We had a fantastic time at the beach, the water was perfect.",
    "The new manager is brilliant and everyone trusts her completely.",
    "I love the way this song makes me feel.",
    "Our team worked so hard and the results are amazing.",
    "The view from the top of the mountain was absolutely breathtaking.",
    "Thank you for the lovely dinner, it was delicious.",
    "He was delighted to hear that his sister had recovered.",
    "This little bakery makes the most delicious bread in town.",
    "I feel so lucky to have such generous friends.",
    "The students were proud of the bridge they designed together.",
    "The service at the hotel was awful and the room smelled terrible.",
    "I am furious that the bank charged me twice for the same thing.",
    "The new software update is a disaster, nothing works anymore.",
    "She was heartbroken when her best friend moved away.",
    "This is the most boring book I have ever tried to read.",
    "The people upstairs were shouting all night and I could not sleep.",
    "I hate it when the train is late and nobody tells us why.",
    "The food was cold, the waiter was rude, and the bill was huge.",
    "He felt miserable after losing his job in the middle of winter.",
    "The match was a humiliating defeat for the home team.",
    "I am sick of these endless delays and broken promises.",
    "The road was dangerous and the driver was terrified.",
    "It was a horrible mistake and I regret it deeply.",
    "The repair was useless, the washing machine broke again the next day.",
    "They were shocked and angry when the factory closed.",
    "My phone screen cracked and the repair shop refused to help.",
    "Peter was thrilled to win 500 in the village lottery.",
    "Julia was devastated when her flight was delayed by 6 hours.",
    "The concert on Saturday was magnificent, the best in 20 years.",
    "Martin complained that breakfast at the hotel was disgusting.",
    "Emily was overjoyed when her team won the final.",
    "After 15 years of hard work, the farm is finally a success.",
    "The hospital needs 40 more nurses, and the staff are exhausted.",
    "Leo was ashamed that he forgot his mother's birthday.",
    "The results were disappointing, only 9 of the 30 seeds grew.",
    "My brother is anxious about his interview at 11:30.",
    "I am grateful that the storm missed our town.",
    "What a dreadful week, everything that could go wrong did.",
    "The kitten is adorable and sleeps on my keyboard.",
    "This is ridiculous, the tickets sold out in 2 minutes.",
    "The workers are angry because their wages have not risen in 5 years.",
    "Our little town is peaceful, friendly and safe.",
    "The ceremony was moving and many guests were in tears.",
    "He was nervous before the match, but he played brilliantly.",
    "Sophia is worried that the bridge will not be finished by August.",
    "The storm destroyed 70 houses along the coast.",
    "I am excited to start my new course in September.",
    "The lecture was dull and far too long.",
    "The hikers were exhausted but happy when they reached the hut.",
    "I was embarrassed when my phone rang during the funeral.",
    "The puppy was so excited that it knocked over the lamp.",
    "That was the rudest email I have ever received.",
    "The volunteers did a superb job, and we are very thankful.",
    "We were terrified when the lights went out during the storm.",
    "The fireworks were spectacular and the crowd cheered for ages.",
    "He is bitter about the way the club treated him.",
    "It is a joy to work with such talented people.",
    "The waiting room was filthy and the nurse was unfriendly.",
    "My aunt was ecstatic when she heard the news about the baby.",
    "The plan was a complete failure and everyone blamed the boss.",
    "I am so relieved that the operation went well.",
    "The traffic jam was unbearable and the kids were screaming.",
    "What a charming little village, I could live here forever.",
    "The contract was unfair and the lawyers were hopeless.",
)
LARGE_OTHER: tuple[str, ...] = (  # numbers, times, names, plain statements
    "The recipe needs 250 grams of flour and a cup of milk.",
    "There were 75 people waiting outside the shop this morning.",
    "The building has 14 floors and a garden on the roof.",
    "Our village has about 800 residents and a single small school.",
    "She finished the race in 48 minutes, a new personal record.",
    "The company hired 60 new engineers last year.",
    "Room 312 is on the third floor next to the library.",
    "He paid 1500 for a used car that barely runs.",
    "The museum received 20,000 visitors in its first month.",
    "We need 16 chairs and 8 tables for the party.",
    "Bus number 38 stops right in front of the hospital.",
    "The old bridge was built in 1887 by local workers.",
    "My grandfather was born in 1952 in a small fishing town.",
    "The score was 27 to 24 after a thrilling final quarter.",
    "Only 11 players showed up for the training session.",
    "The parcel contains 30 books for the school library.",
    "The store opens at 8:30 and closes at 6 in the evening.",
    "Please be at the airport by 5:15 tomorrow.",
    "The movie starts at 9:40, so we should leave soon.",
    "My alarm went off at 4:45 and I could not get back to sleep.",
    "The bakery sells out of bread by 10 o'clock every day.",
    "The last ferry leaves the island at 11:20 at night.",
    "Dinner is ready at 7:30, do not be late.",
    "The exam begins at 2:15 in the main hall.",
    "We landed at 6:50 after a long and bumpy flight.",
    "The shift ends at 3 o'clock on Fridays.",
    "Daniel and Sophie are getting married next summer.",
    "Rachel gave a wonderful presentation to the board.",
    "Ask Marcus whether he can drive us to the station.",
    "Hannah painted the kitchen yellow over the weekend.",
    "Professor Garcia explained the experiment very clearly.",
    "Lucas broke his arm playing football with his cousins.",
    "Grace sent me a postcard from her trip to Portugal.",
    "Oliver is terrible at keeping secrets.",
    "Victor and Nina opened a small bakery near the river.",
    "Fiona called the police when she heard the strange noise.",
    "Samuel wrote a letter to the mayor about the dangerous roads.",
    "Chloe and Ethan adopted a puppy from the shelter.",
    "Isabella won a scholarship to study music in Vienna.",
    "Benjamin is always cheerful, even on Monday mornings.",
    "Amelia baked 24 cupcakes for her class.",
    "The soldiers returned home after 18 months abroad.",
    "The volunteers collected 400 bags of rubbish from the beach.",
    "The river flooded the lower part of the town last spring.",
    "Please turn off the lights when you leave the office.",
    "The library will be closed for repairs next week.",
    "We planted tomatoes, beans and potatoes in the garden.",
    "The train was crowded, so we stood all the way to the city.",
    "It rained all day and the streets were full of water.",
    "The map shows several different routes to the village.",
    "I left my umbrella on the bus this morning.",
    "The kitchen smells of fresh coffee and toast.",
    "The committee will vote on the new plan in December.",
    "Most of the shops in the old town close early on Sunday.",
    "She keeps her bicycle in the garage during the winter.",
    "The school trip leaves at 7:15 on Wednesday.",
    "The pharmacy on the corner is open until 9 tonight.",
    "We counted 120 birds on the lake yesterday.",
    "The hall can seat 350 guests for the wedding.",
    "Nathan moved to Dublin with his two brothers.",
    "Ask Laura for the keys to the storage room.",
    "The farmer sold 90 sheep at the market in May.",
    "Patrick repairs old clocks in a shop near the church.",
    "Our meeting with the architects is at 1:45.",
    "The marathon route is closed to cars until noon.",
    "Maya reads a chapter of her book every evening.",
    "The castle was built more than 600 years ago.",
    "Edward drives a tractor on his uncle's farm.",
    "The quiz has 50 questions about history and science.",
    "The doors open at 6:45 and the show begins at 7:30.",
)
_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc", "en-gb-x-gbclan",
            "en-gb-x-gbcwmd")
_MALE, _FEMALE = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7"), ("+f1", "+f2", "+f3", "+f4", "+f5")
_PAUSES = ("none", "short", "medium", "long")  # one espeak-ng call; 0.3 s; 0.5-1.0 s; 1.3-1.6 s
_NOISES = (None,) * 10 + (("pinknoise", 20),) * 3 + (("brownnoise", 20),) * 2 + (("pinknoise", 10),) * 2 + \
    (("brownnoise", 10),) * 3
LARGE_PAIRS = 20  # condition specs; each gives one tuning and one held-back clip
_RATES = tuple(range(130, 201, 10))  # wpm buckets; the two clips of a pair differ by at most 5 wpm


def estimate_seconds(sentences: tuple[str, ...], wpm: int, pause: Optional[float]) -> float:
    """Rough rendered length (espeak-ng speaks a little faster than `wpm`; digits read as several words)."""
    words = sum(len(s.split()) + sum(ch.isdigit() for ch in s) // 2 for s in sentences)
    return 0.85 * words * 60 / wpm + (len(sentences) - 1) * (pause or 0.15) + 1.0


def large(seed: int = 17) -> tuple[EvalClip, ...]:
    """The 40-clip set: `LARGE_PAIRS` condition specs (accent, gender, rate bucket, pause kind, noise),
    each rendered once per half with its own voice variant, rate (+-5 wpm) and sentences: both halves have
    the same mix of conditions by construction. Every clip holds at least one strong-sentiment sentence
    and is estimated at 8-15 s. Deterministic for a seed (NumPy's PCG64)."""
    rng = np.random.default_rng(seed)
    noises = list(_NOISES)
    rng.shuffle(noises)
    specs = [(_ACCENTS[k % len(_ACCENTS)], "f" if k % 2 else "m", int(rng.choice(_RATES)),
              _PAUSES[k % len(_PAUSES)], noises[k]) for k in range(LARGE_PAIRS)]
    sentiment = [LARGE_SENTIMENT[i] for i in rng.permutation(len(LARGE_SENTIMENT))]
    other = [LARGE_OTHER[i] for i in rng.permutation(len(LARGE_OTHER))]
    clips: list[EvalClip] = []
    for split, tag in (("tuning", "t"), ("held-back", "h")):
        for k, (accent, gender, rate, pause_kind, noise) in enumerate(specs):
            variant = str(rng.choice(_FEMALE if gender == "f" else _MALE))
            wpm = min(200, max(130, rate + int(rng.integers(-5, 6))))
            pause = {"none": None, "short": 0.3, "medium": round(float(rng.uniform(0.5, 1.0)), 2),
                     "long": round(float(rng.uniform(1.3, 1.6)), 2)}[pause_kind]
            target = float(rng.uniform(9.0, 12.5))
            chosen = [sentiment.pop()]
            while estimate_seconds(tuple(chosen), wpm, pause) < target:
                pool = other if len(other) >= len(sentiment) else sentiment  # spend both banks evenly
                if not pool:
                    break
                nxt = pool[-1]
                if estimate_seconds((*chosen, nxt), wpm, pause) > 14.5:
                    break
                chosen.append(pool.pop())
            rng.shuffle(chosen)
            cond = pause_kind if noise is None else f"{pause_kind}-{noise[0][:-5]}{noise[1]:g}"
            name = f"L{tag}{k:02d}-{accent}{variant}-{wpm}-{cond}"
            clips.append(EvalClip(name, split, accent + variant, wpm, pause, noise, tuple(chosen),
                                  noise_offset=round(float(rng.uniform(0, 100)), 2) if noise else None))
    return tuple(clips)
