"""The `Analyzer` Ray Serve deployment: one replica owns what one `sentistream serve` process owns
(the engine, Whisper, the sessions and the WebRTC peer connections of the streams placed on it).

A replica answers an offer's SDP and keeps the RTCPeerConnection in its own process, so media flows
browser <-> replica directly (ICE host candidates of the replica's node). It reports its load to
Serve (`record_routing_stats`: placement, /healthz, /metrics) and its streams to the autoscaler
(`record_autoscaling_stats`)."""
from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from aiortc import RTCSessionDescription
from prometheus_client import generate_latest

from ..api import stream_events
from ..config import AppConfig
from ..runtime import Runtime, build_runtime
from ..server import ConnectionManager, OfferError
from ..server.manager import SlotRefused
from ..sources import open_source

log = logging.getLogger(__name__)

UNLIMITED_PER_ADDRESS = 1 << 20  # the ingress applies server.max_clients_per_address cluster-wide


@dataclass
class SourceSlot:
    """A file/URL/camera source running on this replica (`run --ray`): it holds a slot like a call."""

    name: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    address: str = ""
    live: bool = True

    async def close(self, reason: str = "closed") -> None:  # ends with its generator
        return None


def replica_config(cfg: AppConfig) -> AppConfig:
    """The replica's own slot limit is cluster.max_streams_per_replica."""
    server = cfg.server.model_copy(update={"max_clients": cfg.cluster.max_streams_per_replica,
                                           "max_clients_per_address": UNLIMITED_PER_ADDRESS})
    return cfg.model_copy(update={"server": server})


class Analyzer:
    async def __init__(self, cfg_data: dict[str, Any]) -> None:
        import ray
        from ray import serve

        self.cfg = replica_config(AppConfig.model_validate(cfg_data))
        self.capacity = self.cfg.cluster.max_streams_per_replica
        self.id = serve.get_replica_context().replica_id.unique_id
        self.node = ray.get_runtime_context().get_node_id()
        self.node_ip = ray.util.get_node_ip_address()
        self.pid = os.getpid()
        self.runtime: Runtime = await build_runtime(self.cfg)
        self.device = str(self.runtime.engine.model.device)
        self.manager = ConnectionManager(self.runtime, self.cfg)
        log.info("analyzer replica %s (pid %d) on node %s: %d streams on %s", self.id, self.pid, self.node_ip,
                 self.capacity, self.device)

    # ------------------------------------------------------------------ load
    async def record_routing_stats(self) -> dict[str, Any]:
        """Read by Serve every cluster.stats_period_s: placement, /healthz replicas, /metrics.
        Async: runs on the replica's event loop, where the connections change (no cross-thread reads)."""
        addresses: dict[str, int] = {}
        for slot in list(self.manager.connections.values()):
            addresses[slot.address] = addresses.get(slot.address, 0) + 1
        return {"id": self.id, "node": self.node_ip, "node_id": self.node, "pid": self.pid,
                "streams": len(self.manager.connections), "capacity": self.capacity, "device": self.device,
                "addresses": addresses, "at": time.time(), "metrics": generate_latest().decode("utf-8")}

    async def record_autoscaling_stats(self) -> dict[str, float]:
        return {"streams": float(len(self.manager.connections)), "capacity": float(self.capacity)}

    async def info(self) -> dict[str, Any]:
        return {"id": self.id, "pid": self.pid, "node": self.node_ip}

    # ------------------------------------------------------------------ calls
    async def offer(self, sdp: str, address: str) -> dict[str, Any]:
        """One WebRTC call: {"sdp", "type", "replica"} or {"refused": [status, reason, message]} or {"error"}."""
        if (refused := self.manager.refusal(address)) is not None:
            return {"refused": list(refused)}
        try:
            answer = await self.manager.open(RTCSessionDescription(sdp=sdp, type="offer"), address)
        except OfferError as exc:
            return {"error": str(exc)}
        return {"sdp": answer.sdp, "type": answer.type, "replica": self.id}

    # ------------------------------------------------------------------ sources
    async def analyze_source(self, source: str, name: str, realtime: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Every event of one source (file, URL, camera on this node), as `run` writes them."""
        if (refused := self.manager.refusal("")) is not None:
            raise SlotRefused(*refused)
        slot = SourceSlot(name)
        self.manager.take(slot)
        try:
            media = open_source(source, realtime=realtime)
            info = await asyncio.to_thread(media.open)
            try:
                async for event in stream_events(self.runtime, media, info, name=name):
                    yield event
            finally:
                media.close()
        finally:
            self.manager.forget(slot)

    async def __del__(self) -> None:
        await self.manager.close_all()
        self.manager.shutdown()
        await self.runtime.close()
