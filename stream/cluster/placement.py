"""Where a new stream goes, and how many replicas the streams in use want: pure functions of the
replicas' reported load (no Ray here; the Ray Serve router and autoscaling policy call them)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

# The Analyzer routers (stream.cluster.router) of this process, newest last: the ingress reads the
# replicas' reports from them. Here, not in router.py: Serve pickles the router's module by value.
ROUTERS: list[Any] = []


def current_router() -> Optional[Any]:
    return ROUTERS[-1] if ROUTERS else None


@dataclass(frozen=True)
class ReplicaLoad:
    """What one Analyzer replica reports (`Analyzer.record_routing_stats`)."""

    id: str
    node: str = ""
    streams: int = 0  # slots in use: calls (pending + live) and sources
    capacity: int = 1  # cluster.max_streams_per_replica
    device: str = "cpu"
    at: float = 0.0  # the replica's clock when it counted
    pid: int = 0  # the replica's process (operators: logs, py-spy, a kill to test failover)

    @classmethod
    def from_stats(cls, replica_id: str, stats: Optional[Mapping[str, Any]]) -> "ReplicaLoad":
        """A replica that has not reported yet counts as empty (it was just started)."""
        stats = stats or {}
        return cls(id=replica_id, node=str(stats.get("node", "")), streams=int(stats.get("streams", 0)),
                   capacity=max(1, int(stats.get("capacity", 1))), device=str(stats.get("device", "cpu")),
                   at=float(stats.get("at", 0.0)), pid=int(stats.get("pid", 0)))

    def free(self, placed_since: int = 0) -> int:
        return self.capacity - self.streams - placed_since

    def as_health(self) -> dict[str, Any]:
        return {"id": self.id, "node": self.node, "streams": self.streams, "capacity": self.capacity, "device": self.device,
                "pid": self.pid}


def rank_by_free_capacity(loads: Sequence[ReplicaLoad], placed_since: Mapping[str, int] | None = None) -> list[list[str]]:
    """Replica ids in ranks, most free slots first (ties share a rank, so Serve picks among them).
    `placed_since`: streams sent to a replica after its last report (the report does not show them
    yet), so a burst of offers spreads instead of piling onto the replica that looked emptiest.
    Full replicas come last: if every one is full, the chosen replica refuses with 503 itself."""
    placed_since = placed_since or {}
    free = {load.id: load.free(placed_since.get(load.id, 0)) for load in loads}
    ranks: list[list[str]] = []
    for value in sorted(set(free.values()), reverse=True):
        ranks.append(sorted(i for i, f in free.items() if f == value))
    return ranks


def replicas_wanted(streams: float, capacity: int, min_replicas: int, max_replicas: int, headroom: int = 1) -> int:
    """Replicas for `streams` in use with `headroom` free slots for the next offers, within bounds."""
    wanted = math.ceil((max(0.0, streams) + headroom) / max(1, capacity))
    return max(min_replicas, min(max_replicas, wanted))


def autoscale_on_streams(ctx: Any) -> tuple[int, dict[str, Any]]:
    """Ray Serve custom autoscaling policy (AutoscalingPolicy.policy_function): scale on the streams
    each replica holds (`Analyzer.record_autoscaling_stats`), not on ongoing requests (a call is one
    short offer request, then a long-lived peer connection Serve does not see)."""
    metrics = ctx.aggregated_metrics or {}
    streams = sum((metrics.get("streams") or {}).values())
    capacities = list((metrics.get("capacity") or {}).values())
    capacity = int(max(capacities)) if capacities else 1
    wanted = replicas_wanted(streams, capacity, ctx.capacity_adjusted_min_replicas, ctx.capacity_adjusted_max_replicas)
    return wanted, {}
