"""The cluster's HTTP front: an `Ingress` Ray Serve deployment running the same aiohttp app as
`sentistream serve` (stream.server.app.base_app: JSON errors, Host/Origin guard, token, page,
POST /offer and its refusal rule), with offers placed on the Analyzer replicas and /healthz and
/metrics built from the replicas' load reports.

It serves HTTP itself (Serve's own HTTP proxy is ASGI; ours is aiohttp, and one definition of the
rules matters more), on `server.host:server.port` of the node it runs on."""
from __future__ import annotations

import collections
import logging
import time
from typing import Any, Optional

from aiohttp import web
from aiortc import RTCSessionDescription
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..config import AppConfig
from ..server import OfferError
from ..server.app import CONFIG, STARTED, base_app, unauthorized
from ..server.auth import authorized
from ..server.manager import SlotRefused, per_address_limit, slot_refusal
from .metrics import merge_metrics
from .placement import ReplicaLoad, current_router

log = logging.getLogger(__name__)

OFFER_ATTEMPTS = 2  # a replica that died between its last report and the offer: one more try elsewhere
RECENT_S = 30.0


class ClusterOffers:
    """POST /offer's target in cluster mode: the slot rule over every replica, then the offer to
    the replica the router picks (the most free capacity)."""

    def __init__(self, analyzer: Any, cfg: AppConfig, replicas: Optional[int]) -> None:
        self.analyzer = analyzer  # DeploymentHandle of Analyzer
        self.cfg = cfg
        self.replicas = replicas  # fixed count, or None: autoscaling up to cluster.max_replicas
        self.recent: collections.deque[tuple[float, str, str]] = collections.deque(maxlen=4096)  # (t, address, replica)

    def loads(self) -> list[ReplicaLoad]:
        router = current_router()
        return router.loads() if router is not None else []

    def stats(self) -> dict[str, dict[str, Any]]:
        router = current_router()
        return router.stats() if router is not None else {}

    @property
    def capacity(self) -> int:
        """Slots the cluster can offer: replicas x streams each (autoscaling may still add replicas)."""
        count = self.replicas or self.cfg.cluster.max_replicas
        return count * self.cfg.cluster.max_streams_per_replica

    def refusal(self, address: str) -> Optional[tuple[int, str, str]]:
        stats = self.stats()
        now = time.time()
        in_use, from_address = 0, 0
        for replica_id, s in stats.items():
            seen = float(s.get("at", 0.0))
            in_use += int(s.get("streams", 0))
            from_address += int((s.get("addresses") or {}).get(address, 0))
            for t, addr, rid in self.recent:  # placed after the replica's last report
                if rid == replica_id and t > seen and now - t < RECENT_S:
                    in_use += 1
                    from_address += addr == address
        return slot_refusal(in_use, self.capacity, from_address, address, self.cfg.server)

    async def open(self, offer: RTCSessionDescription, address: str = "") -> RTCSessionDescription:
        from ray.exceptions import RayError

        for attempt in range(OFFER_ATTEMPTS):
            try:
                result = await self.analyzer.offer.remote(offer.sdp, address)
                break
            except RayError as exc:  # the replica died or is unreachable: Serve retries elsewhere next time
                log.warning("offer to a replica failed (attempt %d): %s", attempt + 1, exc)
        else:
            raise SlotRefused(503, "unavailable", "no analyzer replica answered: try again in a few seconds")
        if "refused" in result:
            raise SlotRefused(*result["refused"])
        if "error" in result:
            raise OfferError(result["error"])
        self.recent.append((time.time(), address, result["replica"]))
        return RTCSessionDescription(sdp=result["sdp"], type=result["type"])


OFFERS: web.AppKey[ClusterOffers] = web.AppKey("cluster_offers", ClusterOffers)


async def healthz(request: web.Request) -> web.Response:
    """Liveness for anyone; with the token (when set): the replicas, one {id, node, streams, capacity, device} each."""
    if not authorized(request, request.app[CONFIG].server.token):
        return web.json_response({"status": "ok"})
    offers = request.app[OFFERS]
    replicas = [load.as_health() for load in offers.loads()]
    return web.json_response({
        "status": "ok",
        "connections": sum(r["streams"] for r in replicas),
        "max_clients": offers.capacity,
        "max_clients_per_address": per_address_limit(request.app[CONFIG].server, offers.capacity),
        "replicas": sorted(replicas, key=lambda r: r["id"]),
        "uptime_s": round(time.monotonic() - request.app[STARTED], 3),
    })


async def metrics(request: web.Request) -> web.Response:
    if not authorized(request, request.app[CONFIG].server.token):
        return unauthorized()
    texts = {rid: s.get("metrics", "") for rid, s in request.app[OFFERS].stats().items()}
    texts["ingress"] = generate_latest().decode("utf-8")
    return web.Response(body=merge_metrics(texts), headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_ingress_app(offers: ClusterOffers, cfg: AppConfig) -> web.Application:
    app = base_app(cfg, offers)
    app[OFFERS] = offers
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


class Ingress:
    """Ray Serve deployment (one replica): the aiohttp app above, listening on server.host:port."""

    async def __init__(self, analyzer: Any, cfg_data: dict[str, Any], replicas: Optional[int] = None) -> None:
        import ray

        cfg = AppConfig.model_validate(cfg_data)
        self.offers = ClusterOffers(analyzer, cfg, replicas)
        await analyzer.info.remote()  # creates this process's router (and so its replica view)
        self.runner = web.AppRunner(create_ingress_app(self.offers, cfg), access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, cfg.server.host, cfg.server.port).start()
        self.host = cfg.server.host
        self.port = self.runner.addresses[0][1] if self.runner.addresses else cfg.server.port
        self.node_ip = ray.util.get_node_ip_address()

    def address(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "node_ip": self.node_ip}

    def replicas(self) -> list[dict[str, Any]]:
        return [load.as_health() for load in self.offers.loads()]

    async def __del__(self) -> None:
        await self.runner.cleanup()
