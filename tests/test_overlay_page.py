"""`GET /overlay`: the OBS browser-source page (issue 26).

The query rules in process (aiohttp test server); then the real thing: `sentistream serve` as a
subprocess (tiny random CLIP), a `/ws` client streaming the gallery view (two real faces, the
astronaut photo) under a name, and Debian's headless Chromium showing /overlay for that name.
Screenshots are taken over a pure dark and a pure light page background (Chromium's default
background, which is what OBS sets to transparent) and over a transparent one, and checked
pixel by pixel: the page itself draws nothing outside its panel, the panel's text stands out.
"""
from __future__ import annotations

import io
import json
import os
import re
import threading
from pathlib import Path
from typing import Iterator, Optional

import aiohttp
import cv2
import numpy as np
import pytest

from scripts.media import gallery_frame
from tests.test_browser import _need_chromium, _start_serve, headless_chromium, serving

TOKEN = "overlay-s3cret"
LABELS = ("positive", "neutral", "negative")
DARK, LIGHT = (16, 18, 22), (242, 242, 236)  # the page backgrounds the screenshots are taken over
PICTURE = os.environ.get("SENTISTREAM_OVERLAY_PNG")  # set to a path to keep the README picture


# ------------------------------------------------------------------------------ the query, in process
@pytest.mark.asyncio(loop_scope="module")
async def test_overlay_query_is_checked_with_one_line_errors(serve):
    base = await serve(token=TOKEN)
    good = f"overlay?stream=cam-1&token={TOKEN}"
    async with aiohttp.ClientSession() as http:
        async with http.get(base + good + "&theme=light&scale=1.5") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
            page = await r.text()
            assert 'src="static/overlay.js"' in page and 'href="static/overlay.css"' in page
            assert "connect-src 'self'" in r.headers["Content-Security-Policy"]
        for asset in ("static/overlay.js", "static/overlay.css"):
            async with http.get(base + asset) as r:
                assert r.status == 200
        async with http.get(base + good) as r:  # theme and scale are optional
            assert r.status == 200
        async with http.get(base + f"overlay?stream=cam-1&token={TOKEN}x") as r:
            assert r.status == 401 and "?token=" in (await r.json())["error"]
        async with http.get(base + "overlay?stream=cam-1") as r:
            assert r.status == 401
        async with http.get(base + "overlay?stream=cam-1", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200
        bad = {
            "&theme=neon": "theme must be one of dark, light (got 'neon')",
            "&scale=big": "scale must be a number from 0.25 to 4 (got 'big')",
            "&scale=0": "scale must be a number from 0.25 to 4 (got '0')",
            "&scale=4.5": "scale must be a number from 0.25 to 4",
            "&scale=nan": "scale must be a number",
            "&scale=inf": "scale must be a number",
            "&scale=": "scale must be a number",
            "&them=light": "unknown parameter 'them'",
        }
        for extra, message in bad.items():
            async with http.get(base + good + extra) as r:
                body = await r.json()
                assert r.status == 400, extra
                assert message in body["error"] and "\n" not in body["error"], (extra, body)
        for query, message in ((f"token={TOKEN}", "missing ?stream=ID"), (f"stream=a%20b&token={TOKEN}", "stream must be"),
                               (f"stream={'x' * 65}&token={TOKEN}", "stream must be"), (f"stream=a%0A&token={TOKEN}", "stream must be")):
            async with http.get(base + "overlay?" + query) as r:
                assert r.status == 400 and message in (await r.json())["error"], query
        async with http.get(base + "healthz") as r:  # still up
            assert r.status == 200


# ------------------------------------------------------------------------------ a real stream, a real browser
class Feeder:
    """A `/ws` client streaming the gallery view (two still faces) as JPEG at 10 fps under `name`;
    reads what the server sends on a second thread."""

    def __init__(self, base: str, name: str) -> None:
        import websocket  # websocket-client, a selenium dependency

        ok, data = cv2.imencode(".jpg", cv2.cvtColor(gallery_frame(0.0, 3600.0), cv2.COLOR_RGB2BGR))
        assert ok
        self.jpeg = data.tobytes()
        self.ws = websocket.create_connection(base.replace("http://", "ws://") + f"ws?token={TOKEN}", timeout=30)
        self.ws.send(json.dumps({"type": "start", "stream": name, "video": {"format": "jpeg"}}))
        ready = json.loads(self.ws.recv())
        assert ready == {**ready, "type": "ready", "stream": name}, ready
        self.stop = threading.Event()
        self.sentiments = 0
        self.summary: Optional[dict] = None
        self.threads = [threading.Thread(target=self._send, daemon=True), threading.Thread(target=self._read, daemon=True)]
        for t in self.threads:
            t.start()

    def _send(self) -> None:
        import struct

        k = 0
        while not self.stop.wait(0.1):
            try:
                self.ws.send_binary(struct.pack("<cd", b"V", k * 0.1) + self.jpeg)
            except Exception:  # the server went away
                return
            k += 1

    def _read(self) -> None:
        try:
            while True:
                text = self.ws.recv()
                if not text:
                    return
                event = json.loads(text)
                self.sentiments += event.get("type") == "sentiment"
                if event.get("type") == "summary":
                    self.summary = event
        except Exception:  # closed
            return

    def end(self) -> dict:
        """Ends the stream cleanly; the server's summary."""
        self.stop.set()
        self.threads[0].join(10)
        self.ws.send(json.dumps({"type": "end"}))
        self.threads[1].join(30)
        self.ws.close()
        assert self.summary is not None, "no summary after the end message"
        return self.summary

    def abandon(self) -> None:
        self.stop.set()
        try:
            self.ws.close(timeout=1)
        except Exception:
            pass
        for t in self.threads:
            t.join(10)


@pytest.fixture(scope="module")
def overlay_server() -> Iterator[str]:
    yield from serving("--token", TOKEN)


@pytest.fixture
def browser(tmp_path):
    _need_chromium()
    drv = headless_chromium(tmp_path / "profile", "--hide-scrollbars", "--force-device-scale-factor=1", "--window-size=560,360")
    try:
        yield drv
    finally:
        drv.quit()


def _state(driver) -> tuple[str, str]:
    return driver.execute_script("const p = document.getElementById('panel'); return [p.dataset.state, "
                                 "document.getElementById('status').textContent]")


def _wait_state(driver, state: str, timeout: float = 90, faces: int = 0) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d) -> bool:
        return _state(d)[0] == state and len(d.find_elements("css selector", "#faces li:not(.gone)")) >= faces

    try:
        WebDriverWait(driver, timeout, poll_frequency=0.2).until(ready)
    except Exception:
        raise AssertionError(f"overlay never reached {state!r} (with {faces} face rows): it shows {_state(driver)}") from None


def _open(driver, url: str) -> None:
    """`url` in a fresh tab (the previous one closed): Chromium stops applying a background override
    in a tab that was screenshotted transparent and then navigated within the same site."""
    old = driver.current_window_handle
    driver.switch_to.new_window("tab")
    new = driver.current_window_handle
    driver.switch_to.window(old)
    driver.close()
    driver.switch_to.window(new)
    driver.get(url)


def _rect(driver, selector: str) -> tuple[int, int, int, int]:
    r = driver.execute_script("const r = document.querySelector(arguments[0]).getBoundingClientRect();"
                              "return [r.left, r.top, r.right, r.bottom];", selector)
    return int(np.floor(r[0])), int(np.floor(r[1])), int(np.ceil(r[2])), int(np.ceil(r[3]))


def _screenshot(driver, rgba: tuple[int, int, int, float]) -> np.ndarray:
    """The page over a page background of `rgba` (Chromium's default background; OBS makes it transparent)."""
    from PIL import Image

    r, g, b, a = rgba
    driver.execute_cdp_cmd("Emulation.setDefaultBackgroundColorOverride", {"color": {"r": r, "g": g, "b": b, "a": a}})
    # Two animation frames: the next screenshot is of a frame painted with the new background.
    driver.execute_async_script("const done = arguments[0]; requestAnimationFrame(() => requestAnimationFrame(done));")
    return np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGBA"))


def _luminance(rgb: np.ndarray) -> np.ndarray:
    c = rgb.astype(np.float64) / 255.0
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return c @ np.array([0.2126, 0.7152, 0.0722])


def _text_contrast(region: np.ndarray) -> float:
    """WCAG contrast between a region's commonest colour (the plate) and its most distinct 2% (the text)."""
    lum = _luminance(region[..., :3].reshape(-1, 3))
    plate = float(np.median(lum))
    ink = max((float(np.percentile(lum, q)) for q in (2, 98)), key=lambda v: abs(v - plate))
    hi, lo = max(plate, ink), min(plate, ink)
    return (hi + 0.05) / (lo + 0.05)


def _outside(img: np.ndarray, panel: tuple[int, int, int, int]) -> np.ndarray:
    """Pixels right of and below the panel (with a 2 px margin for its anti-aliased corners)."""
    h, w = img.shape[:2]
    mask = np.ones((h, w), bool)
    mask[: min(h, panel[3] + 2), : min(w, panel[2] + 2)] = False
    assert mask.sum() > 0.3 * h * w, "the window should be much larger than the panel"
    return img[mask]


@pytest.mark.slow
@pytest.mark.browser
def test_overlay_is_transparent_and_readable_over_dark_and_light(overlay_server, browser):
    feeder = Feeder(overlay_server, "obs-shot")
    pictures = {}
    try:
        for theme in ("dark", "light"):
            _open(browser, overlay_server + f"overlay?stream=obs-shot&token={TOKEN}&theme={theme}&scale=1")
            _wait_state(browser, "live", faces=2)
            style = browser.execute_script("const h = getComputedStyle(document.documentElement), b = getComputedStyle(document.body);"
                                           "return [h.backgroundColor, b.backgroundColor, b.margin];")
            assert style == ["rgba(0, 0, 0, 0)", "rgba(0, 0, 0, 0)", "0px"], style
            assert browser.find_element("id", "label").text.lower() in LABELS
            assert re.fullmatch(r"[+\u2212]\d\.\d\d", browser.find_element("id", "score").text)
            rows = [li.text.split() for li in browser.find_elements("css selector", "#faces li")]
            assert len(rows) == 2 and all(re.fullmatch(r"#\d+", r[0]) and r[1].lower() in LABELS for r in rows), rows
            assert browser.find_element("id", "weights").is_displayed()  # tiny random CLIP: said on the overlay too
            panel, head, bar = _rect(browser, "#panel"), _rect(browser, ".headline"), _rect(browser, ".scorebar")
            faces = _rect(browser, "#faces")

            for bg in (DARK, LIGHT):
                img = _screenshot(browser, (*bg, 1.0))
                out = _outside(img, panel)
                # The page draws nothing of its own outside the panel: the background shows, exactly.
                assert np.abs(out[:, :3].astype(int) - bg).max() <= 1, (theme, bg)
                x0, y0, x1, y1 = panel
                plate = img[y0 + 6:y1 - 6, x0 + 6:x1 - 6, :3].astype(int)  # its plate may match the background (dark on dark)
                for name, (a, b, c, d) in (("headline", head), ("face rows", faces)):
                    contrast = _text_contrast(img[b:d, a:c])
                    assert contrast >= 4.5, f"{theme} theme over {bg}: {name} text contrast {contrast:.1f} < 4.5"
                track = img[(bar[1] + bar[3]) // 2, bar[0] + 3:bar[2] - 3, :3].astype(int)
                assert np.abs(track - np.median(plate.reshape(-1, 3), axis=0)).max(axis=1).min() > 8, "score bar invisible"

            # OBS: a transparent page background. Nothing outside the panel, the panel itself opaque enough.
            img = _screenshot(browser, (0, 0, 0, 0.0))
            assert _outside(img, panel)[:, 3].max() == 0
            x0, y0, x1, y1 = panel
            assert np.median(img[y0 + 6:y1 - 6, x0 + 6:x1 - 6, 3]) >= 180
            pictures[theme] = img[:panel[3], :panel[2]].copy()

        # ?scale=2: everything twice the size.
        _open(browser, overlay_server + f"overlay?stream=obs-shot&token={TOKEN}&scale=2")
        _wait_state(browser, "live")
        width = _rect(browser, "#panel")[2] - _rect(browser, "#panel")[0]
        assert browser.execute_script("return getComputedStyle(document.getElementById('panel')).fontSize") == "32px"
        assert abs(width - 2 * (panel[2] - panel[0])) <= 2
    finally:
        feeder.abandon()
    if PICTURE:
        _save_picture(Path(PICTURE), pictures)


def _save_picture(path: Path, pictures: dict[str, np.ndarray]) -> None:
    """Both themes over the video they describe (the gallery view), as OBS composes them."""
    from PIL import Image

    frame = Image.fromarray(gallery_frame(0.0, 3600.0)).convert("RGBA")
    for theme, (x, y) in (("dark", (12, 252)), ("light", (332, 252))):
        frame.alpha_composite(Image.fromarray(pictures[theme]), (x, y))
    frame.convert("RGB").save(path)


@pytest.mark.slow
@pytest.mark.browser
def test_overlay_reconnects_by_itself_when_the_stream_or_the_server_goes(browser):
    """The stream ends and starts again under the same name; then the server is killed (no goodbye)
    and started again on the same port: the overlay follows each time without being reloaded."""
    first, base = _start_serve(0, "--token", TOKEN)
    second = None
    feeder: Optional[Feeder] = None
    try:
        browser.get(base + f"overlay?stream=obs-re&token={TOKEN}")
        _wait_state(browser, "waiting", timeout=10)  # no such stream yet: it keeps asking
        assert _state(browser)[1] == "waiting for stream obs-re"
        browser.execute_script("window.sameDocument = 42")
        feeder = Feeder(base, "obs-re")
        _wait_state(browser, "live")
        summary = feeder.end()
        assert summary["estimates"] >= 1
        _wait_state(browser, "waiting", timeout=20)
        assert _state(browser)[1] == "waiting for stream obs-re"
        assert browser.find_element("id", "label").text.lower() in LABELS  # the last estimate stays, dimmed

        feeder = Feeder(base, "obs-re")  # the same name again
        _wait_state(browser, "live")

        port = int(re.search(r":(\d+)/$", base).group(1))
        first.kill()  # SIGKILL: no goodbye
        first.wait(10)
        feeder.abandon()
        _wait_state(browser, "reconnecting", timeout=10)
        second, again = _start_serve(port, "--token", TOKEN)
        assert again == base
        feeder = Feeder(base, "obs-re")
        _wait_state(browser, "live")
        assert browser.execute_script("return window.sameDocument") == 42  # never reloaded
    finally:
        if feeder is not None:
            feeder.abandon()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
            if proc is not None and proc.stderr is not None:
                proc.stderr.close()
