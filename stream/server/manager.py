"""All connections of one server: the slot count, the shared media thread pool, shutdown."""
from __future__ import annotations

import asyncio
import concurrent.futures
import time

from aiortc import RTCIceServer, RTCSessionDescription

from ..config import AppConfig
from ..metrics import CONNECTIONS, CONNECTIONS_TOTAL
from ..runtime import Runtime
from .connection import Connection


class ConnectionManager:
    def __init__(self, runtime: Runtime, cfg: AppConfig, ice_servers: tuple[RTCIceServer, ...] = ()) -> None:
        self.runtime = runtime
        self.cfg = cfg
        self.ice_servers = ice_servers  # none by default: no internet, host candidates suffice locally
        self.connections: dict[str, Connection] = {}
        # Colour conversion and overlay drawing for every connection: OpenCV/swscale release the GIL.
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="sentistream-media")
        self.started = time.time()

    @property
    def full(self) -> bool:
        return len(self.connections) >= self.cfg.server.max_clients

    async def open(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        """Registers the connection before the first await, so the slot check cannot race."""
        conn = Connection(self.runtime, self.pool, self.ice_servers, self.forget, self.cfg.server.connect_timeout_s)
        self.connections[conn.id] = conn
        CONNECTIONS.set(len(self.connections))
        try:
            answer = await conn.start(offer)
        except BaseException:
            await conn.close("offer failed")
            raise
        CONNECTIONS_TOTAL.inc()
        return answer

    def forget(self, conn: Connection) -> None:
        self.connections.pop(conn.id, None)
        CONNECTIONS.set(len(self.connections))

    async def close_all(self) -> None:
        await asyncio.gather(*(c.close("server shutdown") for c in list(self.connections.values())), return_exceptions=True)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
