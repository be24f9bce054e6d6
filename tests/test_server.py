"""`sentistream serve` in process: HTTP contract, limits, and real aiortc clients over loopback.

One tiny-CLIP runtime (and the bundled Whisper) per module, shared by every app the tests create,
as the server shares it between connections. All tests run on the module's event loop because the
engine's batchers live on the loop that first used them.
"""
from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import threading
import time
from pathlib import Path
from typing import Any, Optional

import aiohttp
import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack, VideoStreamTrack

from scripts.media import cached, make_speech_clip, make_video, require_tools
from stream.config import load_config
from stream.server import Connection
from stream.session import StreamSession
from tests.conftest import TINY_CONFIG

pytestmark = pytest.mark.asyncio(loop_scope="module")

FLAT_RGB = (64, 128, 192)
SPEECH = ["I am really happy today.", "This is a wonderful day."]
SPEECH_WORDS = {"happy", "wonderful", "today", "day", "really"}


class FlatVideo(VideoStreamTrack):
    """A flat-colour picture at 30 fps: anything else in returned frames is the overlay."""

    def __init__(self, size: tuple[int, int] = (320, 240)):
        super().__init__()
        self.image = np.full((size[1], size[0], 3), FLAT_RGB, np.uint8)

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame.from_ndarray(self.image, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


class Client:
    """An aiortc peer like the page: sends tracks, opens "events", collects events and frames."""

    def __init__(self, tracks: list[MediaStreamTrack]):
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.tracks = tracks
        self.events: list[dict] = []
        self.frames = 0
        self.last_frame: Optional[np.ndarray] = None
        self.first_frame = asyncio.Event()
        self.channel_open = asyncio.Event()
        self.channel: Any = None
        self._readers: list[asyncio.Task] = []

    async def connect(self, base: str, headers: Optional[dict] = None, local_addr: Optional[str] = None) -> tuple[int, dict]:
        """POSTs the offer (from `local_addr`, another loopback address, if given) and applies the answer."""
        for track in self.tracks:
            self.pc.addTrack(track)
        channel = self.channel = self.pc.createDataChannel("events")
        channel.on("open", self.channel_open.set)
        channel.on("message", lambda m: self.events.append(json.loads(m)))
        self.pc.on("track", lambda t: self._readers.append(asyncio.ensure_future(self._read(t))))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = {"sdp": self.pc.localDescription.sdp, "type": self.pc.localDescription.type}
        connector = aiohttp.TCPConnector(local_addr=(local_addr, 0)) if local_addr else None
        async with aiohttp.ClientSession(connector=connector) as http:
            async with http.post(base + "offer", json=offer, headers=headers or {}) as r:
                body = await r.json()
                status = r.status
        if status == 200:
            await self.pc.setRemoteDescription(RTCSessionDescription(**body))
        return status, body

    async def _read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    self.frames += 1
                    self.last_frame = frame.to_ndarray(format="rgb24")
                    self.first_frame.set()
        except MediaStreamError:
            pass

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]

    async def close(self) -> None:
        await self.pc.close()
        for track in self.tracks:
            track.stop()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


async def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


async def get_json(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as r:
            return r.status, await r.json()


async def post(url: str, data: bytes | str, headers: Optional[dict] = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=data, headers=headers or {}) as r:
            return r.status, await r.json()


async def connections(base: str) -> int:
    status, health = await get_json(base + "healthz")
    assert status == 200
    return health["connections"]


async def until_no_connections(base: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while await connections(base):
        assert time.monotonic() < deadline, "the server kept a closed connection"
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------------------ HTTP contract
async def test_page_health_and_metrics(serve):
    base = await serve()
    async with aiohttp.ClientSession() as http:
        async with http.get(base) as r:
            page = await r.text()
            assert r.status == 200 and "text/html" in r.headers["Content-Type"]
        for asset in ("static/app.js", "static/style.css"):
            async with http.get(base + asset) as r:
                assert r.status == 200, asset
        async with http.get(base + "metrics") as r:
            metrics = await r.text()
    for element in ("transcript", "label", "score", "weights", "timeline", "status", "start", "video"):
        assert f'id="{element}"' in page, element
    assert "http://" not in page and "https://" not in page  # no CDN: the page works offline
    status, health = await get_json(base + "healthz")
    assert status == 200
    assert health["status"] == "ok" and health["connections"] == 0 and health["weights"] == "random"
    assert health["uptime_s"] >= 0 and health["max_clients"] == 8
    for name in ('sentistream_connections{state="live"}', 'sentistream_connections{state="pending"}',
                 "sentistream_frames_in_total", "sentistream_estimates_total",
                 "# TYPE sentistream_stage_seconds histogram"):
        assert name in metrics, name


async def test_bad_offers_get_json_errors_and_server_stays_up(serve):
    base = await serve(max_body_bytes=4096)
    url = base + "offer"
    cases = [
        (b"not json", "JSON"),
        (b"[1, 2]", "object"),
        (json.dumps({"type": "offer"}), "sdp"),
        (json.dumps({"sdp": "v=0"}), "type"),
        (json.dumps({"sdp": 5, "type": "offer"}), "sdp"),
        (json.dumps({"sdp": "v=0\r\n", "type": "answer"}), "offer"),
        (json.dumps({"sdp": "garbage", "type": "offer"}), "SDP"),
        (json.dumps({"sdp": "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nnonsense\r\n", "type": "offer"}), "SDP"),
        (b"\xff\xfe", "JSON"),
    ]
    for body, word in cases:
        status, reply = await post(url, body)
        assert status == 400, (body, reply)
        assert word.lower() in reply["error"].lower(), (body, reply)
    status, reply = await post(url, json.dumps({"sdp": "x" * 8000, "type": "offer"}))
    assert status == 413 and "limit" in reply["error"]
    async def chunks():
        for _ in range(10):
            yield b"x" * 1000

    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=chunks()) as r:  # chunked, no Content-Length
            assert r.status == 413 and "error" in await r.json()
        async with http.get(url) as r:
            assert r.status == 405 and "error" in await r.json()
    # A well-formed offer that sends no media (data channel only) is refused too.
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.createDataChannel("events")
    await pc.setLocalDescription(await pc.createOffer())
    status, reply = await post(url, json.dumps({"sdp": pc.localDescription.sdp, "type": "offer"}))
    await pc.close()
    assert status == 400 and "neither audio nor video" in reply["error"]
    assert await connections(base) == 0  # nothing half-open stays behind


async def test_token_required(serve):
    base = await serve(token="s3cret")
    offer = json.dumps({"sdp": "garbage", "type": "offer"})
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}, {"Authorization": "Basic s3cret"}):
        status, reply = await post(base + "offer", offer, headers)
        assert status == 401 and "error" in reply, headers
    status, reply = await post(base + "offer", offer, {"Authorization": "Bearer s3cret"})
    assert status == 400  # past the token check, stopped by the SDP
    client = Client([FlatVideo()])
    try:
        status, _ = await client.connect(base, {"Authorization": "Bearer s3cret"})
        assert status == 200
    finally:
        await client.close()


async def test_max_clients_then_slot_freed(serve):
    base = await serve(max_clients=1)
    first, second, third = Client([FlatVideo()]), Client([FlatVideo()]), Client([AudioStreamTrack()])
    try:
        assert (await first.connect(base))[0] == 200
        status, reply = await second.connect(base)
        assert status == 503 and "full" in reply["error"]
        await asyncio.wait_for(first.first_frame.wait(), 20)
        await first.close()
        await until_no_connections(base)
        assert (await third.connect(base))[0] == 200
    finally:
        for c in (first, second, third):
            await c.close()


# ------------------------------------------------------------------------------ media end to end
@pytest.fixture(scope="module")
def speech_video(tmp_path_factory) -> tuple[Path, Path]:
    """(mp4 of a flat picture + spoken sentences, the speech wav): espeak-ng + ffmpeg."""
    require_tools("espeak-ng", "ffmpeg")
    d = tmp_path_factory.mktemp("serve-media")
    wav, timings = make_speech_clip(SPEECH, 0.5, cached(d, "speech", ".wav", SPEECH), lead_s=1.5)
    seconds = timings[-1][2] + 2.5
    colour = "color=c=0x%02x%02x%02x" % FLAT_RGB
    mp4 = make_video(cached(d, "flat", ".mp4", SPEECH, colour), seconds, size=(320, 240), fps=15, audio=wav, pattern=colour)
    return mp4, wav


def said_words(client: Client) -> set[str]:
    text = " ".join(e["text"] for e in client.of("transcript")).lower()
    return {w.strip(".,!?") for w in text.split()} & SPEECH_WORDS


@pytest.mark.slow
async def test_end_to_end_speech_and_video(serve, speech_video):
    from aiortc.contrib.media import MediaPlayer

    base = await serve()
    player = MediaPlayer(str(speech_video[0]))
    client = Client([player.audio, player.video])
    try:
        status, _ = await client.connect(base)
        assert status == 200
        await wait_for(lambda: said_words(client) and any(e["modalities"]["text"]["weight"] > 0 for e in client.of("sentiment")),
                       60, "transcript words and text-weighted sentiment events over the data channel")
        await asyncio.wait_for(client.first_frame.wait(), 10)
        await wait_for(lambda: client.frames >= 10, 20, "returned overlay frames")
    finally:
        await client.close()
    kinds = {e["type"] for e in client.events}
    assert {"warning", "transcript", "sentiment"} <= kinds  # warning: random weights, said so
    est = client.of("sentiment")[-1]
    assert est["label"] in ("negative", "neutral", "positive") and -1 <= est["score"] <= 1
    assert abs(sum(est["probs"].values()) - 1) < 1e-3 and est["weights"] == "random"
    assert all(e["stream"] == est["stream"] for e in client.events)
    assert any(e["modalities"]["text"]["weight"] > 0 for e in client.of("sentiment"))
    # The overlay: the returned picture differs from the flat colour that was sent (panel, text).
    frame = client.last_frame.astype(np.int16)
    diff = np.abs(frame - np.array(FLAT_RGB, np.int16)).mean(axis=2)
    h, w = diff.shape
    assert diff[: h // 4, : w // 2].mean() > 20, "no overlay panel in the returned frames"
    assert np.median(diff[h // 2 : 3 * h // 4, w // 2 :]) < 12, "returned frames are not the client's picture"


@pytest.mark.slow
async def test_audio_only_client(serve, speech_video):
    from aiortc.contrib.media import MediaPlayer

    base = await serve()
    player = MediaPlayer(str(speech_video[1]))
    client = Client([player.audio])
    try:
        assert (await client.connect(base))[0] == 200
        await wait_for(lambda: said_words(client) and any(e["modalities"]["text"]["weight"] > 0 for e in client.of("sentiment")),
                       60, "text-weighted estimates from an audio-only client")
    finally:
        await client.close()
    assert all(e["modalities"]["image"]["weight"] == 0 for e in client.of("sentiment"))
    assert client.frames == 0  # no camera, no overlay track
    assert any("no camera" in e.get("message", "") for e in client.of("warning"))


async def test_video_only_client(serve):
    base = await serve()
    client = Client([FlatVideo()])
    try:
        assert (await client.connect(base))[0] == 200
        await wait_for(lambda: len(client.of("sentiment")) >= 2 and client.frames >= 5, 30, "estimates and overlay frames")
    finally:
        await client.close()
    for e in client.of("sentiment"):
        assert e["modalities"]["text"]["weight"] == 0 and e["modalities"]["image"]["weight"] > 0
    assert any("no microphone" in e.get("message", "") for e in client.of("warning"))
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "metrics") as r:
            metrics = {line.split()[0]: float(line.split()[1]) for line in (await r.text()).splitlines()
                       if line and not line.startswith("#")}
    assert metrics["sentistream_frames_in_total"] > 0 and metrics["sentistream_estimates_total"] >= 2
    assert metrics["sentistream_connections_accepted_total"] >= 1


async def test_serve_flags_are_validated():
    import argparse

    from models.errors import UserError
    from stream.commands.serve import _server_config

    cfg = load_config(TINY_CONFIG)
    args = argparse.Namespace(host=None, port=9000, max_clients=None, token="t")
    server = _server_config(cfg, args)
    assert (server.host, server.port, server.max_clients, server.token) == ("127.0.0.1", 9000, 8, "t")
    for bad in ({"max_clients": 0}, {"port": 70000}):
        with pytest.raises(UserError, match="--max-clients|--port"):
            _server_config(cfg, argparse.Namespace(**{**vars(args), **bad}))


# ------------------------------------------------------------------------------ no leaks
def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmRSS in /proc/self/status")


def snapshot() -> tuple[float, int, int]:
    """(RSS MB, asyncio tasks, threads outside the loop's default executor).

    The default executor (aiortc encodes there) grows lazily up to its fixed max_workers, so its
    threads are not counted; every other thread (aiortc decoders, our pools) must come back, but for
    one or two started once, late."""
    gc.collect()
    try:  # hand freed heap back to the OS so RSS reflects live memory (glibc only)
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    threads = [t for t in threading.enumerate() if not t.name.startswith("asyncio_")]
    return rss_mb(), len(asyncio.all_tasks()), len(threads)


async def one_cycle(base: str) -> None:
    """Connect with camera + mic, get the overlay back and the events channel open, hang up."""
    client = Client([FlatVideo(), AudioStreamTrack()])
    try:
        status, reply = await client.connect(base)
        assert status == 200, reply
        await asyncio.wait_for(client.first_frame.wait(), 20)
        await asyncio.wait_for(client.channel_open.wait(), 20)
    finally:
        await client.close()
    await until_no_connections(base)


CYCLES = 50
WARMUP = 25


@pytest.mark.slow
async def test_connect_disconnect_cycles_release_everything(serve):
    base = await serve()
    # Warm-up: codecs, thread pools and malloc arenas grow in steps over the first few dozen
    # connections (measured: +40-60 MB over the first 70, then flat within 3 MB for 80 more).
    for _ in range(WARMUP):
        await one_cycle(base)
    await asyncio.sleep(0.5)
    rss0, tasks0, threads0 = snapshot()
    before = {t.ident for t in threading.enumerate()}
    started = time.monotonic()
    for _ in range(CYCLES):
        await one_cycle(base)
    await asyncio.sleep(0.5)
    rss1, tasks1, threads1 = snapshot()
    # A thread started once, late (a bounded pool's next worker, a library's monitor thread: CI saw
    # 9 -> 10 twice), is no leak; a thread leaked per connection would add CYCLES of them.
    new_threads = [t.name for t in threading.enumerate() if t.ident not in before]
    print(f"\n{CYCLES} cycles in {time.monotonic() - started:.1f} s: RSS {rss0:.1f} -> {rss1:.1f} MB, "
          f"tasks {tasks0} -> {tasks1}, threads {threads0} -> {threads1} (new: {new_threads})")
    assert tasks1 <= tasks0, (tasks0, tasks1, [t.get_name() for t in asyncio.all_tasks()])
    assert threads1 - threads0 <= 2, (threads0, threads1, new_threads)
    watched = {Connection, StreamSession, RTCPeerConnection}
    live = [type(o).__name__ for o in gc.get_objects() if type(o) in watched]
    assert not live, f"still alive after every connection closed: {live}"
    # The object check above is the precise one; RSS catches leaks outside Python objects (native
    # codec/decoder state): > 1.3 MB per connection would fail here. Allocator steps stay below.
    assert rss1 - rss0 < 64, f"RSS grew {rss1 - rss0:.1f} MB over {CYCLES} cycles"


async def test_offer_that_never_connects_gives_its_slot_back(serve):
    base = await serve(max_clients=1, connect_timeout_s=1.0)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(FlatVideo())
    await pc.setLocalDescription(await pc.createOffer())
    status, _ = await post(base + "offer", json.dumps({"sdp": pc.localDescription.sdp, "type": "offer"}))
    await pc.close()  # the client walks away without ever applying the answer
    assert status == 200
    await until_no_connections(base)


async def test_overlay_track_relays_only_the_newest_frame():
    """The returned track never queues: frames that arrived while it was busy are skipped, counted."""
    import concurrent.futures
    import fractions

    from prometheus_client import REGISTRY

    from stream.overlay import OverlayTracker
    from stream.server.overlay_track import OverlayTrack

    def dropped() -> float:
        return REGISTRY.get_sample_value("sentistream_frames_dropped_total", {"where": "relay"}) or 0.0

    pool = concurrent.futures.ThreadPoolExecutor(1)
    track = OverlayTrack(OverlayTracker(), pool)
    try:
        waiter = asyncio.ensure_future(track.recv())
        await asyncio.sleep(0.05)
        assert not waiter.done()  # no client frame yet: nothing is invented
        before = dropped()
        for seq in range(1, 6):  # five client frames arrive before the encoder asks again
            image = np.full((48, 64, 3), seq * 40, np.uint8)
            track.offer(image, seq * 3000, fractions.Fraction(1, 90000))
        frame = await asyncio.wait_for(waiter, 5)
        assert frame.pts == 15000 and (frame.width, frame.height) == (64, 48)
        assert dropped() - before == 4
        again = asyncio.ensure_future(track.recv())
        await asyncio.sleep(0.05)
        assert not again.done()  # the same frame is never sent twice
        track.stop()
        with pytest.raises(MediaStreamError):
            await asyncio.wait_for(again, 5)
    finally:
        pool.shutdown()


# ------------------------------------------------------------------------------ issue 15: hardening
async def _get(url: str, headers: Optional[dict] = None) -> tuple[int, dict, str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers=headers or {}) as r:
            return r.status, dict(r.headers), await r.text()


async def test_token_guards_metrics_and_health_details(serve):
    base = await serve(token="s3cret")
    auth = {"Authorization": "Bearer s3cret"}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        status, hdrs, body = await _get(base + "metrics", headers)
        assert status == 401 and "error" in json.loads(body) and hdrs["WWW-Authenticate"] == "Bearer", body
        status, _, body = await _get(base + "healthz", headers)
        assert status == 200 and json.loads(body) == {"status": "ok"}  # alive, nothing more
    status, _, body = await _get(base + "metrics", auth)
    assert status == 200 and "sentistream_connections{" in body
    status, _, body = await _get(base + "healthz", auth)
    assert status == 200 and {"status", "connections", "max_clients", "weights", "asr", "uptime_s"} <= set(json.loads(body))


async def test_security_headers_on_every_response(serve):
    base = await serve(token="s3cret")
    async with aiohttp.ClientSession() as http:
        for method, path in [("GET", ""), ("GET", "static/app.js"), ("GET", "static/style.css"), ("GET", "healthz"),
                             ("GET", "metrics"), ("GET", "offer"), ("GET", "nope"), ("POST", "offer")]:
            async with http.request(method, base + path) as r:
                assert r.status < 500, (method, path, r.status)
                csp = r.headers.get("Content-Security-Policy", "")
                assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
                assert r.headers.get("X-Content-Type-Options") == "nosniff", path
                assert r.headers.get("X-Frame-Options") == "DENY", path
                assert r.headers.get("Referrer-Policy") == "no-referrer", path
    # The CSP fits the page: no inline script or style, nothing from elsewhere.
    page = (Path(__file__).parent.parent / "stream" / "static" / "index.html").read_text()
    assert "<style" not in page and "style=" not in page and "<script>" not in page and "on" + "click=" not in page


async def _raw_request(base: str, request: bytes) -> tuple[int, dict]:
    from urllib.parse import urlparse

    url = urlparse(base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(request)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def test_non_utf8_authorization_and_deep_json_are_client_errors(serve):
    base = await serve(token="s3cret")
    body = b'{"sdp": "v=0", "type": "offer"}'
    for path in ("offer", "metrics"):
        method = b"POST" if path == "offer" else b"GET"
        request = (method + b" /" + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \xff\xfes3cret\r\n"
                   b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        status, reply = await _raw_request(base, request)
        assert status == 401 and "error" in reply, (path, status, reply)
    auth = {"Authorization": "Bearer s3cret"}
    for deep in (b"[" * 100_000, b'{"a":' * 50_000):
        status, reply = await post(base + "offer", deep, auth)
        assert status == 400 and "JSON" in reply["error"], (status, reply)
    status, health = await get_json(base + "healthz")
    assert status == 200  # still up


async def test_serve_token_sources_and_empty_token(tmp_path, monkeypatch):
    import argparse

    from models.errors import UserError
    from stream.commands.serve import _server_config

    cfg = load_config(TINY_CONFIG)
    monkeypatch.delenv("SENTISTREAM_TOKEN", raising=False)

    def args(**kw):
        return argparse.Namespace(**{"host": None, "port": None, "max_clients": None, "token": None, "token_file": None, **kw})

    assert _server_config(cfg, args()).token is None
    with pytest.raises(UserError, match="--token is empty"):
        _server_config(cfg, args(token=""))
    with pytest.raises(UserError, match="--token must be visible ASCII"):
        _server_config(cfg, args(token="two words"))
    (tmp_path / "tok").write_text("from-file\n")
    assert _server_config(cfg, args(token_file=str(tmp_path / "tok"))).token == "from-file"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(UserError, match="--token-file .*empty is empty"):
        _server_config(cfg, args(token_file=str(tmp_path / "empty")))
    with pytest.raises(UserError, match="cannot read --token-file"):
        _server_config(cfg, args(token_file=str(tmp_path / "missing")))
    monkeypatch.setenv("SENTISTREAM_TOKEN", "from-env")
    assert _server_config(cfg, args()).token == "from-env"
    assert _server_config(cfg, args(token="flag")).token == "flag"  # the flag wins
    monkeypatch.setenv("SENTISTREAM_TOKEN", "")
    with pytest.raises(UserError, match="SENTISTREAM_TOKEN is empty"):
        _server_config(cfg, args())
    monkeypatch.delenv("SENTISTREAM_TOKEN")
    with pytest.raises(UserError, match="server.token is empty"):
        _server_config(load_config(TINY_CONFIG, ["server.token="]), args())


async def test_serve_cli_refuses_empty_token_before_loading_models(tmp_path):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "stream.cli", "serve", "--config", str(TINY_CONFIG), "--port", "0", "--token", ""],
                         capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == ["error: --token is empty: give a token (or drop it to serve without one)"]


# ------------------------------------------------------------------------------ issue 15: slots and dead peers
def closed_count(reason: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("sentistream_connections_closed_total", {"reason": reason}) or 0.0


class StallingVideo(FlatVideo):
    """Sends frames until `stall` is set, then nothing more while its peer connection stays up (a
    frozen or killed browser as the server sees it: ICE and DTLS alive or not, no media)."""

    def __init__(self) -> None:
        super().__init__()
        self.stall = asyncio.Event()

    async def recv(self) -> av.VideoFrame:
        if self.stall.is_set():
            await asyncio.Event().wait()  # never
        return await super().recv()


async def test_peer_that_stops_sending_is_closed_after_media_timeout(serve):
    base = await serve(media_timeout_s=2.0)
    video = StallingVideo()
    client = Client([video])
    before = closed_count("media_timeout")
    try:
        assert (await client.connect(base))[0] == 200
        await asyncio.wait_for(client.first_frame.wait(), 20)
        await asyncio.sleep(6)  # 3x the timeout: a peer that keeps sending stays
        _, health = await get_json(base + "healthz")
        assert (health["live"], health["pending"]) == (1, 0), health
        assert closed_count("media_timeout") == before
        video.stall.set()
        await until_no_connections(base, timeout=2.0 + 15)  # timeout + slack for a loaded machine
    finally:
        await client.close()
    assert closed_count("media_timeout") == before + 1


async def test_bye_over_the_data_channel_frees_the_slot(serve):
    base = await serve(media_timeout_s=120, max_clients=1)
    client = Client([FlatVideo()])
    before = closed_count("bye")
    try:
        assert (await client.connect(base))[0] == 200
        await asyncio.wait_for(client.channel_open.wait(), 20)
        client.channel.send(json.dumps({"type": "ping"}))  # ignored, only keeps the peer alive
        client.channel.send("x" * 5000)  # too long for a control message: ignored
        await asyncio.sleep(0.5)
        assert await connections(base) == 1
        client.channel.send(json.dumps({"type": "bye"}))
        await until_no_connections(base)  # long before the 120 s media timeout or ICE consent expiry
    finally:
        await client.close()
    assert closed_count("bye") == before + 1


async def test_replayed_offer_cannot_fill_the_server(serve):
    """One captured offer posted again and again: each answer is a pending peer that will never
    connect; they count against the sender's address, so other clients still get in."""
    base = await serve(max_clients=8, max_clients_per_address=2, connect_timeout_s=120)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(FlatVideo())
    await pc.setLocalDescription(await pc.createOffer())
    captured = json.dumps({"sdp": pc.localDescription.sdp, "type": "offer"})
    await pc.close()
    replies = [await post(base + "offer", captured) for _ in range(5)]
    assert [status for status, _ in replies] == [200, 200, 429, 429, 429], replies
    assert "too many connections" in replies[-1][1]["error"]
    _, health = await get_json(base + "healthz")
    assert (health["connections"], health["pending"], health["live"]) == (2, 2, 0), health
    other = Client([FlatVideo()])  # another address (127.0.0.2 is loopback too): not affected
    try:
        assert (await other.connect(base, local_addr="127.0.0.2"))[0] == 200
        await asyncio.wait_for(other.first_frame.wait(), 20)
        _, health = await get_json(base + "healthz")
        assert (health["connections"], health["pending"], health["live"]) == (3, 2, 1), health
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "metrics") as r:
                metrics = await r.text()
        assert 'sentistream_connections{state="pending"} 2.0' in metrics
        assert 'sentistream_connections{state="live"} 1.0' in metrics
    finally:
        await other.close()


async def test_fit_within_keeps_aspect_and_even_sizes():
    from stream.sources.webrtc import fit_within

    assert fit_within(640, 480, (1280, 720)) == (640, 480)
    assert fit_within(1920, 1080, (1280, 720)) == (1280, 720)
    assert fit_within(3840, 1080, (1280, 720)) == (1280, 360)
    assert fit_within(1081, 1921, (1280, 720)) == (404, 720)
    assert fit_within(640, 480, None) == (640, 480)


async def test_large_client_video_is_scaled_down_before_analysis_and_overlay(serve):
    base = await serve(max_video_width=160, max_video_height=120)
    client = Client([FlatVideo((400, 240))])
    try:
        assert (await client.connect(base))[0] == 200
        await wait_for(lambda: client.frames >= 3 and len(client.of("sentiment")) >= 1, 30, "overlay frames and an estimate")
    finally:
        await client.close()
    assert client.last_frame.shape == (96, 160, 3)  # 400x240 fitted into 160x120, aspect kept


# ------------------------------------------------------------------------------ issue 15: Host and Origin
async def _status(method: str, url: str, headers: dict, data: Optional[str] = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url, headers=headers, data=data) as r:
            return r.status, await r.json()


async def test_foreign_host_header_is_refused_on_every_route(serve):
    """DNS rebinding: the attacker's name resolves to 127.0.0.1, the request still says its Host."""
    from urllib.parse import urlparse

    base = await serve()
    port = urlparse(base).port
    for host in (f"evil.example:{port}", "evil.example", f"10.1.2.3:{port}", "127.0.0.1.evil.example"):
        for method, path in (("GET", "healthz"), ("GET", "metrics"), ("GET", ""), ("POST", "offer")):
            status, reply = await _status(method, base + path, {"Host": host})
            assert status == 403 and "allowed_hosts" in reply["error"], (host, path, status, reply)
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "app.localhost", f"LOCALHOST.:{port}"):
        status, _ = await _status("GET", base + "healthz", {"Host": host})
        assert status == 200, host
    base = await serve(allowed_hosts="[sentistream.lan]")
    assert (await _status("GET", base + "healthz", {"Host": "sentistream.lan:8080"}))[0] == 200
    assert (await _status("GET", base + "healthz", {"Host": "other.lan:8080"}))[0] == 403


async def test_host_rules_for_the_bound_address():
    from stream.config import ServerConfig
    from stream.server.guards import host_allowed

    wildcard, lan = ServerConfig(host="0.0.0.0"), ServerConfig(host="192.168.1.5")
    assert host_allowed("192.168.1.5:8080", wildcard) and host_allowed("[fe80::1]:8080", ServerConfig(host="::"))
    assert not host_allowed("evil.example:8080", wildcard)  # rebinding needs a name: names stay refused
    assert host_allowed("192.168.1.5:8080", lan) and not host_allowed("192.168.1.6:8080", lan)
    assert host_allowed(None, lan)  # no Host at all: not a browser
    assert not host_allowed("bad host:x", lan)


async def test_offer_from_a_foreign_origin_is_refused(serve):
    base = await serve()
    own = base.rstrip("/")
    garbage = json.dumps({"sdp": "garbage", "type": "offer"})
    for origin in ("https://evil.example", "null", own.replace("127.0.0.1", "localhost"), "http://127.0.0.1:1"):
        status, reply = await _status("POST", base + "offer", {"Origin": origin}, garbage)
        assert status == 403 and "allowed_origins" in reply["error"], (origin, status, reply)
    for headers in ({"Origin": own}, {}):  # the page's own origin, or no browser at all: on to the SDP check
        status, reply = await _status("POST", base + "offer", headers, garbage)
        assert status == 400 and "SDP" in reply["error"], (headers, reply)
    # Reading the page from elsewhere is fine (GET); opening a WebSocket on any route is not.
    assert (await _status("GET", base + "healthz", {"Origin": "https://evil.example"}))[0] == 200
    upgrade = {"Origin": "https://evil.example", "Upgrade": "websocket", "Connection": "Upgrade"}
    assert (await _status("GET", base + "healthz", upgrade))[0] == 403
    base = await serve(allowed_origins="[https://app.example]")
    status, reply = await _status("POST", base + "offer", {"Origin": "https://app.example:443"}, garbage)
    assert status == 400, reply
    client = Client([FlatVideo()])  # a real peer with the page's own Origin gets in
    try:
        assert (await client.connect(base, {"Origin": base.rstrip("/")}))[0] == 200
    finally:
        await client.close()


async def test_per_address_cap_never_exceeds_the_servers_slots(serve):
    """Issue 25: server.max_clients_per_address (4) on a 2-slot server is 2: the cap the 429 names
    and /healthz shows is never more than the server holds."""
    from stream.config import ServerConfig
    from stream.server.manager import per_address_limit, slot_refusal

    _, health = await get_json(await serve(max_clients=2) + "healthz")
    assert (health["max_clients"], health["max_clients_per_address"]) == (2, 2), health
    _, health = await get_json(await serve() + "healthz")
    assert (health["max_clients"], health["max_clients_per_address"]) == (8, 4), health
    server = ServerConfig(max_clients=2)
    assert per_address_limit(server, 2) == 2 and per_address_limit(server, 64) == 4  # a cluster's capacity
    assert slot_refusal(2, 2, 2, "10.0.0.1", server)[:2] == (503, "full")
    status, reason, message = slot_refusal(2, 3, 2, "10.0.0.1", ServerConfig(max_clients_per_address=2))
    assert (status, reason) == (429, "per_address") and "(limit 2)" in message
