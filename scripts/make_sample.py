#!/usr/bin/env python3
"""Build the bundled demo clip: samples/demo.mp4 (+ samples/demo.txt, the words spoken in it).

About 22 s, 320x240, 15 fps, H.264 + AAC, well under 1 MB: a synthetic speaker (espeak-ng) says
sentences of mixed sentiment with pauses, over a cartoon face whose expression, colour and caption
change with each sentence, so both the picture and the words carry the sentiment. Needs espeak-ng
and ffmpeg on PATH and numpy + OpenCV (the project venv):

    .venv/bin/python scripts/make_sample.py [--out-dir samples]
"""
from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

# (sentiment, caption, sentence): the picture of each segment matches its words.
SEGMENTS = [
    ("neutral", "hello", "Hello. This is a short demo of live sentiment analysis."),
    ("positive", "happy", "I love this, it's wonderful. What a great day!"),
    ("negative", "sad", "This is terrible. I'm really upset and disappointed."),
    ("neutral", "calm", "The train leaves at nine, from platform two."),
    ("positive", "happy", "Thank you so much, that was fantastic!"),
]
WIDTH, HEIGHT, FPS = 320, 240, 15
TARGET_SECONDS = 22.0
BACKGROUND = {"positive": (255, 214, 120), "negative": (70, 90, 140), "neutral": (170, 175, 180)}  # RGB


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def speak(text: str, path: Path) -> tuple[bytes, int]:
    """espeak-ng -> 16-bit mono PCM bytes and their sample rate."""
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path), text], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            fail(f"unexpected espeak-ng output format in {path}")
        return w.readframes(w.getnframes()), w.getframerate()


def draw_face(np, cv2, sentiment: str, caption: str, t: float, mouth_open: float):
    img = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    img[:] = BACKGROUND[sentiment]
    cx, cy, r = WIDTH // 2, 105 + int(round(4 * math.sin(2 * math.pi * 0.5 * t))), 72
    cv2.circle(img, (cx, cy), r, (255, 200, 40), -1, cv2.LINE_AA)
    cv2.circle(img, (cx, cy), r, (60, 40, 10), 3, cv2.LINE_AA)
    eye_dy = -22
    for dx in (-26, 26):
        cv2.ellipse(img, (cx + dx, cy + eye_dy), (8, 12), 0, 0, 360, (40, 30, 20), -1, cv2.LINE_AA)
    if sentiment == "negative":  # frown + sad brows (inner ends raised) + a tear
        cv2.ellipse(img, (cx, cy + 42), (30, 16), 0, 200, 340, (40, 30, 20), 4, cv2.LINE_AA)
        cv2.line(img, (cx - 38, cy - 36), (cx - 16, cy - 46), (40, 30, 20), 4, cv2.LINE_AA)
        cv2.line(img, (cx + 38, cy - 36), (cx + 16, cy - 46), (40, 30, 20), 4, cv2.LINE_AA)
        cv2.ellipse(img, (cx + 30, cy + 2), (5, 9), 0, 0, 360, (90, 170, 255), -1, cv2.LINE_AA)
    elif sentiment == "positive":  # broad smile
        cv2.ellipse(img, (cx, cy + 10), (40, 28 + int(6 * mouth_open)), 0, 20, 160, (40, 30, 20), 4, cv2.LINE_AA)
    else:  # straight mouth
        cv2.line(img, (cx - 26, cy + 30), (cx + 26, cy + 30), (40, 30, 20), 4, cv2.LINE_AA)
    if mouth_open > 0.15:  # talking: an open mouth that follows the loudness of the voice
        cv2.ellipse(img, (cx, cy + 33), (10, 2 + int(9 * mouth_open)), 0, 0, 360, (90, 20, 20), -1, cv2.LINE_AA)
    (tw, _), _ = cv2.getTextSize(caption, cv2.FONT_HERSHEY_DUPLEX, 1.1, 2)
    cv2.putText(img, caption, ((WIDTH - tw) // 2, 222), cv2.FONT_HERSHEY_DUPLEX, 1.1, (30, 30, 30), 2, cv2.LINE_AA)
    return img


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent.parent / "samples")
    args = parser.parse_args()
    for tool in ("espeak-ng", "ffmpeg"):
        if shutil.which(tool) is None:
            fail(f"{tool} not found on PATH; install it (Debian/Ubuntu: sudo apt-get install espeak-ng ffmpeg)")
    try:
        import cv2
        import numpy as np
    except ImportError as exc:
        fail(f"{exc.name} is missing; run this with the project venv: .venv/bin/python scripts/make_sample.py")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    out_mp4, out_txt = args.out_dir / "demo.mp4", args.out_dir / "demo.txt"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        speech, rate = [], None
        for i, (_, _, text) in enumerate(SEGMENTS):
            pcm, sr = speak(text, tmp / f"s{i}.wav")
            if rate not in (None, sr):
                fail("espeak-ng changed sample rate between sentences")
            rate = sr
            speech.append(np.frombuffer(pcm, dtype=np.int16))
        assert rate is not None
        # Pauses between sentences (and before/after) stretch the clip to about TARGET_SECONDS.
        spoken = sum(s.size for s in speech) / rate
        pause = min(2.0, max(0.8, (TARGET_SECONDS - spoken) / (len(SEGMENTS) + 1)))
        gap = np.zeros(int(pause * rate), np.int16)
        parts, spans, pos = [gap], [], gap.size
        for s in speech:
            spans.append((pos / rate, (pos + s.size) / rate))
            parts += [s, gap]
            pos += s.size + gap.size
        audio = np.concatenate(parts)
        duration = audio.size / rate
        with wave.open(str(tmp / "audio.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(audio.tobytes())

        # The picture switches halfway through each pause, so it leads the words a little.
        bounds = [(spans[i][0] - pause / 2) for i in range(len(spans))] + [duration + 1]
        level = np.abs(audio.astype(np.float32)) / 32768.0
        peak = float(level.max()) or 1.0
        cmd = ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{WIDTH}x{HEIGHT}",
               "-r", str(FPS), "-i", "-", "-i", str(tmp / "audio.wav"),
               "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "30", "-preset", "slow", "-g", str(2 * FPS),
               "-threads", "1", "-c:a", "aac", "-b:a", "48k", "-ac", "1", "-shortest",
               "-movflags", "+faststart", "-map_metadata", "-1", "-fflags", "+bitexact", str(out_mp4)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
        assert proc.stdin is not None
        n_frames = int(math.ceil(duration * FPS))
        for k in range(n_frames):
            t = k / FPS
            seg = max(0, sum(1 for b in bounds[1:-1] if t >= b))
            sentiment, caption, _ = SEGMENTS[seg]
            a, b = int(t * rate), int((t + 1 / FPS) * rate)
            loud = float(level[a:b].mean()) / peak if b > a else 0.0
            proc.stdin.write(draw_face(np, cv2, sentiment, caption, t, min(1.0, 4.0 * loud)).tobytes())
        proc.stdin.close()
        if proc.wait() != 0:
            fail("ffmpeg failed to encode the demo clip (see its message above)")
    out_txt.write_text("\n".join(text for _, _, text in SEGMENTS) + "\n", encoding="utf-8")
    size = out_mp4.stat().st_size
    print(f"wrote {out_mp4} ({duration:.1f} s, {size / 1024:.0f} KiB) and {out_txt}")
    for (sentiment, _, text), (a, b) in zip(SEGMENTS, spans):
        print(f"  {a:5.2f}-{b:5.2f} s  {sentiment:8s}  {text}")


if __name__ == "__main__":
    main()
