"""The Analyzer deployment's Ray Serve request router: each offer or source goes to the replica
with the most free capacity, from the load every replica reports (`record_routing_stats`, polled by
Serve's controller every `cluster.stats_period_s` and broadcast to the handles).

The router lives in the process holding the handle (the ingress, or `run --ray`'s driver); it
registers itself in `placement.ROUTERS` so that process can read the same replica view for /healthz
and /metrics without asking the replicas again. Serve pickles this module by value (its globals
travel with the class), so the registry lives in `placement`, which is imported by reference."""
from __future__ import annotations

import collections
import time
from typing import Any, List, Optional

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

from . import placement
from .placement import ReplicaLoad, rank_by_free_capacity

PLACING_METHODS = frozenset({"offer", "analyze_source"})  # calls that take a slot on the replica
PLACED_MEMORY_S = 30.0  # placements older than this are in any report by now


class MostFreeCapacityRouter(FIFOMixin, RequestRouter):
    def initialize_state(self, **kwargs: Any) -> None:
        self._placed: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        placement.ROUTERS.append(self)

    def loads(self) -> list[ReplicaLoad]:
        """Every running replica's last report (empty for one that has not reported yet)."""
        return [ReplicaLoad.from_stats(r.replica_id.unique_id, r.routing_stats) for r in list(self.curr_replicas.values())]

    def stats(self) -> dict[str, dict[str, Any]]:
        return {r.replica_id.unique_id: dict(r.routing_stats or {}) for r in list(self.curr_replicas.values())}

    def placed_since(self, load: ReplicaLoad) -> int:
        """Streams sent to this replica after its last report."""
        placed = self._placed.get(load.id)
        if not placed:
            return 0
        while placed and placed[0] < time.time() - PLACED_MEMORY_S:
            placed.popleft()
        return sum(1 for t in placed if t > load.at)

    async def choose_replicas(self, candidate_replicas: List[RunningReplica],
                              pending_request: Optional[PendingRequest] = None) -> List[List[RunningReplica]]:
        """One replica per rank, most free first (ties by id): Serve takes the first rank's replica
        unless its request queue is full. The pick is counted at once as a placement, because
        concurrent offers are routed before any of them is in a report (or even routed)."""
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        loads = [ReplicaLoad.from_stats(i, r.routing_stats) for i, r in by_id.items()]
        ranks = [i for rank in rank_by_free_capacity(loads, {load.id: self.placed_since(load) for load in loads})
                 for i in rank]
        if ranks and (pending_request is None or pending_request.metadata.call_method in PLACING_METHODS):
            self._placed[ranks[0]].append(time.time())
        return [[by_id[i]] for i in ranks]
