"""`sentistream profile`: N concurrent streams through the real pipeline; table, JSON, histograms."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from models.errors import UserError

from ..config import AppConfig
from ..profile import format_table, plot_histograms, run_profile
from .outputs import check_distinct, check_output, local_source


def _summary_line(report: dict[str, Any]) -> str:
    return (f"{report['streams']} stream(s), {report['mode']}, {report['engine']} engine on {report['device']}: "
            f"realtime x{report['realtime_factor']}, frames in {report['frames_in']}, processed "
            f"{report['frames_processed']}, dropped {report['frames_dropped']}, peak RSS {report['peak_rss_mb']} MB")


def main(cfg: AppConfig, args: argparse.Namespace) -> int:
    if args.json:
        check_output(args.json, "--json")
    if args.plot:
        check_output(args.plot, "--plot", suffixes=(".png",))
    check_distinct({"--source": local_source(args.source), "--config": getattr(args, "config", None)},
                   {"--json": args.json, "--plot": args.plot})
    result = asyncio.run(run_profile(cfg, args.source, streams=args.streams, realtime=args.realtime,
                                     duration=args.duration))
    report = result.report
    print(format_table(report), flush=True)
    print(_summary_line(report), file=sys.stderr)
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot write the report to {args.json}: {exc.strerror}") from None
    if args.plot:
        title = f"{args.source}: {report['streams']} stream(s), {report['mode']}, {report['device']}"
        try:
            plot_histograms(result.stats, args.plot, title)
        except OSError as exc:
            raise UserError(f"cannot write the plot to {args.plot}: {exc.strerror}") from None
        except ValueError as exc:  # matplotlib: unknown image format from the file name
            raise UserError(f"cannot write the plot to {args.plot}: {exc} (use .png)") from None
    return 2 if report["errors"] else 0
