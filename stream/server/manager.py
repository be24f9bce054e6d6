"""All connections of one server: the slot counts (pending and live, per client address), the
shared media thread pool, shutdown."""
from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Optional, Protocol, Union

from aiortc import RTCIceServer, RTCSessionDescription

from ..config import AppConfig, ServerConfig
from ..metrics import CONNECTIONS, CONNECTIONS_TOTAL
from ..runtime import Runtime
from .connection import Connection


class Slot(Protocol):
    """Anything that holds a client slot: a WebRTC Connection, a WebSocket stream, an upload."""

    id: str
    address: str  # the client's address (per-address cap)

    @property
    def live(self) -> bool: ...  # media flowing (False: answered offer, not connected yet)

    async def close(self, reason: str = ...) -> None: ...


class SlotRefused(Exception):
    """A slot refused where the check could not happen before the await (a cluster replica that
    filled up meanwhile): the same (status, reason, message) as `slot_refusal`."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message

    def __reduce__(self) -> tuple:  # crosses process boundaries (a cluster replica -> its caller)
        return SlotRefused, (self.status, self.reason, self.message)


def per_address_limit(server: ServerConfig, capacity: int) -> int:
    """The connections one client address may hold: server.max_clients_per_address, but never more
    than the server (or cluster) has slots."""
    return min(server.max_clients_per_address, capacity)


def slot_refusal(in_use: int, capacity: int, from_address: int, address: str,
                 server: ServerConfig) -> Optional[tuple[int, str, str]]:
    """The one slot rule (HTTP status, metrics reason, message), or None: full -> 503, the client
    address's cap -> 429. A single server and a cluster ingress (stream.cluster) both apply it."""
    if in_use >= capacity:
        return 503, "full", f"server full: {capacity} clients connected, try again later"
    limit = per_address_limit(server, capacity)
    if from_address >= limit:
        return 429, "per_address", (f"too many connections from {address or 'your address'} "
                                    f"(limit {limit}): close one or try again later")
    return None


class ConnectionManager:
    def __init__(self, runtime: Runtime, cfg: AppConfig, ice_servers: tuple[RTCIceServer, ...] = ()) -> None:
        self.runtime = runtime
        self.cfg = cfg
        self.ice_servers = ice_servers  # none by default: no internet, host candidates suffice locally
        self.connections: dict[str, Union[Connection, Slot]] = {}
        # Colour conversion and overlay drawing for every connection: OpenCV/swscale release the GIL.
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="sentistream-media")
        self.started = time.time()

    @property
    def per_address(self) -> int:
        return per_address_limit(self.cfg.server, self.cfg.server.max_clients)

    @property
    def full(self) -> bool:
        return len(self.connections) >= self.cfg.server.max_clients

    def refusal(self, address: str) -> Optional[tuple[int, str, str]]:
        """Why a new slot for `address` is refused (see `slot_refusal`), or None.
        Call right before taking the slot (no await in between): the checks cannot race. Pending
        peers count too, so replaying one captured offer cannot hold more than the per-address cap."""
        return slot_refusal(len(self.connections), self.cfg.server.max_clients, self.from_address(address),
                            address, self.cfg.server)

    def from_address(self, address: str) -> int:
        """Connections (pending or live) opened by this client address."""
        return sum(1 for c in self.connections.values() if c.address == address)

    @property
    def live(self) -> int:
        return sum(1 for c in self.connections.values() if c.live)

    @property
    def pending(self) -> int:
        """Answered offers whose peer has not connected (yet): they hold a slot until connect_timeout_s."""
        return len(self.connections) - self.live

    async def open(self, offer: RTCSessionDescription, address: str = "") -> RTCSessionDescription:
        """Registers the connection before the first await, so the slot checks cannot race."""
        conn = Connection(self.runtime, self.pool, self.ice_servers, self.cfg.server,
                          on_live=self._publish, on_closed=self.forget, address=address)
        self.connections[conn.id] = conn
        self._publish()
        try:
            answer = await conn.start(offer)
        except BaseException:
            await conn.close("offer_failed")
            raise
        CONNECTIONS_TOTAL.inc()
        return answer

    def take(self, slot: Slot) -> None:
        """Registers a WebSocket stream or an upload (call before any await: the slot checks cannot race)."""
        self.connections[slot.id] = slot
        self._publish()

    def rename(self, slot: Slot, new_id: str) -> None:
        self.connections.pop(slot.id, None)
        slot.id = new_id
        self.connections[new_id] = slot

    def forget(self, conn: Union[Connection, Slot]) -> None:
        if self.connections.get(conn.id) is conn:
            del self.connections[conn.id]
        self._publish()

    def _publish(self, _: object = None) -> None:
        live = self.live
        CONNECTIONS.labels("live").set(live)
        CONNECTIONS.labels("pending").set(len(self.connections) - live)

    async def close_all(self) -> None:
        await asyncio.gather(*(c.close("shutdown") for c in list(self.connections.values())), return_exceptions=True)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
