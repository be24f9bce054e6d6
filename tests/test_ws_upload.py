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
