"""`sentistream report EVENTS.jsonl`: a self-contained HTML report (and optionally the timeline PNG).

The events file is read once, line by line, into bounded aggregates (stream.report): memory does
not grow with the file. The outputs are checked before it is read, and neither may be the events
file (or the config) itself."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import AppConfig
from ..report import EventReader, write_report
from .outputs import check_distinct, check_output


def main(cfg: AppConfig, args: argparse.Namespace) -> int:
    events = EventReader(args.events)
    events.check()
    out = args.out or str(Path(args.events).with_suffix(".html"))
    check_output(out, "--out")
    if args.png:
        check_output(args.png, "--png")
    check_distinct({"EVENTS.jsonl": args.events, "--config": getattr(args, "config", None)}, {"--out": out, "--png": args.png})
    write_report(events, out, args.png, title=f"sentistream report: {Path(args.events).name}")
    print(f"report written to {out}" + (f", timeline to {args.png}" if args.png else ""), file=sys.stderr)
    return 0
