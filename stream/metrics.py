"""Every Prometheus series of the process and the latency bookkeeping behind `profile` and the
summary event: bounded sample reservoirs with percentiles, mirrored to one stage histogram."""
from __future__ import annotations

import collections
import threading
from typing import Iterable, Optional

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

# One histogram for all stages and streams, labelled by stage: /metrics and `profile` agree.
STAGE_SECONDS = Histogram(
    "sentistream_stage_seconds",
    "Per-stage latency in seconds",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
)

# pending: answered, peer not connected yet; live: connected at least once. Their sum holds slots.
CONNECTIONS = Gauge("sentistream_connections", "Open WebRTC connections", ["state"])
for _state in ("pending", "live"):  # both series exist (at 0) before the first connection
    CONNECTIONS.labels(_state)
CONNECTIONS_TOTAL = Counter("sentistream_connections_accepted", "WebRTC connections accepted")
# Why connections ended: bye, media_timeout, connect_timeout, failed, closed, shutdown, offer_failed, analysis_failed.
CONNECTIONS_CLOSED = Counter("sentistream_connections_closed", "WebRTC connections closed, by reason", ["reason"])
OFFERS_REJECTED = Counter("sentistream_offers_rejected", "Offers refused", ["reason"])
FRAMES_IN = Counter("sentistream_frames_in", "Video frames received from clients")
FRAMES_DROPPED = Counter("sentistream_frames_dropped", "Video frames dropped as stale", ["where"])
AUDIO_SECONDS = Counter("sentistream_audio_seconds", "Seconds of client audio received")
ESTIMATES = Counter("sentistream_estimates", "Sentiment estimates sent")
TRANSCRIPTS = Counter("sentistream_transcripts", "Transcript events sent")
FACES_TRACKED = Gauge("sentistream_faces_tracked", "Faces tracked in the newest frame, all streams together")
EVENTS_DROPPED = Counter("sentistream_events_dropped", "Events not sent: data channel backed up or closed")


class LatencyStats:
    """Keeps the last `capacity` samples per stage (memory stays flat on endless streams)."""

    def __init__(self, capacity: int = 100_000):
        self._samples: dict[str, collections.deque[float]] = collections.defaultdict(lambda: collections.deque(maxlen=capacity))
        self._counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._samples[stage].append(seconds)
            self._counts[stage] += 1
        STAGE_SECONDS.labels(stage).observe(seconds)

    def merge(self, other: "LatencyStats") -> None:
        with other._lock:
            items = {k: list(v) for k, v in other._samples.items()}
            counts = dict(other._counts)
        with self._lock:
            for stage, values in items.items():
                self._samples[stage].extend(values)
                self._counts[stage] += counts[stage]

    def values(self, stage: str) -> list[float]:
        with self._lock:
            return list(self._samples.get(stage, ()))

    def stages(self) -> list[str]:
        with self._lock:
            return sorted(self._samples)

    def summary(self, stages: Optional[Iterable[str]] = None) -> dict[str, dict[str, float]]:
        out = {}
        for stage in stages or self.stages():
            vals = np.asarray(self.values(stage), dtype=np.float64) * 1000.0
            if vals.size == 0:
                out[stage] = {"count": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None}
                continue
            p50, p95, p99 = np.percentile(vals, [50, 95, 99])
            out[stage] = {"count": int(self._counts[stage]), "p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2), "p99_ms": round(float(p99), 2)}
        return out
