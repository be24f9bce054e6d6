"""The Python API (`from stream import analyze, analyze_sync`): the same events as `sentistream run`
on the same file, typed events that serialise to the JSONL line exactly, usable inside a running
event loop (Jupyter), stoppable early, and user errors as `UserError`."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from models.errors import UserError
from scripts.media import make_speech_clip, make_video, require_tools
from tests.conftest import ROOT, TINY_CONFIG

SENTENCES = ["I am so happy with this wonderful result.", "This is terrible and I am upset."]
# Wall-clock measurements: the only fields two runs of the same file may disagree on.
WALL_FIELDS = {"latency_ms", "wall_seconds", "realtime_factor", "latency", "asr"}


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    require_tools("espeak-ng", "ffmpeg")
    d = tmp_path_factory.mktemp("api-media")
    wav, timings = make_speech_clip(SENTENCES, pause_s=1.0, path=d / "speech.wav")
    return make_video(d / "clip.mp4", timings[-1][2] + 1.0, audio=wav)


def comparable(event: dict) -> dict:
    return {k: v for k, v in event.items() if k not in WALL_FIELDS}


def by_type(events: list[dict]) -> dict[str, list[dict]]:
    """Per type, in order: transcripts and estimates come from two branches, so their interleaving may vary."""
    out: dict[str, list[dict]] = {}
    for e in events:
        out.setdefault(e["type"], []).append(comparable(e))
    return out


def assert_close(a, b, path="event"):
    """Equal, floats to 1e-4 (micro-batches of different sizes may differ in the last float bits)."""
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-4), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.mark.slow
def test_api_yields_the_same_events_as_run(clip, tmp_path):
    from stream import SentimentEvent, SummaryEvent, TranscriptEvent, analyze_sync

    out = tmp_path / "run.jsonl"
    res = subprocess.run([sys.executable, "-m", "stream.cli", "run", "--source", str(clip), "--config", str(TINY_CONFIG),
                          "--output", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    cli = [json.loads(line) for line in out.read_text().splitlines()]

    events = list(analyze_sync(clip, config=TINY_CONFIG))
    api = [e.to_dict() for e in events]
    # The JSON of each typed event is exactly the JSONL encoding of its dict.
    for e in events:
        assert json.loads(e.to_json()) == e.to_dict()
        assert e.to_json() == json.dumps(e.to_dict(), ensure_ascii=False, separators=(",", ":"))
    assert isinstance(events[-1], SummaryEvent) and api[-1]["type"] == cli[-1]["type"] == "summary"

    a, c = by_type(api), by_type(cli)
    assert a.keys() == c.keys()
    assert len(a["sentiment"]) >= 10 and a.get("transcript"), a.keys()
    for kind in c:
        assert_close(a[kind], c[kind], kind)

    sentiments = [e for e in events if e.type == "sentiment"]
    assert all(isinstance(e, SentimentEvent) and e.label in ("negative", "neutral", "positive") for e in sentiments)
    assert all(-1 <= e.score <= 1 and e.score == e["score"] for e in sentiments)
    finals = [e for e in events if isinstance(e, TranscriptEvent) and e.final]
    text = " ".join(e.text for e in finals).lower()
    assert "happy" in text and "terrible" in text, text


@pytest.mark.slow
async def test_analyze_sync_works_inside_a_running_event_loop(clip):
    """What a notebook cell does: Jupyter runs the cell inside its own loop."""
    from stream import analyze_sync

    asyncio.get_running_loop()  # the loop is running here
    events = list(analyze_sync(str(clip), config=TINY_CONFIG, overrides={"asr.enabled": False}))
    kinds = [e.type for e in events]
    assert kinds[-1] == "summary" and kinds.count("sentiment") >= 5
    assert any(e.type == "warning" and "speech recognition is off" in e["message"] for e in events)


async def test_async_analyze_can_stop_early_and_cleans_up(clip):
    from stream import analyze

    before = {t.name for t in threading.enumerate()}
    seen = []
    gen = analyze(clip, TINY_CONFIG, ["asr.enabled=false"], stream="cam")
    async for event in gen:
        seen.append(event)
        if event.type == "sentiment":
            break
    await gen.aclose()
    assert seen[-1].type == "sentiment" and seen[-1].stream == "cam"
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert not pending, pending
    for t in threading.enumerate():  # the engine's and Whisper's pools end once their last job is done
        if t.name not in before and t.name.startswith("sentistream"):
            t.join(timeout=10)
            assert not t.is_alive(), t.name


def test_analyze_sync_stops_when_the_loop_is_left(clip):
    from stream import analyze_sync

    for event in analyze_sync(clip, TINY_CONFIG, {"asr.enabled": False}):
        if event.type == "sentiment":
            break
    assert not [t for t in threading.enumerate() if t.name == "sentistream-analyze"]


@pytest.mark.parametrize("source, needle", [("/nonexistent/clip.mp4", "no such file"), ("demo", None)])
def test_user_errors_are_raised_as_user_error(source, needle, tmp_path):
    from stream import analyze_sync

    if needle is None:  # a bad override, not a bad source
        with pytest.raises(UserError, match="window.hop"):
            list(analyze_sync(source, TINY_CONFIG, {"window.hop": -1}))
        return
    with pytest.raises(UserError, match=needle):
        list(analyze_sync(source, TINY_CONFIG))


def test_import_stream_is_cheap():
    code = "import sys, stream; assert 'torch' not in sys.modules and 'stream.api' not in sys.modules; print(len(stream.__all__))"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
