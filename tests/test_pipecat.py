"""`stream.integrations.pipecat.SentimentProcessor` in real Pipecat pipelines (issue 26).

Pipecat's own `run_test` drives the processor with synthetic frames (the gallery view: two real
faces, the astronaut photo; PCM audio; an upstream TranscriptionFrame), on the tiny random CLIP.
The end-to-end test puts an aiortc client on loopback through `SmallWebRTCTransport`, with the
RTVI processor Pipecat adds, and reads the sentiment server messages off the data channel.
Everything runs offline: `test_pipecat_runs_without_the_network` checks no connection leaves
the machine while Pipecat starts.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("pipecat", reason="needs the pipecat extra (pip install -e '.[pipecat]')")

from pipecat.frames.frames import (  # noqa: E402
    InputAudioRawFrame,
    InputImageRawFrame,
    TranscriptionFrame,
    UserImageRawFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed  # noqa: E402
from pipecat.processors.frameworks.rtvi import RTVIServerMessageFrame  # noqa: E402
from pipecat.tests.utils import SleepFrame, run_test  # noqa: E402

from scripts.media import gallery_frame  # noqa: E402
from stream.integrations.pipecat import SentimentFrame, SentimentProcessor, image_to_rgb  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

on_module_loop = pytest.mark.asyncio(loop_scope="module")  # the shared tiny runtime lives on the module's loop

LABELS = ("positive", "neutral", "negative")
STEP_S = 0.1  # one camera frame (and 100 ms of audio) per step
GALLERY = gallery_frame(0.0, 3600.0)  # 480x640 RGB, two faces


def image(user: bool = False) -> InputImageRawFrame:
    h, w = GALLERY.shape[:2]
    if user:
        return UserImageRawFrame(image=GALLERY.tobytes(), size=(w, h), format="RGB", user_id="u1")
    return InputImageRawFrame(image=GALLERY.tobytes(), size=(w, h), format="RGB")


def audio(rate: int = 16000, channels: int = 1) -> InputAudioRawFrame:
    n = int(rate * STEP_S)
    t = np.arange(n) / rate
    tone = (0.1 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2")
    return InputAudioRawFrame(audio=np.repeat(tone, channels).tobytes(), sample_rate=rate, num_channels=channels)


def sentiments(frames) -> list[SentimentFrame]:
    return [f for f in frames if isinstance(f, SentimentFrame)]


def test_image_formats_read_and_refused():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    frame = InputImageRawFrame(image=rgb.tobytes(), size=(3, 2), format="RGB")
    assert np.array_equal(image_to_rgb(frame), rgb)
    bgra = np.concatenate([rgb[..., ::-1], np.full((2, 3, 1), 255, np.uint8)], axis=2)
    assert np.array_equal(image_to_rgb(InputImageRawFrame(image=bgra.tobytes(), size=(3, 2), format="BGRA")), rgb)
    rgba = np.concatenate([rgb, np.zeros((2, 3, 1), np.uint8)], axis=2)
    assert np.array_equal(image_to_rgb(InputImageRawFrame(image=rgba.tobytes(), size=(3, 2), format="RGBA")), rgb)
    assert image_to_rgb(InputImageRawFrame(image=b"\xff\xd8jpeg", size=(3, 2), format="JPEG")) is None
    assert image_to_rgb(InputImageRawFrame(image=rgb.tobytes()[:-1], size=(3, 2), format="RGB")) is None  # short


@pytest.mark.slow
@on_module_loop
async def test_a_sentiment_frame_about_every_hop_and_every_frame_passed_on(runtime):
    steps = 40  # 4 s of camera at 10 fps, with 100 ms audio chunks at 48 kHz stereo (resampled)
    sent = []
    for k in range(steps):
        sent += [image(user=k % 2 == 1), audio(48000, 2)]
    frames = [f for pair in zip(sent[::2], sent[1::2]) for f in (*pair, SleepFrame(sleep=STEP_S))]
    processor = SentimentProcessor(runtime, stream="call-1")
    down, up = await asyncio.wait_for(run_test(processor, frames_to_send=frames), 120)

    # Every frame passed on, in order, unchanged (the same objects).
    media = [f for f in down if isinstance(f, (InputImageRawFrame, InputAudioRawFrame))]
    assert len(media) == len(sent) and all(a is b for a, b in zip(media, sent))
    assert not up

    estimates = sentiments(down)
    hop = runtime.cfg.window.hop
    expected = steps * STEP_S / hop  # 8
    assert 0.6 * expected <= len(estimates) <= expected + 2, [e.t for e in estimates]
    ts = [e.t for e in estimates]
    assert ts == sorted(ts) and 0.6 * hop <= float(np.median(np.diff(ts))) <= 1.5 * hop, ts
    for e in estimates:
        assert e.label in LABELS and -1 <= e.score <= 1 and e.event["stream"] == "call-1"
        assert sum(e.event["probs"].values()) == pytest.approx(1.0, abs=1e-4)
    assert max(len(e.faces) for e in estimates) == 2  # both faces of the gallery view
    assert estimates[-1].event["modalities"]["image"]["n"] >= 3

    # The browser gets the same estimates as RTVI server messages, and the random-weights warning.
    messages = [f.data for f in down if isinstance(f, RTVIServerMessageFrame)]
    assert [m for m in messages if m["type"] == "sentiment"] == [e.event for e in estimates]
    assert any(m["type"] == "warning" and "random" in m["message"] for m in messages)
    json.dumps(messages)  # what goes over the data channel

    summary = processor.summary
    assert summary is not None and summary["estimates"] == len(estimates) and processor.events_dropped == 0
    assert summary["audio_seconds"] == pytest.approx(steps * STEP_S, abs=0.15)  # the audio reached Whisper
    assert processor.frames_unreadable == 0


@pytest.mark.slow
@on_module_loop
async def test_upstream_transcripts_replace_whisper_and_reach_the_estimates(runtime):
    assert runtime.whisper is not None  # ours is loaded: the processor must still leave it out
    words = "I am so happy with this wonderful result"
    frames = []
    for k in range(30):
        if k == 10:
            frames.append(TranscriptionFrame(text=words, user_id="u1", timestamp="2026-01-01T00:00:01Z"))
        frames += [image(), audio(), SleepFrame(sleep=STEP_S)]
    processor = SentimentProcessor(runtime, rtvi=False)
    down, _ = await asyncio.wait_for(run_test(processor, frames_to_send=frames), 120)

    assert processor.upstream_text
    assert any(isinstance(f, TranscriptionFrame) and f.text == words for f in down)  # passed on too
    assert not any(isinstance(f, RTVIServerMessageFrame) for f in down)  # rtvi=False
    estimates = sentiments(down)
    n_words = [e.event["modalities"]["text"]["n"] for e in estimates]
    assert n_words[0] == 0 and n_words[-1] == len(words.split()), n_words
    assert n_words == sorted(n_words)
    # Whisper heard the first second of audio only: after the TranscriptionFrame none went to it.
    assert processor.summary["audio_seconds"] == pytest.approx(10 * STEP_S, abs=0.15)


class _GatedEngine:
    """The real engine behind a gate: no image is encoded until `gate` opens."""

    def __init__(self, engine, gate: asyncio.Event) -> None:
        self._engine, self._gate = engine, gate

    def __getattr__(self, name):
        return getattr(self._engine, name)

    async def encode_frame(self, *args, **kwargs):
        await self._gate.wait()
        return await self._engine.encode_frame(*args, **kwargs)


class _OpenWhenAllPassed(BaseObserver):
    """Opens the gate once `n` camera frames have left the processor."""

    def __init__(self, processor, n: int, gate: asyncio.Event) -> None:
        super().__init__()
        self.processor, self.n, self.gate, self.seen, self.estimates_before = processor, n, gate, 0, None

    async def on_push_frame(self, data: FramePushed):
        if data.source is self.processor and isinstance(data.frame, InputImageRawFrame):
            self.seen += 1
            if self.seen == self.n:
                self.estimates_before = self.processor.session.estimates
                self.gate.set()


@pytest.mark.slow
@on_module_loop
async def test_process_frame_never_waits_for_compute(runtime):
    """With the image encoder stalled, every camera frame still goes through the processor; the
    estimates come once compute resumes. A processor that waited for compute would hold the frames
    until the watchdog opens the gate (the observer opens it only after all frames passed)."""
    gate = asyncio.Event()
    stalled = dataclasses.replace(runtime, engine=_GatedEngine(runtime.engine, gate))
    processor = SentimentProcessor(stalled, rtvi=False)
    steps = 12
    observer = _OpenWhenAllPassed(processor, steps, gate)
    frames = [f for _ in range(steps) for f in (image(), SleepFrame(sleep=STEP_S))] + [SleepFrame(sleep=1.0)]
    stuck = []
    watchdog = asyncio.get_running_loop().call_later(30, lambda: (stuck.append(observer.seen), gate.set()))
    try:
        down, _ = await asyncio.wait_for(run_test(processor, frames_to_send=frames, observers=[observer]), 120)
    finally:
        watchdog.cancel()
    assert not stuck, f"only {stuck[0]}/{steps} frames got through while the encoder was stalled"
    assert observer.estimates_before == 0  # nothing was estimated while frames went through
    assert len(sentiments(down)) >= 1  # and the estimates came after


def test_plain_imports_never_load_pipecat():
    code = ("import sys, stream, stream.api, stream.cli, stream.server, stream.integrations; "
            "assert 'pipecat' not in sys.modules, 'pipecat imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@pytest.mark.slow
def test_pipecat_runs_without_the_network(tmp_path):
    """Importing Pipecat and running a SentimentProcessor pipeline opens no connection off this
    machine and downloads nothing (no NLTK data either)."""
    script = tmp_path / "offline.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, ipaddress, socket, sys
        attempts = []
        real_connect = socket.socket.connect

        def guarded(self, address):
            host = address[0] if isinstance(address, tuple) else None
            try:
                local = host is None or ipaddress.ip_address(host).is_loopback
            except ValueError:
                local = False  # a name: a lookup would go out
            if not local:
                attempts.append(address)
                raise OSError("network is off in this test")
            return real_connect(self, address)

        socket.socket.connect = guarded
        real_getaddrinfo = socket.getaddrinfo
        def lookup(host, *args, **kwargs):
            if host not in (None, "localhost", "127.0.0.1", "::1"):
                attempts.append(host)
                raise socket.gaierror("network is off in this test")
            return real_getaddrinfo(host, *args, **kwargs)
        socket.getaddrinfo = lookup

        sys.path.insert(0, {str(ROOT)!r})
        import numpy as np
        from pipecat.frames.frames import InputImageRawFrame
        from pipecat.tests.utils import SleepFrame, run_test
        from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport  # noqa: F401
        from stream.integrations.pipecat import SentimentFrame, SentimentProcessor, build_runtime_for_pipecat

        async def main():
            runtime = await build_runtime_for_pipecat({str(ROOT / 'configs' / 'tiny-test.yaml')!r}, need_asr=False)
            try:
                img = np.zeros((120, 160, 3), np.uint8)
                frames = [f for _ in range(15) for f in (InputImageRawFrame(image=img.tobytes(), size=(160, 120), format="RGB"),
                                                          SleepFrame(sleep=0.1))]
                down, _ = await run_test(SentimentProcessor(runtime), frames_to_send=frames)
                assert any(isinstance(f, SentimentFrame) for f in down)
            finally:
                await runtime.close()

        asyncio.run(main())
        assert not attempts, attempts
        assert "nltk" not in sys.modules
        print("offline ok")
    """))
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "offline ok" in out.stdout, out.stderr[-3000:]
