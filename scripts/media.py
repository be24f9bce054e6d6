"""Real test media from Debian tools: speech from espeak-ng, video from ffmpeg's lavfi sources.

Every generator takes an explicit output path and returns early when that file already exists, so
session fixtures can cache media under `tmp_path_factory.mktemp(...)`; `cached(dir, kind, ...)`
builds a stable file name from the parameters.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import wave
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np

ESPEAK_RATE = 22050  # espeak-ng's native output rate


# A ~40 s neutral script (8 sentences) shared by the ASR tests and the benchmark.
SPEECH_SCRIPT: tuple[str, ...] = (
    "The weather is lovely today, and the sun is shining over the quiet little town.",
    "I went to the market this morning to buy some fresh bread and a bag of apples.",
    "My brother likes to play football with his friends after school on Fridays.",
    "We should finish the report before the meeting starts in the afternoon.",
    "The train was late again this morning, so everybody arrived at work tired.",
    "She opened the window and listened to the birds singing in the garden.",
    "This coffee tastes much better than the one we had yesterday at the station.",
    "Please remember to lock the door and turn off the lights when you leave.",
)


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate, ignoring case, punctuation and spacing (tests and benchmarks alike)."""
    import jiwer

    norm = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
                          jiwer.Strip(), jiwer.ReduceToListOfListOfWords()])
    return float(jiwer.wer(reference, hypothesis, reference_transform=norm, hypothesis_transform=norm))


def require_tools(*names: str) -> None:
    """Skip the calling test when a Debian tool is missing (`make apt` installs them)."""
    import pytest

    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (install with `make apt`)")


def cached(cache_dir: Path, kind: str, suffix: str, *params: object) -> Path:
    """A file name in cache_dir unique to these parameters."""
    digest = hashlib.sha1(repr(params).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"{kind}-{digest}{suffix}"


def _run(cmd: Sequence[str]) -> None:
    proc = subprocess.run(list(cmd), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")


# --------------------------------------------------------------------------------------- audio
def write_wav(path: Path | str, samples: np.ndarray, rate: int) -> Path:
    """float mono [-1, 1] -> 16-bit PCM WAV (stdlib `wave`, no soundfile dependency)."""
    pcm = (np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return Path(path)


def read_wav(path: Path | str) -> tuple[np.ndarray, int]:
    """16-bit PCM WAV -> (float32 mono, rate); channels are averaged."""
    with wave.open(str(path), "rb") as w:
        assert w.getsampwidth() == 2, "only 16-bit PCM"
        raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        data = raw.reshape(-1, w.getnchannels()).mean(axis=1)
        return (data / 32768.0).astype(np.float32), w.getframerate()


def speak(text: str, path: Path | str, wpm: int = 160, voice: str = "en-us") -> Path:
    """espeak-ng text -> WAV (22.05 kHz mono)."""
    path = Path(path)
    if not path.exists():
        tmp = path.with_suffix(".part.wav")
        _run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(tmp), text])
        tmp.replace(path)
    return path


def _trim_silence(x: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    # espeak pads each utterance with silence; trimming it makes sentence timings exact.
    loud = np.flatnonzero(np.abs(x) > threshold)
    return x[loud[0] : loud[-1] + 1] if loud.size else x[:0]


def make_speech_clip(
    sentences: Sequence[str],
    pause_s: float,
    path: Path | str,
    wpm: int = 160,
    lead_s: Optional[float] = None,
    voice: str = "en-us",
) -> tuple[Path, list[tuple[str, float, float]]]:
    """Sentences spoken one after another with `pause_s` of silence between them (and `lead_s`,
    default pause_s, before the first and after the last). Returns the WAV and, per sentence,
    (sentence, start_s, end_s) of its audible part."""
    path = Path(path)
    lead = pause_s if lead_s is None else lead_s
    parts: list[np.ndarray] = [np.zeros(int(lead * ESPEAK_RATE), np.float32)]
    timings: list[tuple[str, float, float]] = []
    cursor = len(parts[0])
    for i, sentence in enumerate(sentences):
        spoken = speak(sentence, path.with_name(f"{path.stem}.s{i}.wav"), wpm=wpm, voice=voice)
        audio, rate = read_wav(spoken)
        assert rate == ESPEAK_RATE, rate
        audio = _trim_silence(audio)
        timings.append((sentence, cursor / rate, (cursor + audio.size) / rate))
        gap = pause_s if i < len(sentences) - 1 else lead
        parts += [audio, np.zeros(int(gap * rate), np.float32)]
        cursor += audio.size + int(gap * rate)
    if not path.exists():
        write_wav(path, np.concatenate(parts), ESPEAK_RATE)
    return path, timings


def sox_synth(path: Path | str, seconds: float, *synth: str, volume: float = 1.0, effects: Sequence[str] = ()) -> Path:
    """`sox -n ... synth SECONDS <synth...> <effects...>` at 16 kHz mono: noise ("pinknoise",
    "brownnoise") or tones ("sawtooth", "110-220"); `volume` scales the amplitude."""
    path = Path(path)
    if not path.exists():
        tmp = path.with_suffix(".part.wav")
        _run(["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(tmp), "synth", f"{seconds:g}", *synth,
              *effects, "vol", f"{volume:g}"])
        tmp.replace(path)
    return path


def make_music_clip(path: Path | str, seconds: float, noise_volume: float = 0.0) -> Path:
    """Music-like audio from sox: a plucked-string melody (C4 E4 G4 C5 A3 F4, 0.45 s a note) looped
    to `seconds`, optionally mixed with pink room noise at `noise_volume`."""
    path = Path(path)
    if path.exists():
        return path
    notes = [str(sox_synth(path.with_name(f"{path.stem}.{n}.wav"), 0.45, "pluck", n, volume=0.6))
             for n in ("C4", "E4", "G4", "C5", "A3", "F4")]
    loops = int(np.ceil(seconds / (0.45 * len(notes))))
    melody = path.with_name(f"{path.stem}.melody.wav")
    _run(["sox", *notes, str(melody), "repeat", str(loops - 1), "trim", "0", f"{seconds:g}"])
    if noise_volume <= 0:
        melody.replace(path)
        return path
    noise = sox_synth(path.with_name(f"{path.stem}.noise.wav"), seconds, "pinknoise", volume=noise_volume)
    _run(["sox", "-m", str(melody), str(noise), str(path)])
    return path


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """`speech` plus `noise` (looped/cut to length) scaled so speech power / noise power = snr_db,
    speech power measured over its audible samples (pauses do not dilute it)."""
    noise = np.resize(noise, speech.size)
    loud = np.abs(speech) > 0.01
    p_speech = float(np.mean(speech[loud] ** 2)) if loud.any() else 0.0
    p_noise = float(np.mean(noise ** 2)) or 1.0
    return (speech + noise * np.sqrt(p_speech / (p_noise * 10 ** (snr_db / 10)))).astype(np.float32)


# --------------------------------------------------------------------------------------- video
def make_video(
    path: Path | str,
    seconds: float,
    size: tuple[int, int] = (320, 240),
    fps: int = 15,
    audio: Optional[Path | str] = None,
    codec: Literal["h264", "vp8"] = "h264",
    pattern: str = "testsrc2",
    loop_audio: bool = False,
) -> Path:
    """A synthetic video (lavfi `testsrc2`, or e.g. pattern="color=c=red") of exactly `seconds`,
    optionally with a WAV track (padded with silence / cut to fit; `loop_audio`: repeated to fill
    a long clip). h264 -> mp4 + aac, vp8 -> webm + opus: pick the path suffix to match."""
    path = Path(path)
    if path.exists():
        return path
    w, h = size
    source = pattern if "=" in pattern else f"{pattern}="
    source += f"{':' if not source.endswith('=') else ''}size={w}x{h}:rate={fps}"
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source]
    if audio is not None:
        cmd += (["-stream_loop", "-1", "-i", str(audio)] if loop_audio else ["-i", str(audio), "-af", "apad"])
    if codec == "h264":
        cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", str(fps)]
        cmd += ["-c:a", "aac", "-b:a", "96k"] if audio is not None else []
    elif codec == "vp8":
        cmd += ["-c:v", "libvpx", "-b:v", "300k", "-deadline", "realtime", "-g", str(fps)]
        cmd += ["-c:a", "libopus", "-b:a", "64k"] if audio is not None else []
    else:
        raise ValueError(f"codec must be h264 or vp8, got {codec!r}")
    tmp = path.with_name(f"{path.stem}.part{path.suffix}")
    _run([*cmd, "-t", f"{seconds:.3f}", str(tmp)])
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------- gallery view
# A 2x2 "gallery view" of a real photo (scikit-image's astronaut.png: one frontal face): each tile
# is 320x240 and shows the photo (240x240) still, moving slowly left to right, only during the
# middle third of the clip, or nothing (a plain grey tile).
GALLERY_SIZE = (640, 480)
GALLERY_TILE = (320, 240)
GALLERY_TILES = ("still", "moving", "empty", "middle")  # top-left, top-right, bottom-left, bottom-right
_PHOTO_SIDE = 240
_MOVE_PX = 80  # how far the moving photo travels over the clip


def _astronaut(side: int) -> np.ndarray:
    import cv2
    from skimage import data

    return cv2.resize(data.astronaut(), (side, side), interpolation=cv2.INTER_AREA)


def gallery_frame(t: float, seconds: float, tiles: Sequence[str] = GALLERY_TILES, _photo: dict = {}) -> np.ndarray:  # noqa: B006
    """The gallery frame at media time t (RGB uint8, 480x640)."""
    if "img" not in _photo:
        _photo["img"] = _astronaut(_PHOTO_SIDE)
    photo = _photo["img"]
    tw, th = GALLERY_TILE
    frame = np.full((GALLERY_SIZE[1], GALLERY_SIZE[0], 3), 96, np.uint8)
    for i, kind in enumerate(tiles):
        x0, y0 = (i % 2) * tw, (i // 2) * th
        frame[y0:y0 + th, x0:x0 + tw] = 96 + 16 * i  # tiles tell apart
        if kind == "empty" or (kind == "middle" and not seconds / 3 <= t < 2 * seconds / 3):
            continue
        offset = int(round(_MOVE_PX * min(1.0, t / seconds))) if kind == "moving" else (tw - _PHOTO_SIDE) // 2
        frame[y0:y0 + th, x0 + offset:x0 + offset + _PHOTO_SIDE] = photo
    return frame


def gallery_tile_of(x: float, y: float) -> int:
    """Which tile (index into the tiles) a source-pixel point lies in."""
    return int(y // GALLERY_TILE[1]) * 2 + int(x // GALLERY_TILE[0])


def make_gallery_video(path: Path | str, seconds: float, fps: int = 10, tiles: Sequence[str] = GALLERY_TILES) -> Path:
    """The gallery view as an h264 mp4 (no audio), written with PyAV."""
    import av

    path = Path(path)
    if path.exists():
        return path
    tmp = path.with_name(f"{path.stem}.part{path.suffix}")
    with av.open(str(tmp), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = GALLERY_SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "20"}
        for i in range(int(round(seconds * fps))):
            frame = av.VideoFrame.from_ndarray(gallery_frame(i / fps, seconds, tiles), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.replace(path)
    return path


def make_webcam_clip(path: Path | str, seconds: float, size: tuple[int, int], work: Path | str,
                     fps: int = 30) -> Path:
    """A webcam-like clip: espeak-ng speech (SPEECH_SCRIPT, 1 s pauses, repeated to fill `seconds`)
    over ffmpeg's moving test pattern at `size` and `fps`, H.264 with a keyframe every second."""
    wav, _ = make_speech_clip(list(SPEECH_SCRIPT), 1.0, Path(work) / "webcam-speech.wav", wpm=150)
    return make_video(path, seconds, size=size, fps=fps, audio=wav, loop_audio=True)
