"""`sentistream report` and `run --report`: a self-contained HTML page whose embedded images load in
a real (headless Chromium) browser and whose transcript is the run's; bad inputs get one line."""
from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stream.report import load_events, render_html
from tests.conftest import ROOT, TINY_CONFIG
from tests.test_browser import _need_chromium, headless_chromium


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> dict:
    """The bundled demo through `run --report` (tiny random CLIP, real Whisper)."""
    d = tmp_path_factory.mktemp("report")
    events, page = d / "demo.jsonl", d / "run-report.html"
    res = cli("run", "--source", "demo", "--config", str(TINY_CONFIG), "--output", str(events), "--report", str(page))
    assert res.returncode == 0, res.stderr
    return {"dir": d, "events": events, "page": page}


def finals(events: Path) -> list[str]:
    return [e["text"] for e in map(json.loads, events.read_text().splitlines()) if e["type"] == "transcript" and e["final"]]


@pytest.mark.slow
def test_run_report_is_self_contained_with_the_transcript(demo_run):
    page = demo_run["page"].read_text()
    texts = finals(demo_run["events"])
    assert len(texts) >= 3
    for text in texts:
        assert text.replace("'", "&#x27;") in page or text in page
    # No external assets: every src/href is inline data.
    refs = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs), refs[:3]
    assert page.count("<img") == 2  # timeline and latency


@pytest.mark.slow
def test_report_command_writes_html_and_png(demo_run, tmp_path):
    out, png = tmp_path / "r.html", tmp_path / "t.png"
    res = cli("report", str(demo_run["events"]), "--out", str(out), "--png", str(png))
    assert res.returncode == 0, res.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(png) as im:
        assert im.size[0] >= 800 and im.size[1] >= 400
    assert "sentiment timeline" in out.read_text()


@pytest.mark.slow
@pytest.mark.browser
def test_report_renders_in_headless_chromium(demo_run, tmp_path):
    _need_chromium()
    from selenium.webdriver.common.by import By

    drv = headless_chromium(tmp_path / "profile", "--window-size=1280,900")
    try:
        drv.get(demo_run["page"].resolve().as_uri())
        sizes = drv.execute_script("return Array.from(document.images).map(i => [i.id, i.complete, i.naturalWidth, i.naturalHeight])")
        assert [s[0] for s in sizes] == ["timeline", "latency"]
        assert all(complete and w > 0 and h > 0 for _, complete, w, h in sizes), sizes
        table = drv.find_element(By.ID, "transcript").text
        for text in finals(demo_run["events"]):
            assert text in table, (text, table)
    finally:
        drv.quit()


def test_faces_get_their_own_lines(tmp_path):
    events = [{"type": "sentiment", "stream": "0", "t": t / 2, "label": "neutral", "score": 0.1, "weights": "random",
               "probs": {"negative": 0.3, "neutral": 0.4, "positive": 0.3}, "latency_ms": 5.0,
               "modalities": {"image": {"weight": 0.5}, "text": {"weight": 0.5}},
               "faces": [{"id": 1, "score": 0.5, "label": "positive"}, {"id": 2, "score": -0.4, "label": "negative"}]}
              for t in range(1, 8)]
    _, png = render_html(events)
    _, png2 = render_html([{k: v for k, v in e.items() if k != "faces"} for e in events])
    from io import BytesIO

    from PIL import Image

    taller = Image.open(BytesIO(png)).size[1] - Image.open(BytesIO(png2)).size[1]
    assert taller > 100  # a third axes row: per-face scores


@pytest.mark.parametrize("content, needle", [
    (None, "events file not found"),
    ("not json at all\n", "line 1 is not JSON"),
    ('{"type": "sentiment", "t": 0.5}\n[1, 2]\n', "line 2 is not a sentistream event"),
    ('{"type": "summary", "stream": "0", "t": 1}\n', "no sentiment or transcript events"),
    (b"\xff\xfe\x00binary", "not a text file"),
])
def test_bad_inputs_one_line_exit_2(content, needle, tmp_path):
    path = tmp_path / "events.jsonl"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    res = cli("report", str(path), timeout=120)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr
    with pytest.raises(Exception, match=needle):
        load_events(path)


# ------------------------------------------------------------------------------ issue 25: types, outputs, streaming
@pytest.mark.parametrize("line, needle", [
    ('{"type": "sentiment", "t": "3.5"}', 'sentiment field "t" should be a valid number (got "3.5")'),
    ('{"type": "sentiment", "t": null}', 'sentiment field "t" should be a valid number (got null)'),
    ('{"type": "sentiment", "t": NaN}', 'sentiment field "t" should be a finite number'),
    ('{"type": "warning", "t": Infinity, "message": "x"}', 'warning/error field "t" should be a finite number'),
    ('{"type": "sentiment", "t": 1, "modalities": [0.5, 0.5]}', 'sentiment field "modalities" should be an object'),
    ('{"type": "sentiment", "t": 1, "modalities": {"image": {"weight": "high"}}}', 'field "modalities.image.weight"'),
    ('{"type": "sentiment", "t": 1, "faces": 3}', 'sentiment field "faces" should be a valid array'),
    ('{"type": "sentiment", "t": 1, "faces": ["a"]}', 'sentiment field "faces.0" should be an object'),
    ('{"type": "sentiment", "t": 1, "faces": [{"id": 1, "score": "0.5"}]}', 'sentiment field "faces.0.score"'),
    ('{"type": "sentiment", "t": 1, "label": 2}', 'sentiment field "label" should be a valid string'),
    ('{"type": "sentiment", "t": 1, "latency_ms": -1e300}', 'sentiment field "latency_ms" should be greater than or equal to 0'),
    ('{"type": "transcript", "t": 1, "t_end": "2.0", "text": "hi", "final": true}', 'transcript field "t_end"'),
    ('{"type": "transcript", "t": 1, "text": 7, "final": true}', 'transcript field "text" should be a valid string'),
    ('{"type": "summary", "t": 1, "latency": "fast"}', 'summary field "latency" should be an object'),
    ('{"type": "summary", "t": 1, "latency": {"fusion": {"count": 3, "p95_ms": "9"}}}', 'field "latency.fusion.p95_ms"'),
])
def test_wrong_field_types_one_line_exit_2(line, needle, tmp_path):
    """Issue 25: a field the report reads with the wrong type (or not finite) names the line and the field."""
    path = tmp_path / "events.jsonl"
    path.write_text('{"type": "sentiment", "stream": "0", "t": 0.5, "score": 0.1, "label": "neutral"}\n' + line + "\n")
    res = cli("report", str(path), timeout=120)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path} line 2: ") and needle in lines[0], res.stderr
    assert not (tmp_path / "events.html").exists()


def test_render_html_checks_event_dicts_too():
    from models.errors import UserError

    with pytest.raises(UserError, match='event 2: sentiment field "t" should be a valid number'):
        render_html([{"type": "sentiment", "t": 0.5}, {"type": "sentiment", "t": "1"}])


def test_report_refuses_to_overwrite_its_events(tmp_path):
    """Issue 25: `report X.jsonl --out X.jsonl` (or --png, or a link to it) would replace the events with the page."""
    events = tmp_path / "events.jsonl"
    events.write_text('{"type": "sentiment", "stream": "0", "t": 0.5, "score": 0.1, "label": "neutral"}\n')
    before = events.read_bytes()
    (tmp_path / "link.jsonl").symlink_to(events)
    for flags in (["--out", str(events)], ["--out", str(tmp_path / "r.html"), "--png", str(events)],
                  ["--out", str(tmp_path / "link.jsonl")], ["--out", str(tmp_path / "same.html"), "--png", str(tmp_path / "same.html")]):
        res = cli("report", str(events), *flags, timeout=120)
        assert res.returncode == 2, (flags, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and ("is the same file as EVENTS.jsonl" in lines[0] or "are the same file" in lines[0]), res.stderr
        assert events.read_bytes() == before
    named_html = tmp_path / "events.html"  # the default --out of events.html is events.html itself
    named_html.write_bytes(before)
    res = cli("report", str(named_html), timeout=120)
    assert res.returncode == 2 and "is the same file as EVENTS.jsonl" in res.stderr and named_html.read_bytes() == before
    res = cli("report", str(events), "--out", str(tmp_path / "r.html"), timeout=120)  # a path of its own is fine
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "r.html").read_text().startswith("<!doctype html>") and events.read_bytes() == before


def test_run_report_may_not_be_the_output(tmp_path):
    out = tmp_path / "events.jsonl"
    res = cli("run", "--source", "demo", "--config", str(TINY_CONFIG), "--output", str(out), "--report", str(out), timeout=120)
    assert res.returncode == 2 and "--report and --output are the same file" in res.stderr, res.stderr
    assert not out.exists()


def test_decimated_and_reservoir_stay_bounded():
    from stream.report import Decimated, Reservoir

    small = Decimated(8)
    for i in range(5):
        small.add(i)
    assert small.items() == [0, 1, 2, 3, 4]  # below the cap: everything, as before
    series = Decimated(8)
    for i in range(10_000):
        series.add(i)
        assert len(series.kept) <= 8
    items = series.items()
    assert items[0] == 0 and items[-1] == 9999  # from the first to the last
    steps = {b - a for a, b in zip(items, items[1:-1])}
    assert steps == {series.stride} and series.stride * len(series.kept) >= 10_000 // 2  # evenly spaced over it all
    sample = Reservoir(500, seed=3)
    for i in range(100_000):
        sample.add(float(i))
    assert len(sample.values) == 500 and sample.seen == 100_000
    assert 40_000 < sum(sample.values) / 500 < 60_000  # uniform over the whole stream, not its start


def test_timeline_state_is_bounded_however_long_the_events(tmp_path):
    """Issue 25: the report reads the events in one pass into bounded state: 60 000 estimates with
    faces that come and go, transcripts and warnings keep at most the caps in memory; the transcript
    rows go to a temporary file and come back complete and in order."""
    from stream.report import LATENCY_SAMPLE, MAX_FACES, MAX_MESSAGES, Timeline

    def events():
        for i in range(60_000):
            t = i * 0.5
            yield {"type": "sentiment", "stream": "cam", "t": t, "label": ("negative", "neutral", "positive")[i % 3],
                   "score": (i % 7) / 7 - 0.5, "latency_ms": float(i % 100), "weights": "random",
                   "modalities": {"image": {"weight": 0.25}, "text": {"weight": 0.75}},
                   "faces": [{"id": 1, "score": 0.5}, {"id": 100 + i // 50, "score": -0.5}]}
            if i % 3 == 0:
                yield {"type": "transcript", "stream": "cam", "t": t, "t_start": max(0.0, t - 1.5), "t_end": t, "text": f"words {i} " + "x" * 60, "final": True}
            if i % 100 == 0:
                yield {"type": "warning", "stream": "cam", "t": t, "message": f"warning {i}"}

    with Timeline.of(events(), points=64) as tl:
        assert tl.estimates == 60_000 and tl.finals == 20_000 and tl.labels == {"negative": 20_000, "neutral": 20_000, "positive": 20_000}
        assert len(tl.sentiments.kept) <= 64 and len(tl.segments.kept) <= 64
        pts = tl.sentiments.items()
        assert pts[0][0] == 0.0 and pts[-1][0] == 59_999 * 0.5 and pts[0][3:] == (0.25, 0.75)
        faces = tl.faces()
        assert len(faces) <= MAX_FACES and "1" in faces  # the face seen all along is kept; passers-by make room
        assert all(len(series) <= 65 for series in faces.values()) and tl.faces_not_drawn > 0
        assert len(tl.latencies.values) == min(60_000, LATENCY_SAMPLE) and tl.latencies.seen == 60_000
        assert len(tl.messages) == MAX_MESSAGES and tl.messages_not_shown == 600 - MAX_MESSAGES
        assert tl._rows._rolled  # the transcript rows spilled to disk, not memory
        rows = list(tl.transcript_rows())
        assert len(rows) == 20_000 and rows[1] == (0.0, 1.5, "words 3 " + "x" * 60) and rows[-1][2].startswith("words 59997 ")
        assert tl.hop == 0.5 and tl.duration == 59_999 * 0.5
        page = io.StringIO()
        from stream.report import write_page

        write_page(tl, page, "long")
    html = page.getvalue()
    assert html.count("<tr><td class=t>") == 20_000 and "words 59997" in html and "550 more warnings and errors" in html
