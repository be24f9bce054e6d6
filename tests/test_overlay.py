"""Overlay drawing, the mp4 writer and the second-pass renderer, checked by re-opening with PyAV."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from scripts.media import make_video, require_tools, write_wav
from stream.overlay import OverlayState, OverlayTracker, OverlayWriter, draw_overlay, render_overlay_file

STATE = OverlayState(label="negative", score=-0.7, probs={"negative": 0.8, "neutral": 0.15, "positive": 0.05},
                     weights={"image": 0.3, "text": 0.7}, transcript="this is terrible and I am upset " * 5,
                     weights_kind="pretrained")


def sentiment(t: float, label: str, score: float, kind: str = "pretrained") -> dict:
    return {"type": "sentiment", "stream": "s", "t": t, "label": label, "score": score,
            "probs": {"negative": 0.1, "neutral": 0.2, "positive": 0.7}, "weights": kind, "latency_ms": 5.0,
            "modalities": {"image": {"weight": 0.6, "probs": {}, "n": 3}, "text": {"weight": 0.4, "probs": {}, "n": 4}}}


def transcript(t0: float, t1: float, text: str, final: bool = True) -> dict:
    return {"type": "transcript", "stream": "s", "t": t1, "t_start": t0, "t_end": t1, "text": text, "final": final}


def read_back(path: Path) -> tuple[int, bool, np.ndarray]:
    """(decoded video frames, has audio stream, last frame RGB) of a written file."""
    with av.open(str(path)) as c:
        has_audio = bool(c.streams.audio)
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return len(frames), has_audio, frames[-1]


@pytest.mark.parametrize("size", [(160, 120), (321, 241), (1280, 720)])
def test_draw_overlay_changes_pixels_not_input(size):
    w, h = size
    flat = np.full((h, w, 3), 128, np.uint8)
    before = flat.copy()
    out = draw_overlay(flat, STATE)
    assert np.array_equal(flat, before), "input must not be modified"
    assert out.shape == flat.shape and out.dtype == np.uint8
    changed = np.any(out != flat, axis=2)
    assert changed.mean() > 0.05  # the panel, the bars and the transcript strip
    assert changed[: h // 4, : w // 3].mean() > 0.5  # top-left panel
    assert changed[-max(8, h // 20):].mean() > 0.5  # transcript strip at the bottom


def test_draw_overlay_states():
    img = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    waiting = draw_overlay(img, OverlayState(None, None, {}, {}, "", "pretrained"))
    assert not np.array_equal(waiting, img)
    assert np.array_equal(waiting[-10:], img[-10:])  # no transcript: the bottom is left alone
    pos = OverlayState("positive", 0.8, {}, {"image": 0.5, "text": 0.5}, "hi", "pretrained")
    rnd = OverlayState("positive", 0.8, {}, {"image": 0.5, "text": 0.5}, "hi", "random")
    a, b = draw_overlay(img, pos), draw_overlay(img, rnd)
    assert np.any(a[:30, 220:] != b[:30, 220:])  # the "random weights" tag, top right
    neg = draw_overlay(img, OverlayState("negative", -0.8, {}, {"image": 0.5, "text": 0.5}, "hi", "pretrained"))
    assert np.abs(a.astype(int) - neg.astype(int)).sum() > 1000


def test_tracker_prefers_final_text():
    tr = OverlayTracker(max_chars=60)
    tr.feed(transcript(0.0, 1.0, "hello there", final=True))
    tr.feed(transcript(1.0, 1.5, "general", final=False))
    assert tr.transcript() == "hello there general"
    tr.feed(transcript(1.0, 2.0, "general kenobi", final=True))
    assert tr.transcript() == "hello there general kenobi"
    tr.feed(transcript(0.0, 2.2, "hello there general kenobi yes", final=False))  # cumulative partial: ignored
    assert tr.transcript() == "hello there general kenobi"
    for i in range(20):
        tr.feed(transcript(3 + i, 3.5 + i, f"word{i}", final=True))
    text = tr.transcript()
    assert len(text) <= 60 and text.endswith("word19") and not text.startswith("ord")
    tr.feed(sentiment(1.0, "positive", 0.6, "random"))
    st = tr.state()
    assert st.label == "positive" and st.weights == {"image": 0.6, "text": 0.4} and st.weights_kind == "random"


def test_writer_roundtrip_odd_size(tmp_path):
    out = tmp_path / "w.mp4"
    writer = OverlayWriter(str(out), 161, 121, 10.0, with_audio=True)
    rng = np.random.default_rng(0)
    for i in range(20):
        writer.write_video(rng.integers(0, 255, (121, 161, 3), dtype=np.uint8), i / 10)
        # 16 kHz chunks, resampled to the stream's 48 kHz.
        writer.write_audio((0.2 * rng.standard_normal(1600)).astype(np.float32), i / 10, 16000)
    writer.close()
    writer.close()
    n, has_audio, last = read_back(out)
    assert abs(n - 20) <= 2 and has_audio and last.shape == (120, 160, 3)
    with av.open(str(out)) as c:
        a = c.streams.audio[0]
        assert a.codec_context.sample_rate == 48000
        dur = sum(f.samples for f in c.decode(audio=0)) / 48000
    assert dur == pytest.approx(2.0, abs=0.1)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    require_tools("ffmpeg")
    d = tmp_path_factory.mktemp("overlay")
    t = np.arange(2 * 22050) / 22050
    wav = write_wav(d / "tone.wav", 0.3 * np.sin(2 * np.pi * 300 * t), 22050)
    return {"av": make_video(d / "av.mp4", 2.0, size=(320, 240), fps=15, audio=wav),
            "v": make_video(d / "v.webm", 2.0, size=(320, 240), fps=15, codec="vp8")}


def test_render_overlay_file(clips, tmp_path):
    events = [sentiment(0.5, "positive", 0.7), transcript(0.2, 0.9, "I love this, it is wonderful"),
              sentiment(1.2, "negative", -0.6), {"type": "summary", "stream": "s", "t": 2.0}]
    out = tmp_path / "o.mp4"
    assert render_overlay_file(str(clips["av"]), events, str(out)) == 30
    n, has_audio, last = read_back(out)
    assert abs(n - 30) <= 2 and has_audio
    bare = tmp_path / "bare.mp4"
    render_overlay_file(str(clips["av"]), [], str(bare))
    _, _, last_bare = read_back(bare)
    # The last frame shows the newest estimate and the transcript, not the "waiting" panel.
    assert np.abs(last.astype(int) - last_bare.astype(int))[:40, :160].mean() > 5
    assert np.abs(last.astype(int) - last_bare.astype(int))[-12:].mean() > 5
    with av.open(str(out)) as c:
        dur = sum(f.samples for f in c.decode(audio=0)) / c.streams.audio[0].codec_context.sample_rate
    assert dur == pytest.approx(2.0, rel=0.05)


def test_render_video_only_source(clips, tmp_path):
    out = tmp_path / "o.mp4"
    assert render_overlay_file(str(clips["v"]), [sentiment(0.0, "neutral", 0.0)], str(out)) == 30
    n, has_audio, _ = read_back(out)
    assert abs(n - 30) <= 2 and not has_audio


def test_writer_moves_the_file_into_place_only_when_complete(tmp_path):
    out = tmp_path / "w.mp4"
    out.write_bytes(b"an earlier file")
    writer = OverlayWriter(str(out), 64, 48, 10.0, with_audio=False)
    for i in range(5):
        writer.write_video(np.zeros((48, 64, 3), np.uint8), i / 10)
    # While it is written the target holds what it held; anything else is a hidden partial sibling.
    assert out.read_bytes() == b"an earlier file"
    assert all(p.name.startswith(".w.") and p.suffix == ".mp4" for p in tmp_path.iterdir() if p != out)
    writer.close()
    assert read_back(out)[0] == 5 and sorted(tmp_path.iterdir()) == [out]

    with pytest.raises(RuntimeError):
        with OverlayWriter(str(out), 64, 48, 10.0, with_audio=False) as w:
            w.write_video(np.zeros((48, 64, 3), np.uint8), 0.0)
            raise RuntimeError("the run failed")
    assert read_back(out)[0] == 5 and sorted(tmp_path.iterdir()) == [out]  # untouched, nothing left behind


def test_failed_render_keeps_the_target_and_leaves_nothing(clips, tmp_path):
    out = tmp_path / "o.mp4"
    out.write_bytes(b"an earlier overlay")
    # A sentiment event the drawing cannot use (score is not a number) fails the pass half way.
    events = [sentiment(0.2, "positive", 0.5), sentiment(1.0, "negative", "not a number")]  # type: ignore[arg-type]
    with pytest.raises(Exception):  # noqa: B017 (whatever the drawing raises)
        render_overlay_file(str(clips["av"]), events, str(out))
    assert out.read_bytes() == b"an earlier overlay"
    assert sorted(tmp_path.iterdir()) == [out]
