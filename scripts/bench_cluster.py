"""Scale-out numbers (issue 13, docs/scale-out.md): the overhead the Ray Serve ingress adds to an
offer (p50/p95 ms of POST /offer vs plain `serve`), and frame->estimate p95 of 2 paced (realtime)
file streams on 1 vs 2 Analyzer replicas (`run --ray` placement).

    python scripts/bench_cluster.py --json docs/results/bench-cluster.json            # tiny CLIP (fast)
    python scripts/bench_cluster.py --config configs/default.yaml --set vision.pretrained=random --json OUT

Starts a local Ray with every CPU (or --cpus); replicas get cpus/2 each. Note the machine load:
on a shared 2-core box these are provisional.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.media import make_video  # noqa: E402
from stream.config import load_config  # noqa: E402


async def offer_times(base: str, n: int) -> list[float]:
    """POST /offer round trips (ms) of n aiortc peers, one after another (each closed after its answer)."""
    times = []
    async with aiohttp.ClientSession() as http:
        for _ in range(n):
            pc = RTCPeerConnection()
            pc.addTrack(VideoStreamTrack())
            pc.createDataChannel("events")
            await pc.setLocalDescription(await pc.createOffer())
            body = {"sdp": pc.localDescription.sdp, "type": "offer"}
            t0 = time.perf_counter()
            async with http.post(base + "offer", json=body) as r:
                answer = await r.json()
                assert r.status == 200, answer
            times.append((time.perf_counter() - t0) * 1000.0)
            await pc.setRemoteDescription(RTCSessionDescription(**answer))
            await pc.close()
            await asyncio.sleep(0.3)
    return times


def pct(values: list[float]) -> dict[str, float]:
    p50, p95 = np.percentile(values, [50, 95])
    return {"n": len(values), "p50_ms": round(float(p50), 1), "p95_ms": round(float(p95), 1)}


async def plain_offers(cfg, n: int) -> list[float]:
    from aiohttp import web

    from stream.runtime import build_runtime
    from stream.server import create_app

    runtime = await build_runtime(cfg)
    runner = web.AppRunner(create_app(runtime, cfg))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        return await offer_times(f"http://127.0.0.1:{runner.addresses[0][1]}/", n)
    finally:
        await runner.cleanup()
        await runtime.close()


def f2e_p95(events_path: Path) -> dict[str, float]:
    out = {}
    for line in events_path.read_text().splitlines():
        e = json.loads(line)
        if e["type"] == "summary":
            out[e["stream"]] = e["latency"].get("frame_to_estimate", {}).get("p95_ms")
    return out


def placements() -> dict[str, int]:
    """Streams this process's Analyzer router has placed, per replica id (the last 30 s)."""
    from stream.cluster.placement import current_router

    router = current_router()
    return {rid: len(times) for rid, times in router._placed.items()} if router is not None else {}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny-test.yaml", help="relative to the repository root")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--offers", type=int, default=20)
    p.add_argument("--seconds", type=float, default=20.0, help="length of each paced stream")
    p.add_argument("--cpus", type=int, default=os.cpu_count())
    p.add_argument("--json", metavar="OUT")
    args = p.parse_args()
    import ray

    from stream.cluster import deploy
    from stream.cluster.sources import run_on_cluster

    cfg = load_config(ROOT / args.config, [*args.overrides, "server.port=0", "server.max_clients=64",
                                    "server.max_clients_per_address=64", "cluster.max_streams_per_replica=32",
                                    f"cluster.cpus_per_replica={args.cpus / 2}"])
    report: dict = {"config": args.config, "overrides": args.overrides, "cpus": args.cpus, "load_before": loadavg()}
    report["offer_plain"] = pct(asyncio.run(plain_offers(cfg, args.offers)))
    print("plain serve offer:", report["offer_plain"], file=sys.stderr)

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        handle = deploy.deploy(cfg, replicas=2)
        where = handle.address.remote().result()
        report["offer_cluster"] = pct(asyncio.run(offer_times(f"http://127.0.0.1:{where['port']}/", args.offers)))
        print("cluster ingress offer:", report["offer_cluster"], file=sys.stderr)
        from ray import serve

        serve.delete(deploy.APP_NAME)
        with tempfile.TemporaryDirectory() as tmp:
            clip = str(make_video(Path(tmp) / "paced.mp4", args.seconds, size=(640, 480), fps=30))
            for replicas in (1, 2):
                out = Path(tmp) / f"events-{replicas}.jsonl"
                before = placements()
                status = run_on_cluster(cfg, [clip, clip], output=str(out), address=None, replicas=replicas, realtime=True)
                after = placements()  # the process's router for this deployment is reused across runs
                placed = {rid: n - before.get(rid, 0) for rid, n in after.items() if n > before.get(rid, 0)}
                report[f"f2e_p95_ms_{replicas}_replica"] = {"per_stream": f2e_p95(out), "status": status,
                                                            "placed_per_replica": placed}
                print(f"2 paced streams on {replicas} replica(s):", report[f"f2e_p95_ms_{replicas}_replica"], file=sys.stderr)
    finally:
        deploy.shutdown(deploy.APP_NAME, local=True)
    report["load_after"] = loadavg()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
