"""`sentistream run`: one source through the pipeline, events as JSON Lines."""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
from typing import Optional

from .config import AppConfig
from .errors import UserError
from .events import FanoutSink, JsonlSink, make_event
from .overlay import OverlayTracker, OverlayWriter, draw_overlay, render_overlay_file
from .runtime import RANDOM_WEIGHTS_WARNING, Runtime, build_runtime
from .session import StreamSession, pump
from .sources import AudioChunk, SourceInfo, VideoFrame, demo_path, open_source


class LiveOverlay:
    """Draws the latest estimate on every frame of a live source as it passes (never waits)."""

    def __init__(self, path: Optional[str], info: SourceInfo, show: bool):
        self.path, self.info, self.show = path, info, show
        self.tracker = OverlayTracker()
        self.writer: Optional[OverlayWriter] = None
        self._lock = threading.Lock()
        if path and info.width and info.height:  # open now so audio before the first frame is kept
            self.writer = OverlayWriter(path, info.width, info.height, info.fps or 15.0, with_audio=info.has_audio)

    def on_event(self, event: dict) -> None:
        with self._lock:
            self.tracker.feed(event)

    def on_item(self, item: VideoFrame | AudioChunk) -> None:
        if isinstance(item, AudioChunk):
            if self.writer is not None:
                self.writer.write_audio(item.samples, item.t, 16000)
            return
        with self._lock:
            state = self.tracker.state()
        image = draw_overlay(item.image, state)
        if self.path and self.writer is None:
            h, w = image.shape[:2]
            self.writer = OverlayWriter(self.path, w, h, self.info.fps or 15.0, with_audio=self.info.has_audio)
        if self.writer is not None:
            self.writer.write_video(image, item.t)
        if self.show:
            import cv2

            cv2.imshow("sentistream", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            cv2.waitKey(1)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def display_available() -> tuple[bool, str]:
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no display (DISPLAY is not set)"
    import cv2

    if "GTK" not in cv2.getBuildInformation() and "QT" not in cv2.getBuildInformation().upper():
        return False, "this OpenCV build has no GUI (opencv-python-headless)"
    return True, ""


class Progress:
    """tqdm bar over media seconds, only when stderr is a terminal and the duration is known."""

    def __init__(self, info: SourceInfo):
        self.bar = None
        if sys.stderr.isatty() and info.duration and not info.live:
            from tqdm import tqdm

            self.bar = tqdm(total=round(info.duration, 1), unit="s", desc="analysing", file=sys.stderr, leave=False)
        self._done = 0.0

    def on_event(self, event: dict) -> None:
        if self.bar is not None and event["type"] == "sentiment":
            step = min(event["t"], self.bar.total) - self._done
            if step > 0:
                self.bar.update(round(step, 1))
                self._done += step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _warn(sink: FanoutSink, stream: str, message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)
    sink.emit(make_event("warning", stream, 0.0, message=message))


async def analyse(cfg: AppConfig, args: argparse.Namespace) -> int:
    source = open_source(args.source, realtime=args.realtime)
    info = source.open()  # bad input fails here, before any model is loaded
    show = bool(getattr(args, "show", False))
    if show and not info.live:
        print("warning: --show needs a live source; for files add --realtime (continuing without a window)", file=sys.stderr)
        show = False
    if show:
        ok, why = display_available()
        if not ok:
            print(f"warning: --show needs a display: {why}; continuing without a window (use --overlay OUT.mp4)", file=sys.stderr)
            show = False
    sink = FanoutSink(JsonlSink(args.output))
    stream_name = cfg.pipeline.stream_name
    runtime: Optional[Runtime] = None
    progress = Progress(info)
    live_overlay = LiveOverlay(args.overlay, info, show) if (info.live and (args.overlay or show)) else None
    sink.keep = bool(args.overlay) and not info.live
    sink.listeners.append(progress.on_event)
    if live_overlay is not None:
        sink.listeners.append(live_overlay.on_event)
    status = 0
    try:
        runtime = await build_runtime(cfg, need_asr=info.has_audio)
        if runtime.engine.weights == "random":
            _warn(sink, stream_name, RANDOM_WEIGHTS_WARNING)
        if not info.has_audio:
            _warn(sink, stream_name, f"{info.description} has no audio track: visual-only estimates (text weight 0)")
        elif not cfg.asr.enabled:
            _warn(sink, stream_name, "asr.enabled is false: visual-only estimates (text weight 0)")
        if not info.has_video:
            _warn(sink, stream_name, f"{info.description} has no video track: text-only estimates (image weight 0)")
        session = StreamSession(stream_name, runtime, sink.emit, live=info.live, has_video=info.has_video, has_audio=info.has_audio)
        runner = asyncio.create_task(session.run())
        runner.add_done_callback(lambda _: source.close())  # analysis over (or failed): stop decoding
        try:
            await pump(source.frames(), session, live_overlay.on_item if live_overlay else None)
        except UserError as exc:  # e.g. truncated file: keep what was analysed, say what broke
            sink.emit(make_event("error", stream_name, session.clock, message=str(exc)))
            print(f"error: {exc}", file=sys.stderr)
            status = 2
        summary = await runner
        sink.emit(summary)
    finally:
        progress.close()
        source.close()
        if live_overlay is not None:
            live_overlay.close()
        if runtime is not None:
            await runtime.close()
        sink.close()
    if args.overlay and not info.live and status == 0:
        path = str(demo_path()) if args.source.strip() == "demo" else args.source
        await asyncio.to_thread(render_overlay_file, path, sink.events, args.overlay)
        print(f"overlay written to {args.overlay}", file=sys.stderr)
    return status


def main(cfg: AppConfig, args: argparse.Namespace) -> int:
    return asyncio.run(analyse(cfg, args))
