"""`sentistream serve`'s non-WebRTC interfaces, in process with real clients: `POST /analyze`
(NDJSON streamed back), `GET /ws` (aiohttp WebSocket client sending JPEG frames and espeak-ng speech
as PCM) and `GET /ws/events` (following a WebSocket and a real aiortc WebRTC stream).

One tiny-CLIP runtime (and the bundled Whisper) per module, on the module's event loop."""
from __future__ import annotations

import asyncio
import glob
import json
import os
import struct
import tempfile
import time

import aiohttp
import cv2
import numpy as np
import pytest

from scripts.media import make_speech_clip, make_video, read_wav, require_tools
from stream.sources import demo_path
from tests.test_server import SPEECH, SPEECH_WORDS, Client, FlatVideo, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="module")



@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> tuple[np.ndarray, int]:
    require_tools("espeak-ng")
    wav, _ = make_speech_clip(SPEECH, 0.6, tmp_path_factory.mktemp("ws") / "speech.wav", lead_s=0.5)
    return read_wav(wav)


def uploads_on_disk() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "sentistream-upload-*")))


def header(kind: bytes, t: float) -> bytes:
    return struct.pack("<cd", kind, t)


def jpeg(i: int) -> bytes:
    img = np.full((120, 160, 3), (40 + i % 200, 120, 200), np.uint8)
    cv2.putText(img, str(i), (20, 80), cv2.FONT_HERSHEY_SIMPLEX, 2, (255, 255, 255), 3)
    ok, data = cv2.imencode(".jpg", img)
    assert ok
    return data.tobytes()


def pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


async def receive_all(ws: aiohttp.ClientWebSocketResponse, timeout: float = 60) -> list[dict]:
    out = []
    async with asyncio.timeout(timeout):
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                out.append(json.loads(msg.data))
    return out


# ------------------------------------------------------------------------------ POST /analyze
@pytest.mark.slow
async def test_analyze_streams_ndjson_of_the_demo_ending_in_summary(serve):
    base = await serve(token="s3cret")
    before = uploads_on_disk()
    body = demo_path().read_bytes()
    lines, arrivals = [], []
    async with aiohttp.ClientSession() as http:
        async with http.post(base + "analyze", data=body, headers={"Authorization": "Bearer s3cret"}) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("application/x-ndjson")
            stream_id = r.headers["X-Stream-Id"]
            assert r.headers.get("Transfer-Encoding") == "chunked"
            async for line in r.content:
                lines.append(json.loads(line))
                arrivals.append(time.monotonic())
    assert lines[-1]["type"] == "summary" and lines[-1]["media_seconds"] > 20
    assert all(e["stream"] == stream_id for e in lines)
    kinds = [e["type"] for e in lines]
    assert kinds.count("sentiment") >= 40 and kinds.count("summary") == 1
    text = " ".join(e["text"] for e in lines if e["type"] == "transcript" and e["final"]).lower()
    assert "wonderful" in text and "terrible" in text, text
    assert arrivals[-1] - arrivals[0] > 1.0  # streamed while produced, not one body at the end
    assert not any("sentistream-upload" in json.dumps(e) for e in lines)
    assert uploads_on_disk() == before


async def test_analyze_multipart_and_errors(serve, tmp_path):
    require_tools("ffmpeg")
    base = await serve(token="s3cret", max_upload_bytes=200_000)
    auth = {"Authorization": "Bearer s3cret"}
    clip = make_video(tmp_path / "silent.mp4", 2.0, size=(160, 120))
    before = uploads_on_disk()
    async with aiohttp.ClientSession() as http:
        form = aiohttp.FormData()
        form.add_field("file", clip.read_bytes(), filename="clip.mp4", content_type="video/mp4")
        async with http.post(base + "analyze", data=form, headers=auth) as r:
            assert r.status == 200
            events = [json.loads(line) async for line in r.content]
        assert events[-1]["type"] == "summary" and any(e["type"] == "sentiment" for e in events)
        assert any(e["type"] == "warning" and "the upload has no audio" in e["message"] for e in events)

        async with http.post(base + "analyze", data=b"this is not a video" * 100, headers=auth) as r:
            assert r.status == 400
            assert "not a media file" in (await r.json())["error"]
        async with http.post(base + "analyze", data=b"\0" * 300_000, headers=auth) as r:  # Content-Length
            assert r.status == 413 and "limit 200000" in (await r.json())["error"]

        async def chunks():  # no Content-Length: counted while saved
            for _ in range(40):
                yield b"\0" * 10_000

        async with http.post(base + "analyze", data=chunks(), headers=auth) as r:
            assert r.status == 413
        async with http.post(base + "analyze", data=clip.read_bytes(), headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
        async with http.post(base + "analyze", data=b"", headers=auth) as r:
            assert r.status == 400
    assert uploads_on_disk() == before
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "healthz", headers=auth) as r:  # details need the token
            assert (await r.json())["connections"] == 0


# ------------------------------------------------------------------------------ GET /ws
@pytest.mark.slow
async def test_ws_jpeg_and_speech_give_transcript_and_sentiment(serve, speech):
    samples, rate = speech
    base = await serve(token="tok")
    url = base.replace("http", "ws") + "ws"
    followed: list[dict] = []
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url, headers={"Authorization": "Bearer tok"}) as ws:
            await ws.send_json({"type": "start", "stream": "cam-1", "video": {"format": "jpeg"},
                                "audio": {"format": "pcm_s16le", "rate": rate}})
            ready = await ws.receive_json(timeout=10)
            assert ready["type"] == "ready" and ready["stream"] == "cam-1"
            async with http.ws_connect(base.replace("http", "ws") + "ws/events?stream=cam-1&token=tok") as follower:
                follow_task = asyncio.create_task(receive_all(follower, timeout=120))
                collected = asyncio.create_task(receive_all(ws, timeout=120))
                step, t0 = 0.1, time.monotonic()
                n = int(len(samples) / rate / step) + 15  # plus 1.5 s of silence: the last words settle
                for i in range(n):
                    chunk = samples[int(i * step * rate):int((i + 1) * step * rate)]
                    if chunk.size == 0:
                        chunk = np.zeros(int(step * rate), np.float32)
                    await ws.send_bytes(header(b"A", 100.0 + i * step) + pcm16(chunk))
                    await ws.send_bytes(header(b"V", 100.0 + i * step) + jpeg(i))
                    await asyncio.sleep(max(0.0, t0 + (i + 1) * step - time.monotonic()))  # real time
                await ws.send_json({"type": "end"})
                events = await collected
                followed = await follow_task
            assert ws.close_code == 1000
    assert events[-1]["type"] == "summary", events[-3:]
    summary = events[-1]
    assert summary["frames_rate_limited"] == 0 and summary["audio_chunks_refused"] == 0
    assert summary["frames_in"] >= n - 2 and summary["audio_seconds"] > len(samples) / rate - 0.5
    sentiments = [e for e in events if e["type"] == "sentiment"]
    assert len(sentiments) >= 5 and all(e["stream"] == "cam-1" for e in sentiments)
    assert all(e["modalities"]["image"]["n"] >= 0 for e in sentiments)
    text = " ".join(e["text"] for e in events if e["type"] == "transcript" and e["final"]).lower()
    assert len(SPEECH_WORDS & set(text.replace(".", " ").replace(",", " ").split())) >= 3, text
    # The follower saw the same stream's estimates and transcripts, read-only.
    assert any(e["type"] == "sentiment" for e in followed) and any(e["type"] == "transcript" for e in followed)
    assert followed[-1]["type"] == "summary"


async def test_ws_frame_rate_limit_and_audio_faster_than_real_time(serve):
    base = await serve(max_frame_rate=5)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(base.replace("http", "ws") + "ws") as ws:
            await ws.send_json({"type": "start", "video": {"format": "jpeg"}, "audio": {"format": "pcm_s16le", "rate": 16000}})
            ready = await ws.receive_json(timeout=10)
            frame = jpeg(1)
            for i in range(40):  # as fast as possible: ~5 pass, the rest are dropped and counted
                await ws.send_bytes(header(b"V", i / 30) + frame)
            for i in range(60):  # 6 s of audio at once: more than 2 s ahead of real time is refused
                await ws.send_bytes(header(b"A", i / 10) + b"\0\0" * 1600)
            await ws.send_json({"type": "end"})
            events = await receive_all(ws)
    assert ready["max_frame_rate"] == 5
    summary = events[-1]
    assert summary["type"] == "summary"
    assert summary["frames_rate_limited"] >= 30 and summary["frames_in"] <= 10
    assert summary["audio_chunks_refused"] >= 30 and summary["audio_seconds"] <= 3.5
    assert any(e["type"] == "warning" and "faster than real time" in e["message"] for e in events)


async def expect_error(ws: aiohttp.ClientWebSocketResponse, code: str, close_code: int) -> str:
    while True:  # events of the stream (warnings) may come first
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        err = json.loads(msg.data)
        if err["type"] not in ("warning", "sentiment", "transcript"):
            break
    assert err["type"] == "error" and err["code"] == code, err
    end = await ws.receive(timeout=10)
    assert end.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), end
    assert ws.close_code == close_code
    return err["message"]


async def test_ws_protocol_errors(serve):
    base = await serve(token="tok", max_clients=1, max_message_bytes=4096)
    url = base.replace("http", "ws") + "ws"
    auth = {"Authorization": "Bearer tok"}
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url, headers={"Authorization": "Bearer nope"}) as ws:
            assert "token" in await expect_error(ws, "unauthorized", 1008)
        for bad in ('{"type": "begin"}', "not json", '{"type": "start"}', '{"type": "start", "video": {"format": "png"}}'):
            async with http.ws_connect(url, headers=auth) as ws:
                await ws.send_str(bad)
                assert "start message" in await expect_error(ws, "bad_message", 1003)
        async with http.ws_connect(url, headers=auth) as ws:
            await ws.send_bytes(b"V" + b"\0" * 20)
            await expect_error(ws, "bad_message", 1003)
        async with http.ws_connect(url, headers=auth) as ws:
            await ws.send_json({"type": "start", "video": {"format": "jpeg"}})
            assert (await ws.receive_json(timeout=10))["type"] == "ready"
            async with http.ws_connect(url + "?token=tok") as second:  # one client allowed
                await expect_error(second, "server_full", 1013)
            await ws.send_bytes(header(b"V", 0.0) + b"\xff" * 6000)
            assert "limit 4096" in await expect_error(ws, "too_large", 1009)
        async with http.ws_connect(url, headers=auth) as ws:  # the slot is free again
            await ws.send_json({"type": "start", "video": {}})
            assert (await ws.receive_json(timeout=10))["type"] == "ready"
            await ws.send_bytes(header(b"X", 0.0) + b"1")
            assert "b'V'" in await expect_error(ws, "bad_message", 1003)
        async with http.ws_connect(base.replace("http", "ws") + "ws/events?stream=nope&token=tok") as ws:
            await expect_error(ws, "unknown_stream", 1008)


@pytest.mark.slow
async def test_ws_events_follows_a_webrtc_stream(serve):
    base = await serve()
    client = Client([FlatVideo()])
    status, _ = await client.connect(base)
    assert status == 200
    try:
        await wait_for(lambda: client.of("sentiment"), 60, "a sentiment event over WebRTC")
        stream_id = client.of("sentiment")[0]["stream"]
        got: list[dict] = []
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(base.replace("http", "ws") + f"ws/events?stream={stream_id}") as ws:
                async with asyncio.timeout(60):
                    while len([e for e in got if e["type"] == "sentiment"]) < 3:
                        got.append(await ws.receive_json())
        assert all(e["stream"] == stream_id for e in got)
    finally:
        await client.close()


# ------------------------------------------------------------------------------ issue 25: hardening round 3
def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose header (SOF0) claims width x height: what a decoder reads first."""
    data = bytearray(jpeg(0))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def encoded(width: int, height: int, fmt: str = "JPEG", **params) -> bytes:
    import io

    from PIL import Image

    img = Image.new("RGB", (width, height), (200, 60, 30))
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


async def test_ws_refuses_non_jpeg_and_oversized_frames(serve):
    """Issue 25: a PNG is refused before decoding; a frame whose JPEG header says 16000x16000 (or
    8000x8000) is refused from the header alone, never decoded; big frames within the limit pass."""
    base = await serve(max_message_bytes=4 * 1024 * 1024)
    url = base.replace("http", "ws") + "ws"
    refused = [
        (encoded(64, 48, "PNG"), "bad_message", 1003, "is a PNG image"),
        (b"GIF89a" + b"\0" * 100, "bad_message", 1003, "not a JPEG image"),
        (jpeg(1)[:jpeg(1).index(b"\xff\xda") + 40], "bad_message", 1003, "not a decodable JPEG"),  # truncated scan
        (jpeg_claiming(16000, 16000), "too_large", 1009, "JPEG frame of 16000x16000 is too large"),
        (jpeg_claiming(8000, 8000), "too_large", 1009, "JPEG frame of 8000x8000 is too large"),
        (encoded(3000, 2000, progressive=True), "too_large", 1009, "progressive JPEG frame of 3000x2000"),
    ]
    async with aiohttp.ClientSession() as http:
        for payload, code, close, needle in refused:
            async with http.ws_connect(url) as ws:
                await ws.send_json({"type": "start", "video": {"format": "jpeg"}})
                assert (await ws.receive_json(timeout=10))["type"] == "ready"
                await ws.send_bytes(header(b"V", 0.0) + payload)
                message = await expect_error(ws, code, close)
                assert needle in message, message
        async with http.ws_connect(url) as ws:  # 4K baseline: scaled down while decoding, the stream goes on
            await ws.send_json({"type": "start", "video": {"format": "jpeg"}})
            assert (await ws.receive_json(timeout=10))["type"] == "ready"
            big = encoded(3840, 2160)
            for i in range(3):
                await ws.send_bytes(header(b"V", i / 10) + big)
            await ws.send_json({"type": "end"})
            events = await receive_all(ws)
        assert events[-1]["type"] == "summary" and events[-1]["frames_in"] == 3, events[-1]
        async with http.get(base + "healthz") as r:
            assert (await r.json())["connections"] == 0


async def test_jpeg_decoder_scales_like_webrtc_and_bounds_concurrent_decodes():
    import concurrent.futures

    from stream.server.jpeg import FrameRefused, JpegDecoder

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        decoder = JpegDecoder((160, 120), pool, concurrency=2)
        assert decoder.decode_sync(encoded(640, 480)).shape == (120, 160, 3)  # DCT-scaled 1/4: no resize left
        assert decoder.decode_sync(encoded(1000, 300)).shape == (48, 160, 3)  # aspect kept, even sizes
        from PIL import Image

        turned = Image.Exif()
        turned[0x0112] = 6  # a phone held upright: the camera's 1000x500 frame is shown 500x1000
        assert decoder.decode_sync(encoded(1000, 500, exif=turned)).shape == (120, 60, 3)  # turned, then fitted
        small = decoder.decode_sync(encoded(100, 60))
        assert small.shape == (60, 100, 3) and small.flags.writeable and tuple(small[0, 0]) == pytest.approx((200, 60, 30), abs=3)
        with pytest.raises(FrameRefused, match="960x720"):  # 6x the limit on each side, in pixels
            decoder.decode_sync(jpeg_claiming(1000, 1000))
        frame = encoded(960, 720)
        out = await asyncio.gather(*(decoder.decode(frame) for _ in range(12)))
        assert all(a.shape == (120, 160, 3) for a in out)
        assert decoder.peak == 2 and decoder.decoding == 0  # 8 threads free, but 2 decodes at a time


async def test_ws_start_message_wait_is_its_own_and_matches_the_readme(serve):
    """Issue 25: the WebSocket guide says a /ws start message may take 30 s; it is server.start_timeout_s
    (30 s), not the WebRTC connect_timeout_s (10 s)."""
    import re

    from stream.config import ServerConfig
    from tests.conftest import ROOT

    assert ServerConfig().start_timeout_s == 30.0 and ServerConfig().connect_timeout_s == 10.0
    guide = (ROOT / "docs" / "server" / "websocket.md").read_text()
    documented = re.search(r"bad or missing start message \((?:within )?(\d+(?:\.\d+)?) s\)", guide)
    assert documented and float(documented.group(1)) == ServerConfig().start_timeout_s
    base = await serve(connect_timeout_s=0.2, start_timeout_s=0.8)
    url = base.replace("http", "ws") + "ws"
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url) as ws:  # later than connect_timeout_s, within start_timeout_s
            await asyncio.sleep(0.4)
            await ws.send_json({"type": "start", "video": {"format": "jpeg"}})
            assert (await ws.receive_json(timeout=10))["type"] == "ready"
        async with http.ws_connect(url) as ws:
            assert "no start message within 0.8 s (server.start_timeout_s)" in await expect_error(ws, "bad_message", 1003)


@pytest.mark.parametrize("content_type, body, needle", [
    ("multipart/form-data", b"no boundary in the header", "malformed multipart body (boundary missed"),
    ("multipart/form-data; boundary=abc", b"garbage garbage garbage", "malformed multipart body"),
    ("multipart/form-data; boundary=abc", b"--abc\r\n\xff\xfe\r\n\r\nhello\r\n--abc--\r\n", "malformed multipart body"),
    ("multipart/form-data; boundary=" + "a" * 100, b"x", "malformed multipart body"),
    ("multipart/mixed; boundary=abc", b"--abc\r\nContent-Type: text/plain\r\n\r\nhi\r\n--abc--\r\n", "no file part"),
    # The file part itself is read up to the next boundary; what it holds is no media.
    ("multipart/form-data; boundary=abc", b"--abc\r\nContent-Disposition: form-data; name=file\r\n\r\nhello\r\n--abcXYZ",
     "not a media file"),
])
async def test_analyze_malformed_multipart_is_400(serve, content_type, body, needle, caplog):
    """Issue 25: a multipart Content-Type without a boundary, or a body that is not that multipart, is a 400."""
    base = await serve()
    before = uploads_on_disk()
    async with aiohttp.ClientSession() as http:
        async with http.post(base + "analyze", data=body, headers={"Content-Type": content_type}) as r:
            assert r.status == 400, await r.text()
            error = (await r.json())["error"]
        assert needle in error and "\n" not in error, error
        async with http.get(base + "healthz") as r:
            assert (await r.json())["connections"] == 0
    assert uploads_on_disk() == before
    assert not [rec for rec in caplog.records if rec.levelno >= 30], caplog.text


@pytest.mark.parametrize("multipart", [False, True])
async def test_analyze_client_reset_mid_upload_is_one_log_line(runtime, caplog, multipart):
    """Issue 25: a client that resets the connection mid-upload is one INFO line, no traceback.
    Served as `sentistream serve` serves (an AppRunner: handlers are not cancelled when the client
    goes, unlike aiohttp's TestServer), so the handler sees the reset as its read fails."""
    import logging
    import socket

    from aiohttp import web

    from stream.config import load_config
    from stream.server import create_app
    from tests.conftest import TINY_CONFIG

    caplog.set_level(logging.INFO)
    runner = web.AppRunner(create_app(runtime, load_config(TINY_CONFIG)), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    base = f"http://{host}:{port}/"
    before = uploads_on_disk()
    part = b"--abc\r\nContent-Disposition: form-data; name=file; filename=a.mp4\r\n\r\n" if multipart else b""
    ctype = b"Content-Type: multipart/form-data; boundary=abc\r\n" if multipart else b""

    def client() -> None:
        with socket.create_connection((host, port)) as sock:
            sock.sendall(b"POST /analyze HTTP/1.1\r\nHost: 127.0.0.1\r\n" + ctype + b"Content-Length: 1000000\r\n\r\n"
                         + part + b"\0" * 50_000)
            time.sleep(0.5)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST

    try:
        await asyncio.to_thread(client)
        async with aiohttp.ClientSession() as http:
            await _until_no_connections(http, base)
        await asyncio.sleep(0.2)
    finally:
        await runner.cleanup()
    went_away = [rec for rec in caplog.records if "client went away" in rec.getMessage()]
    assert len(went_away) == 1 and went_away[0].levelno == logging.INFO and went_away[0].exc_info is None, caplog.text
    assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING or rec.exc_info], caplog.text
    assert uploads_on_disk() == before


async def _until_no_connections(http: aiohttp.ClientSession, base: str, timeout: float = 20) -> None:
    """Polls /healthz until the server holds no connection (every slot freed)."""
    async with asyncio.timeout(timeout):
        while True:
            async with http.get(base + "healthz") as r:
                if (await r.json())["connections"] == 0:
                    return
            await asyncio.sleep(0.05)


async def test_ws_clients_gone_mid_wait_leave_no_task(serve, caplog):
    """A client that closes right after `ready` cancels the handler mid-drain, a follower that
    leaves cancels its handler mid-wait: their tasks (the stream's sender and session, the
    follower's queue read) are cancelled with them, not left pending (asyncio: "Task was destroyed")."""
    import gc

    gc.collect()  # what earlier tests left is not this test's
    caplog.clear()
    base = await serve()
    url = base.replace("http", "ws")
    async with aiohttp.ClientSession() as http:
        for i in range(3):
            async with http.ws_connect(url + "ws") as ws:
                await ws.send_json({"type": "start", "stream": f"gone-{i}", "video": {"format": "jpeg"}})
                assert (await ws.receive_json(timeout=10))["type"] == "ready"
                async with http.ws_connect(url + f"ws/events?stream=gone-{i}") as follower:
                    await asyncio.sleep(0.2)
                    assert not follower.closed
        await _until_no_connections(http, base)
    await asyncio.sleep(0.2)
    gc.collect()
    await asyncio.sleep(0.1)
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("ws-")]
    assert "Task was destroyed" not in caplog.text, caplog.text
