"""`sentistream report EVENTS.jsonl`: a self-contained HTML report (and optionally the timeline PNG)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import AppConfig
from ..report import load_events, write_report


def main(cfg: AppConfig, args: argparse.Namespace) -> int:
    events = load_events(args.events)
    out = args.out or str(Path(args.events).with_suffix(".html"))
    write_report(events, out, args.png, title=f"sentistream report: {Path(args.events).name}")
    print(f"report written to {out}" + (f", timeline to {args.png}" if args.png else ""), file=sys.stderr)
    return 0
