"""`sentistream` command line: run, serve, profile, train, evaluate, report.

Config is loaded and validated before anything else; user errors print one line and exit 2.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Callable, Optional, Sequence

from models.errors import UserError

from .config import AppConfig, default_config_path, load_config

# command -> "module:function"; each function takes (cfg, args) and returns an exit code.
COMMANDS: dict[str, str] = {
    "run": "stream.commands.run:main",
    "serve": "stream.commands.serve:main",
    "profile": "stream.commands.profile:main",
    "train": "stream.commands.train:main",
    "evaluate": "stream.commands.evaluate:main",
    "report": "stream.commands.report:main",
}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="PATH", help="YAML config (default: configs/default.yaml)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override a config key, e.g. --set vision.pretrained=random (repeatable)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")


def _ray_flags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--ray", action="store_true", help=what)
    p.add_argument("--ray-address", metavar="ADDR", default=None,
                   help="join this Ray cluster (e.g. ray://head:10001 or auto); default: start a local Ray")
    p.add_argument("--replicas", type=int, default=None, metavar="N",
                   help="exactly N Analyzer replicas (default: autoscale between cluster.min_replicas and max_replicas)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sentistream",
        description="Real-time multimodal sentiment analysis of live video (CLIP-CA-MSA + streaming Whisper).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="analyse a camera, file, URL or the bundled demo; events as JSON Lines")
    run.add_argument("--source", action="append", default=None, metavar="SRC",
                     help="camera index (0), file, URL (rtsp://...) or 'demo' (repeatable with --ray)")
    run.add_argument("--sources", metavar="FILE", help="with --ray: one source per line (# comments allowed)")
    run.add_argument("--output", metavar="PATH", help="write events here (default: stdout)")
    run.add_argument("--overlay", metavar="OUT.mp4", help="write the video with the estimate drawn on it")
    run.add_argument("--realtime", action="store_true", help="pace files at native rate with live semantics")
    run.add_argument("--show", action="store_true", help="show the overlay in a window (needs a display)")
    run.add_argument("--report", metavar="OUT.html", help="write a visual HTML report at the end")
    _ray_flags(run, "run every source on a Ray cluster (stream/cluster): one JSONL, events carry `stream`")
    _common(run)

    serve = sub.add_parser("serve", help="WebRTC server with a browser page for video-call overlays")
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8080)")
    serve.add_argument("--max-clients", type=int, default=None, help="concurrent connections (default 8)")
    token = serve.add_mutually_exclusive_group()
    token.add_argument("--token", default=None,
                       help="require 'Authorization: Bearer TOKEN' on offers and /metrics (visible in ps: "
                            "prefer --token-file or SENTISTREAM_TOKEN)")
    token.add_argument("--token-file", default=None, metavar="PATH", help="read the token from this file (first line)")
    _ray_flags(serve, "serve from Analyzer replicas on a Ray cluster (docs/scale-out.md)")
    _common(serve)

    prof = sub.add_parser("profile", help="run N concurrent streams through the real pipeline and report latencies")
    prof.add_argument("--source", required=True, metavar="SRC")
    prof.add_argument("--streams", type=int, default=1)
    prof.add_argument("--realtime", action="store_true")
    prof.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds of media")
    prof.add_argument("--json", metavar="OUT", help="write the report as JSON")
    prof.add_argument("--plot", metavar="OUT.png", help="draw latency histograms")
    _common(prof)

    train = sub.add_parser("train", help="train the fusion model on a data set")
    train.add_argument("--data", required=True, metavar="PATH", help="manifest .jsonl, MVSA or CH-SIMS directory")
    train.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory to write")
    _common(train)

    ev = sub.add_parser("evaluate", help="evaluate a checkpoint on a data set's test split")
    ev.add_argument("--checkpoint", required=True, metavar="DIR")
    ev.add_argument("--data", required=True, metavar="PATH")
    ev.add_argument("--ablations", action="store_true", help="also train and score each ablation with the same recipe")
    ev.add_argument("--json", metavar="OUT", help="write metrics as JSON")
    _common(ev)
    rep = sub.add_parser("report", help="a self-contained HTML report (timeline, transcript, latency) of an events file")
    rep.add_argument("events", metavar="EVENTS.jsonl")
    rep.add_argument("--out", metavar="OUT.html", help="default: EVENTS.html next to the events file")
    rep.add_argument("--png", metavar="OUT.png", help="also write the timeline as a PNG")
    _common(rep)
    return parser


def _resolve(command: str) -> Callable[[AppConfig, argparse.Namespace], int]:
    """Commands are imported on use: `sentistream run` never loads the server or the trainer."""
    module_name, func = COMMANDS[command].split(":")
    return getattr(importlib.import_module(module_name), func)


def _config_path(args: argparse.Namespace) -> Optional[str]:
    if args.config:
        return args.config
    default = default_config_path()
    return str(default) if default.is_file() else None


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(_config_path(args), args.overrides)
        return int(_resolve(args.command)(cfg, args) or 0)
    except UserError as exc:  # ConfigError and WeightsUnavailable included, each with its exit code
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed early (e.g. `| head`): not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
