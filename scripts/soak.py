"""Soak `sentistream serve`: bounded connect/stream/close cycles over loopback, server resources over time.

The server runs in this process (the app `serve` runs, on the tiny random CLIP by default) so its
asyncio tasks can be counted; the WebRTC clients run in a child process (`--client`), so their own
allocations do not blur the server's RSS. Every `--every` cycles the server records RSS (as is,
and after `malloc_trim(0)` to tell allocator retention from live memory), open fds, threads,
asyncio tasks, live Python objects (gc) and, with `--tracemalloc`, the top allocation sites that
grew since the previous sample. Writes JSON (and a PNG plot with `--plot`).

    python -m scripts.soak --cycles 500 --every 25 --json soak.json --plot soak.png
    MALLOC_ARENA_MAX=2 python -m scripts.soak ...   # fewer glibc arenas: less retained heap
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import gc
import json
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny-test.yaml"


# ------------------------------------------------------------------------------------------ client side
async def _client(base: str, cycles: int, seconds: float, every: int) -> None:
    import aiohttp
    import av
    import numpy as np
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack

    class Flat(VideoStreamTrack):
        async def recv(self) -> av.VideoFrame:
            pts, time_base = await self.next_timestamp()
            frame = av.VideoFrame.from_ndarray(np.full((240, 320, 3), 100, np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, time_base
            return frame

    async def read(track: Any, got: asyncio.Event) -> None:
        try:
            while True:
                await track.recv()
                got.set()
        except MediaStreamError:
            pass

    for i in range(cycles):
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        tracks = [Flat(), AudioStreamTrack()]
        for t in tracks:
            pc.addTrack(t)
        pc.createDataChannel("events")
        got: asyncio.Event = asyncio.Event()
        readers: list[asyncio.Future] = []

        def on_track(track: Any, got: asyncio.Event = got, readers: list = readers) -> None:
            readers.append(asyncio.ensure_future(read(track, got)))

        pc.on("track", on_track)
        await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession() as http:
            async with http.post(base + "offer", json={"sdp": pc.localDescription.sdp, "type": "offer"}) as r:
                answer = await r.json()
                if r.status != 200:
                    raise SystemExit(f"cycle {i}: offer refused {r.status}: {answer}")
        await pc.setRemoteDescription(RTCSessionDescription(**answer))
        await asyncio.wait_for(got.wait(), 30)  # the overlay comes back
        await asyncio.sleep(seconds)  # stream a little
        await pc.close()
        for t in tracks:
            t.stop()
        for r_ in readers:
            r_.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        print(f"cycle {i + 1}", flush=True)
        if (i + 1) % every == 0:  # wait while the server samples: each sample is at its cycle
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


# ------------------------------------------------------------------------------------------ server side
def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _malloc_trim() -> bool:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


def _sample(cycle: int, previous_types: Optional[collections.Counter], previous_trace: Any, top: int) -> tuple[dict, Any, Any]:
    gc.collect()
    rss = _rss_mb()
    trimmed = _rss_mb() if _malloc_trim() else None
    types = collections.Counter(type(o).__name__ for o in gc.get_objects())
    row: dict[str, Any] = {
        "cycle": cycle, "rss_mb": round(rss, 1), "rss_after_trim_mb": round(trimmed, 1) if trimmed else None,
        "fds": len(os.listdir("/proc/self/fd")), "threads": threading.active_count(),
        "tasks": len(asyncio.all_tasks()), "gc_objects": sum(types.values()),
    }
    if previous_types is not None:
        growth = (types - previous_types).most_common(top)
        row["gc_growth"] = {k: v for k, v in growth}
    trace = None
    if tracemalloc.is_tracing():
        trace = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        row["traced_mb"] = round(tracemalloc.get_traced_memory()[0] / 2**20, 2)
        if previous_trace is not None:
            stats = trace.compare_to(previous_trace, "lineno")[:top]
            row["trace_growth"] = [f"{s.size_diff / 1024:+.0f} KiB {s.traceback[0].filename}:{s.traceback[0].lineno}" for s in stats]
    return row, types, trace


async def _serve_and_watch(args: argparse.Namespace) -> dict:
    from aiohttp.test_utils import TestServer

    from stream.config import load_config
    from stream.runtime import build_runtime
    from stream.server import create_app

    cfg = load_config(args.config, ["server.max_clients_per_address=64", *args.set])
    runtime = await build_runtime(cfg)
    server = TestServer(create_app(runtime, cfg), host="127.0.0.1")  # loopback only
    await server.start_server()
    base = str(server.make_url("/"))
    if args.tracemalloc:
        tracemalloc.start(1)
    rows: list[dict] = []
    types, trace = None, None
    row, types, trace = _sample(0, None, None, args.top)
    rows.append(row)
    print(json.dumps(row), file=sys.stderr, flush=True)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scripts.soak", "--client", base, "--cycles", str(args.cycles), "--seconds", str(args.seconds),
        "--every", str(args.every), stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.PIPE, cwd=ROOT)
    started = time.monotonic()
    assert child.stdout is not None and child.stdin is not None
    done = 0
    try:
        while True:
            line = await child.stdout.readline()
            if not line:
                break
            done = int(line.split()[1])
            if done % args.every == 0:
                while runtime_connections(server.app):  # the server side of the last cycle has closed
                    await asyncio.sleep(0.05)
                row, types, trace = _sample(done, types, trace, args.top)
                row["elapsed_s"] = round(time.monotonic() - started, 1)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                child.stdin.write(b"go\n")
                await child.stdin.drain()
    finally:
        rc = await child.wait()
        await server.close()
        await runtime.close()
    if rc != 0 or done < args.cycles:
        raise SystemExit(f"client stopped after {done} cycles (exit {rc})")
    return {"cycles": args.cycles, "every": args.every, "seconds_per_call": args.seconds,
            "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX"), "config": str(args.config), "samples": rows}


def runtime_connections(app: Any) -> int:
    from stream.server.app import MANAGER

    return len(app[MANAGER].connections)


def _growth(report: dict, start_cycle: int) -> dict:
    rows = report["samples"]
    first = min((r for r in rows if r["cycle"] >= start_cycle), key=lambda r: r["cycle"], default=rows[0])
    last = rows[-1]
    out = {"from_cycle": first["cycle"], "to_cycle": last["cycle"]}
    for k in ("rss_mb", "rss_after_trim_mb", "fds", "threads", "tasks", "gc_objects"):
        if first.get(k) is not None and last.get(k) is not None:
            out[k] = round(last[k] - first[k], 1)
    return out


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["samples"]
    x = [r["cycle"] for r in rows]
    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    a.plot(x, [r["rss_mb"] for r in rows], "o-", label="RSS")
    if all(r["rss_after_trim_mb"] is not None for r in rows):
        a.plot(x, [r["rss_after_trim_mb"] for r in rows], "s--", label="RSS after malloc_trim")
    a.set_ylabel("MB")
    a.legend()
    a.set_title(f"sentistream serve soak: {report['cycles']} connect/stream/close cycles")
    for key in ("fds", "threads", "tasks"):
        b.plot(x, [r[key] for r in rows], "o-", label=key)
    b.set_xlabel("cycle")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--every", type=int, default=10, help="sample server resources every N cycles")
    ap.add_argument("--seconds", type=float, default=1.0, help="seconds each call streams after the overlay arrives")
    ap.add_argument("--config", default=str(TINY))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--growth-from", type=int, default=None, help="report growth from this cycle (default: --every * 2)")
    ap.add_argument("--tracemalloc", action="store_true", help="trace Python allocations (slower): top growing sites")
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path)
    ap.add_argument("--client", metavar="BASE_URL", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cycles < 1 or args.cycles > 100_000 or args.every < 1:
        ap.error("--cycles must be 1..100000 and --every >= 1")
    if args.client:
        asyncio.run(_client(args.client, args.cycles, args.seconds, args.every))
        return 0
    report = asyncio.run(_serve_and_watch(args))
    report["growth"] = _growth(report, args.growth_from if args.growth_from is not None else 2 * args.every)
    print(json.dumps(report["growth"]))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if args.plot:
        _plot(report, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
