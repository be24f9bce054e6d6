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
    screen = [image() for _ in range(5)]
    for k, shared in enumerate(screen):  # a screen share next to the camera: passed on, not analysed
        shared.transport_source = "screenVideo"
        frames.insert(3 * k + 1, shared)
    processor = SentimentProcessor(runtime, stream="call-1")
    down, up = await asyncio.wait_for(run_test(processor, frames_to_send=frames), 120)

    # Every frame passed on, in order, unchanged (the same objects).
    media = [f for f in down if isinstance(f, (InputImageRawFrame, InputAudioRawFrame))]
    ours = [f for f in frames if isinstance(f, (InputImageRawFrame, InputAudioRawFrame))]
    assert len(media) == len(ours) == len(sent) + len(screen) and all(a is b for a, b in zip(media, ours))
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
    assert summary["frames_in"] == steps  # the camera's frames; the screen share's were not read
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


# ------------------------------------------------------------------------------ end to end over WebRTC
class _GalleryTrack:
    """A camera sending the gallery view at 10 fps (aiortc VideoStreamTrack, paced here)."""

    def __new__(cls):
        from aiortc import VideoStreamTrack

        class Track(VideoStreamTrack):
            async def recv(self):
                import av

                if not hasattr(self, "_k"):
                    self._k = 0
                await asyncio.sleep(0.1)
                frame = av.VideoFrame.from_ndarray(GALLERY, format="rgb24")
                frame.pts, frame.time_base = self._k * 9000, __import__("fractions").Fraction(1, 90000)
                self._k += 1
                return frame

        return Track()


@pytest.mark.slow
@on_module_loop
async def test_webrtc_client_through_small_webrtc_transport_gets_sentiment_messages(runtime):
    """The example's app (examples/pipecat_webrtc.py) on loopback: an aiortc client sends a camera
    (the gallery view) and a microphone through Pipecat's SmallWebRTCTransport, the pipeline's
    RTVI sends each estimate back on the data channel, and the overlay's feed follows the call."""
    import aiohttp
    from aiohttp.test_utils import TestServer
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import AudioStreamTrack

    from examples.pipecat_webrtc import CALLS, create_app

    app = create_app(runtime, runtime.cfg, "e2e")
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("/"))
    pc = RTCPeerConnection()
    messages: list[dict] = []
    got = asyncio.Event()
    try:
        pc.addTransceiver(AudioStreamTrack(), direction="sendrecv")  # Pipecat's order: audio, then video
        pc.addTransceiver(_GalleryTrack(), direction="sendrecv")
        channel = pc.createDataChannel("chat", ordered=True)

        @channel.on("message")
        def on_message(text):
            msg = json.loads(text)
            if msg.get("label") == "rtvi-ai" and msg.get("type") == "server-message":
                messages.append(msg["data"])
                if sum(m["type"] == "sentiment" and m["modalities"]["image"]["n"] > 0 for m in messages) >= 4:
                    got.set()  # estimates that rest on camera frames

        await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession() as http:
            async with http.post(base + "api/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"}) as r:
                assert r.status == 200, await r.text()
                answer = await r.json()
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
            assert answer["pc_id"]
            async with http.post(base + "api/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"}) as r:
                assert r.status == 409  # one call per stream name

            # The overlay's feed follows the call (the events as sentistream serve sends them).
            async with http.ws_connect(base + "ws/events?stream=e2e") as follower:
                followed = None
                async with asyncio.timeout(90):
                    while followed is None:
                        msg = await follower.receive()
                        assert msg.type == aiohttp.WSMsgType.TEXT, msg
                        event = json.loads(msg.data)
                        followed = event if event["type"] == "sentiment" else None
            assert followed["stream"] == "e2e" and followed["label"] in LABELS
            async with http.get(base + "overlay?stream=e2e&theme=light") as r:
                assert r.status == 200

            try:
                await asyncio.wait_for(got.wait(), 90)
            except TimeoutError:
                session = app[CALLS].connections["e2e"].sentiment.session
                pytest.fail(f"no estimates on camera frames: {session.video.frames_in} frames in, {len(messages)} messages")
            estimates = [m for m in messages if m["type"] == "sentiment"]
            assert all(m["stream"] == "e2e" and m["label"] in LABELS for m in estimates)
            assert max(m["modalities"]["image"]["n"] for m in estimates) >= 2  # camera frames reached CLIP
            assert max(len(m.get("faces") or []) for m in estimates) >= 1  # faces found in the decoded video
            assert any(m["type"] == "warning" for m in messages)  # random weights, said to the browser

            await pc.close()  # the call ends: its pipeline stops and the stream is gone
            calls = app[CALLS]
            async with asyncio.timeout(30):
                while calls.connections:
                    await asyncio.sleep(0.2)
            async with http.ws_connect(base + "ws/events?stream=e2e") as follower:
                error = json.loads((await follower.receive()).data)
            assert error["code"] == "unknown_stream"
    finally:
        await pc.close()
        await server.close()


@pytest.mark.slow
@pytest.mark.browser
def test_example_script_runs_and_its_page_shows_estimates_in_chromium(tmp_path):
    """`python examples/pipecat_webrtc.py` as a user runs it; Debian's headless Chromium with a fake
    camera (the gallery view) presses Start on its page and must show a label and both faces; the
    OBS overlay of the call goes live next to it; Ctrl-C ends the example cleanly."""
    import os
    import signal

    from PIL import Image

    from scripts.media import require_tools
    from tests.test_browser import _need_chromium, headless_chromium, url_from_stderr

    _need_chromium()
    require_tools("ffmpeg")
    from selenium.webdriver.support.ui import WebDriverWait

    Image.fromarray(GALLERY).save(tmp_path / "gallery.png")
    camera = tmp_path / "camera.y4m"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-loop", "1", "-i", str(tmp_path / "gallery.png"),
                    "-t", "2", "-r", "10", "-pix_fmt", "yuv420p", str(camera)], check=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "examples/pipecat_webrtc.py", "--config", str(ROOT / "configs" / "tiny-test.yaml"),
                             "--port", "0", "--stream", "desk", "--token", "tk"],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    driver = None
    try:
        base, seen = url_from_stderr(proc, r"call page: (http://\S+/)")
        assert base, "the example did not start:\n" + "".join(seen[-20:])
        driver = headless_chromium(tmp_path / "profile", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                                   f"--use-file-for-fake-video-capture={camera}", "--window-size=1100,700")
        driver.get(base)
        driver.find_element("id", "start").click()

        def shows_estimate(d) -> bool:
            status = d.find_element("id", "status").text
            assert not status.startswith("error"), status
            return d.find_element("id", "label").text.lower() in LABELS and len(d.find_elements("css selector", "#faces li")) == 2

        WebDriverWait(driver, 90, poll_frequency=0.5).until(shows_estimate)
        assert "random" in driver.find_element("id", "note").text  # the warning reached the page too
        assert driver.find_element("id", "overlay").get_attribute("href").endswith("overlay?stream=desk&theme=dark")
        driver.switch_to.new_window("tab")  # the call page stays open: its call goes on
        driver.get(base + "overlay?stream=desk&token=tk")
        WebDriverWait(driver, 30, poll_frequency=0.5).until(
            lambda d: d.execute_script("return document.getElementById('panel').dataset.state") == "live")
    finally:
        if driver is not None:
            driver.quit()
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(30) == 0, "the example did not exit cleanly on Ctrl-C"
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stderr.close()
