"""`sentistream run --ray`: every source on the cluster's Analyzer replicas (placed like calls:
the most free capacity first), all events into one JSONL (each carries its `stream`)."""
from __future__ import annotations

import asyncio
import sys
from typing import Any, Optional

from ..config import AppConfig
from ..events import FanoutSink, JsonlSink, make_event
from ..server.manager import SlotRefused
from . import deploy

RUN_APP_NAME = "sentistream-run"  # not "sentistream": a `serve --ray` on the same cluster keeps running


def stream_names(sources: list[str]) -> list[str]:
    """Each source's `stream` name: the source as given, made unique (`a.mp4`, `a.mp4#2`)."""
    names: list[str] = []
    for source in sources:
        name, n = source, 1
        while name in names:
            n += 1
            name = f"{source}#{n}"
        names.append(name)
    return names


PLACE_ATTEMPTS = 10  # a source refused by a full replica is placed again (the load view catches up)
PLACE_RETRY_S = 1.0


async def _one(handle: Any, source: str, name: str, realtime: bool, sink: FanoutSink) -> bool:
    """One source's events into the sink; False when it failed (an `error` event says why)."""
    from ray.exceptions import RayError

    for attempt in range(PLACE_ATTEMPTS):
        started = False
        try:
            async for event in handle.options(stream=True).analyze_source.remote(source, name, realtime):
                started = True
                sink.emit(event)
                if event.get("type") == "error":
                    print(f"error: {name}: {event.get('message')}", file=sys.stderr)
            return True
        except (RayError, SlotRefused) as exc:
            cause = getattr(exc, "cause", None) or exc  # the replica's own exception (UserError: a bad source)
            if isinstance(cause, SlotRefused) and not started and attempt + 1 < PLACE_ATTEMPTS:
                await asyncio.sleep(PLACE_RETRY_S)
                continue
            message = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
            if isinstance(cause, SlotRefused):
                message = (f"{message} (every replica stayed full for {PLACE_ATTEMPTS * PLACE_RETRY_S:g} s: "
                           "raise --replicas or cluster.max_streams_per_replica)")
            sink.emit(make_event("error", name, 0.0, message=message))
            print(f"error: {name}: {message}", file=sys.stderr)
            return False
    return False


async def _run_all(handle: Any, sources: list[str], realtime: bool, sink: FanoutSink) -> int:
    names = stream_names(sources)
    results = await asyncio.gather(*(_one(handle, s, n, realtime, sink) for s, n in zip(sources, names)))
    return 0 if all(results) else 2


def run_on_cluster(cfg: AppConfig, sources: list[str], *, output: Optional[str], address: Optional[str],
                   replicas: Optional[int], realtime: bool) -> int:
    started = deploy.connect(address, cfg, replicas)
    sink = FanoutSink(JsonlSink(output))
    try:
        handle = deploy.deploy(cfg, replicas, with_ingress=False, name=RUN_APP_NAME)
        print(f"sentistream: {len(sources)} source(s) on the Ray cluster", file=sys.stderr, flush=True)
        return asyncio.run(_run_all(handle, sources, realtime, sink))
    finally:  # Ctrl-C too: the replicas' sessions end with the app
        sink.close()
        deploy.shutdown(RUN_APP_NAME, local=started)
