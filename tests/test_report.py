"""`sentistream report` and `run --report`: a self-contained HTML page whose embedded images load in
a real (headless Chromium) browser and whose transcript is the run's; bad inputs get one line."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stream.report import load_events, render_html
from tests.conftest import ROOT, TINY_CONFIG
from tests.test_browser import CHROMEDRIVER, CHROMIUM, _need_chromium


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
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
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
