"""A real browser against `sentistream serve`: Debian's headless Chromium with a fake camera and
microphone (a y4m picture and an espeak-ng WAV, both looped by Chromium) opens the page, connects
over WebRTC and must show transcript text and an estimate in its DOM.

The server runs as the real CLI in a subprocess (tiny random CLIP, `--port 0`), so this also
covers `sentistream serve` start-up and a clean shutdown on SIGINT.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

import pytest

from scripts.media import make_speech_clip, require_tools
from tests.conftest import ROOT, TINY_CONFIG

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SPEECH = ["I am so happy with this wonderful result.", "Thank you, this is great news."]
SCREENSHOT = os.environ.get("SENTISTREAM_SCREENSHOT")  # set to a path to keep a picture of the page


def _need_chromium() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (os.path.exists(p) or shutil.which(Path(p).name))]
    if missing:
        pytest.skip(f"needs Debian chromium + chromium-driver ({', '.join(missing)} not found; `make apt`)")
    pytest.importorskip("selenium", reason="needs selenium (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def fake_media(tmp_path_factory) -> tuple[Path, Path]:
    """(camera .y4m, microphone .wav) for Chromium's fake capture devices."""
    require_tools("espeak-ng", "ffmpeg")
    d = tmp_path_factory.mktemp("browser-media")
    wav, _ = make_speech_clip(SPEECH, 0.6, d / "speech.wav", lead_s=0.8)
    y4m = d / "camera.y4m"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=320x240:rate=15", "-t", "4", "-pix_fmt", "yuv420p", str(y4m)], check=True)
    return y4m, wav


def url_from_stderr(proc: subprocess.Popen, pattern: str, timeout: float = 120) -> tuple[Optional[str], list[str]]:
    """Reads a subprocess's stderr until a line matches `pattern` (its group 1 is the URL); (URL or None,
    the lines read) when it matched, the stream ended or `timeout` passed."""
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        m = re.search(pattern, line)
        if m:
            return m.group(1), seen
    return None, seen


def headless_chromium(profile: Path, *args: str):
    """A selenium driver on Debian's Chromium, headless, with the flags this closed network needs (no
    background networking or component updates), a fresh profile dir and `args`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}", *args):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def _start_serve(port: int = 0, *extra: str) -> tuple[subprocess.Popen, str]:
    """`sentistream serve` (plus `extra` arguments) as a subprocess; (process, base URL) once it says where it serves."""
    # A long media timeout: a slot freed within seconds of leaving the page was freed by its goodbye.
    cmd = [sys.executable, "-m", "stream.cli", "serve", "--config", str(TINY_CONFIG), "--port", str(port),
           "--set", "server.media_timeout_s=120", *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    base, seen = url_from_stderr(proc, r"serving on (http://\S+/)")
    if base is None:
        proc.kill()
        pytest.fail("`sentistream serve` did not start:\n" + "".join(seen[-20:]))
    return proc, base


def serving(*extra: str) -> Iterator[str]:
    """A `sentistream serve` subprocess for a fixture: yields its base URL; stopped with SIGINT, which must
    end it cleanly."""
    _need_chromium()  # before spending seconds on model loading
    proc, base = _start_serve(0, *extra)
    yield base
    proc.send_signal(signal.SIGINT)
    try:
        assert proc.wait(30) == 0, "serve did not exit cleanly on SIGINT"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    yield from serving()


def _health(base: str) -> dict:
    with urllib.request.urlopen(base + "healthz", timeout=5) as r:
        return json.loads(r.read())


def _closed_by_bye(base: str) -> float:
    with urllib.request.urlopen(base + "metrics", timeout=5) as r:
        m = re.search(r'^sentistream_connections_closed_total\{reason="bye"\} (\S+)$', r.read().decode(), re.M)
    return float(m.group(1)) if m else 0.0


def _until_no_connections(base: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while _health(base)["connections"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _health(base)["connections"] == 0, "the server kept the closed browser connection"


@pytest.fixture
def driver(fake_media, tmp_path):
    _need_chromium()
    y4m, wav = fake_media
    drv = headless_chromium(tmp_path / "profile", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                            f"--use-file-for-fake-video-capture={y4m}", f"--use-file-for-fake-audio-capture={wav}",
                            "--autoplay-policy=no-user-gesture-required", "--window-size=1280,900")
    try:
        yield drv
    finally:
        drv.quit()


def test_page_connects_and_shows_transcript_and_estimate(server, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(server)
    assert "sentistream" in driver.title
    driver.find_element(By.ID, "start").click()

    def text(element_id: str) -> str:
        return driver.find_element(By.ID, element_id).text.strip()

    def ready(_) -> bool:
        if driver.find_element(By.ID, "error").is_displayed():
            raise AssertionError("page error: " + text("error"))
        return bool(text("transcript")) and text("label").lower() in ("positive", "neutral", "negative")

    try:
        WebDriverWait(driver, 90, poll_frequency=0.5).until(ready)
        # The overlay video plays: the returned track has frames.
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(
            "const v = document.getElementById('video'); return v.readyState >= 2 && v.videoWidth > 0;"))
    finally:
        if SCREENSHOT:
            driver.save_screenshot(SCREENSHOT)
    assert text("status") == "connected"
    assert re.fullmatch(r"[+-]\d\.\d\d", text("score")), text("score")
    assert re.fullmatch(r"\d\.\d\d", text("weight-image-v")) and re.fullmatch(r"\d\.\d\d", text("weight-text-v"))
    assert _health(server)["connections"] == 1
    points = driver.execute_script("return points.length")
    assert points >= 1  # the timeline has data

    byes = _closed_by_bye(server)
    driver.find_element(By.ID, "stop").click()
    _until_no_connections(server)
    assert _closed_by_bye(server) == byes + 1  # Stop says goodbye over the data channel

    # A reload (pagehide) says goodbye too: the slot is free at once, not after the media timeout.
    driver.find_element(By.ID, "start").click()
    WebDriverWait(driver, 60, poll_frequency=0.5).until(lambda d: text("status") == "connected" and _health(server)["live"] == 1)
    driver.refresh()
    _until_no_connections(server)
    assert _closed_by_bye(server) == byes + 2


def test_page_lists_people_from_face_estimates(server, driver):
    """The page's people list: one row per face id (label, score, a small timeline); a face out of
    view is greyed, rows stay bounded."""
    from selenium.webdriver.common.by import By

    driver.get(server)
    probs = {"negative": 0.2, "neutral": 0.3, "positive": 0.5}

    def event(t: float, faces: list[tuple[int, str, float]]) -> dict:
        return {"type": "sentiment", "stream": "0", "t": t, "label": "neutral", "probs": probs, "score": 0.0,
                "modalities": {}, "weights": "random", "latency_ms": 5.0,
                "faces": [{"id": i, "bbox": [10, 10, 50, 50], "label": lab, "probs": probs, "score": sc, "modalities": {}, "n": 2}
                          for i, lab, sc in faces]}

    assert not driver.find_element(By.ID, "people-card").is_displayed()
    for ev in (event(0.5, [(1, "positive", 0.42), (2, "negative", -0.3)]), event(1.0, [(1, "neutral", 0.05)])):
        driver.execute_script("onEvent(arguments[0])", ev)
    rows = driver.find_elements(By.CSS_SELECTOR, "#people li")
    assert [r.find_element(By.TAG_NAME, "b").text for r in rows] == ["#1 neutral +0.05", "#2 negative -0.30"]
    assert [r.get_attribute("class") for r in rows] == ["", "gone"]
    assert driver.execute_script("return people.get(1).points.length") == 2
    for k in range(40):  # many short-lived ids: the list stays bounded
        driver.execute_script("onEvent(arguments[0])", event(2.0 + k, [(100 + k, "neutral", 0.0)]))
    assert len(driver.find_elements(By.CSS_SELECTOR, "#people li")) <= 16


def test_page_notices_a_dead_server_and_reconnects_by_itself(driver):
    """A killed server process sends no goodbye: the page must stop looking "connected" within
    seconds (its heartbeats stop) and reconnect on its own once a server answers again (in a
    cluster: another replica)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def text(element_id: str) -> str:
        return driver.find_element(By.ID, element_id).text.strip()

    first, base = _start_serve()
    second = None
    try:
        driver.get(base)
        driver.find_element(By.ID, "start").click()
        WebDriverWait(driver, 90, poll_frequency=0.5).until(
            lambda d: text("status") == "connected" and d.execute_script("return heartbeats"))
        port = int(re.search(r":(\d+)/$", base).group(1))
        first.kill()  # SIGKILL: no goodbye, no closed channel
        first.wait(10)
        killed = time.monotonic()
        WebDriverWait(driver, 15, poll_frequency=0.2).until(lambda d: "server lost" in text("notices"))
        assert time.monotonic() - killed < 10
        assert text("status") != "connected"
        second, again = _start_serve(port)  # the same address comes back
        assert again == base
        WebDriverWait(driver, 90, poll_frequency=0.5).until(lambda d: text("status") == "connected")
        WebDriverWait(driver, 30, poll_frequency=0.5).until(lambda d: _health(base)["live"] == 1)
        assert not driver.find_element(By.ID, "error").is_displayed()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
            if proc is not None and proc.stderr is not None:
                proc.stderr.close()
