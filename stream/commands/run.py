"""`sentistream run`: one source through the pipeline, events as JSON Lines."""
from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Optional

from models.errors import UserError

from ..config import AppConfig
from ..events import FanoutSink, JsonlSink, input_warnings, make_event
from ..overlay import LiveOverlay, display_available, render_overlay_file
from ..overlay.writer import OVERLAY_EXTENSIONS
from ..report import EventReader, write_report
from ..runtime import Runtime, build_runtime
from ..session import StreamSession
from ..sources import SourceInfo, demo_path, open_source, pump
from .outputs import check_distinct, check_output, local_source


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


def check_outputs(args: argparse.Namespace) -> None:
    """Output paths are checked before the source opens and any model loads; none may be the source."""
    output = args.output if args.output not in (None, "-") else None
    if output is not None:
        check_output(output, "--output")
    if args.overlay:
        check_output(args.overlay, "--overlay", suffixes=OVERLAY_EXTENSIONS)
    report = getattr(args, "report", None)
    if report:
        check_output(report, "--report")
    check_distinct({"--source": local_source(args.source), "--config": getattr(args, "config", None)},
                   {"--output": output, "--overlay": args.overlay, "--report": report})


async def analyse(cfg: AppConfig, args: argparse.Namespace) -> int:
    check_outputs(args)
    source = open_source(args.source, realtime=args.realtime)
    info = source.open()  # bad input fails here, before any model is loaded
    if args.overlay and not info.has_video:
        source.close()
        raise UserError(f"--overlay needs a video track: {info.description} has none (drop --overlay)")
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
    live_overlay = LiveOverlay(args.overlay, info, show, blur_faces=cfg.faces.blur_in_overlay) if (info.live and (args.overlay or show)) else None
    report = getattr(args, "report", None)
    to_file = bool(args.output) and args.output != "-"
    # The report re-reads the events file; only events going to stdout are kept in memory for it.
    sink.keep = (bool(args.overlay) and not info.live) or (bool(report) and not to_file)
    sink.listeners.append(progress.on_event)
    if live_overlay is not None:
        sink.listeners.append(live_overlay.on_event)
    status = 0
    keep_overlay = False  # a live recording is kept when the run ends or is stopped, dropped when it fails
    try:
        runtime = await build_runtime(cfg, need_asr=info.has_audio)
        for message in input_warnings(info.description, weights=runtime.engine.weights, has_video=info.has_video,
                                      has_audio=info.has_audio, asr_enabled=cfg.asr.enabled,
                                      language=cfg.asr.language, vision_model=cfg.vision.model):
            _warn(sink, stream_name, message)
        session = StreamSession(stream_name, runtime, sink.emit, live=info.live, has_video=info.has_video, has_audio=info.has_audio)
        runner = asyncio.create_task(session.run())
        runner.add_done_callback(lambda _: source.close())  # analysis over (or failed): stop decoding
        try:
            policy = session.frame_policy(display=live_overlay is not None)
            await pump(source.frames(policy), session, live_overlay.on_item if live_overlay else None)
        except UserError as exc:  # e.g. truncated file: keep what was analysed, say what broke
            sink.emit(make_event("error", stream_name, session.clock, message=str(exc)))
            print(f"error: {exc}", file=sys.stderr)
            status = 2
        summary = await runner
        sink.emit(summary)
        keep_overlay = True
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C is how a camera run ends
        keep_overlay = runtime is not None
        raise
    finally:
        progress.close()
        source.close()
        if live_overlay is not None:
            live_overlay.close(keep=keep_overlay)
        if runtime is not None:
            await runtime.close()
        sink.close()
    if args.overlay and not info.live and status == 0:
        path = str(demo_path()) if args.source.strip() == "demo" else args.source
        await asyncio.to_thread(render_overlay_file, path, sink.events, args.overlay, cfg.faces.blur_in_overlay)
        print(f"overlay written to {args.overlay}", file=sys.stderr)
    if report:
        events = EventReader(args.output) if to_file else sink.events  # streamed: bounded memory
        await asyncio.to_thread(write_report, events, report, None, f"sentistream report: {args.source}")
        print(f"report written to {report}", file=sys.stderr)
    return status


def _sources(args: argparse.Namespace) -> list[str]:
    """Every --source, then every line of --sources FILE (blank lines and # comments skipped)."""
    given = args.source if isinstance(args.source, list) else [args.source]
    sources = [s for s in given if s is not None and s.strip()]
    path = getattr(args, "sources", None)
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except OSError as exc:
            raise UserError(f"cannot read --sources {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise UserError(f"--sources {path} is not text (UTF-8): write one source per line") from None
        sources += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return sources


def main(cfg: AppConfig, args: argparse.Namespace) -> int:
    sources = _sources(args)
    cluster = bool(getattr(args, "ray", False))
    if not sources:
        raise UserError("give --source SRC (or, with --ray, several --source or --sources FILE)")
    if not cluster:
        extra = [flag for flag in ("sources", "ray_address", "replicas") if getattr(args, flag, None) is not None]
        if extra or len(sources) > 1:
            flag = "--" + extra[0].replace("_", "-") if extra else "several --source"
            raise UserError(f"{flag} needs --ray (one source per run otherwise)")
        args.source = sources[0]
        return asyncio.run(analyse(cfg, args))
    for flag in ("overlay", "show", "report"):
        if getattr(args, flag, None):
            raise UserError(f"--{flag} is not available with --ray (run that source without --ray)")
    if args.replicas is not None and args.replicas < 1:
        raise UserError("--replicas must be at least 1")
    output = args.output if args.output not in (None, "-") else None
    if output is not None:
        check_output(output, "--output")
    check_distinct({f"--source {s}": local_source(s) for s in sources}, {"--output": output})
    from ..cluster.sources import run_on_cluster  # Ray only in cluster mode

    return run_on_cluster(cfg, sources, output=args.output, address=args.ray_address, replicas=args.replicas,
                          realtime=bool(args.realtime))
