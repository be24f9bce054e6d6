"""Who may talk to the server from a browser: Host (DNS rebinding) and Origin (cross-site offers).

DNS rebinding: a page on evil.example re-points its own name at 127.0.0.1 and then reads this
server as same-origin; its requests still carry `Host: evil.example`. So only localhost names,
loopback addresses, the bound address (any IP literal when bound to every interface: rebinding
needs a name) and `server.allowed_hosts` are served.

Cross-site requests: any web page can POST to http://127.0.0.1:8080/offer or open a WebSocket to
it. Browsers always send `Origin` on those, so a request that changes state or starts a stream
(every method but GET/HEAD/OPTIONS, and every WebSocket upgrade) must come from the page's own
origin or one in `server.allowed_origins`. Requests without an Origin (curl, aiortc, scripts)
are not from a browser page and pass. `guard_middleware` applies both to every route, so a new
route that starts a stream gets the same rules without doing anything.
"""
from __future__ import annotations

import ipaddress
from typing import Awaitable, Callable, Optional
from urllib.parse import urlsplit

from aiohttp import hdrs, web

from ..config import ServerConfig
from ..metrics import OFFERS_REJECTED

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


def _hostname(netloc: str) -> Optional[str]:
    """'Example.COM:8080' -> 'example.com', '[::1]:80' -> '::1'; None if it does not parse."""
    try:
        name = urlsplit("//" + netloc).hostname
    except ValueError:
        return None
    return name.rstrip(".") if name else None


def _ip(name: str) -> Optional[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def host_allowed(host_header: Optional[str], server: ServerConfig) -> bool:
    if host_header is None:  # HTTP/1.0 without Host: not a browser
        return True
    name = _hostname(host_header)
    if name is None:
        return False
    if name == "localhost" or name.endswith(".localhost"):  # browsers resolve these to loopback themselves
        return True
    if name in {h.lower().rstrip(".") for h in server.allowed_hosts}:
        return True
    ip = _ip(name)
    bound = server.host.lower().strip("[]")
    if ip is not None:
        return ip.is_loopback or bound in WILDCARD_HOSTS or ip == _ip(bound)
    return name == bound


def _origin_key(origin: str) -> Optional[str]:
    """'HTTPS://Example.com:443/' -> 'https://example.com' (default ports dropped); None if malformed."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def origin_allowed(origin: Optional[str], host_header: Optional[str], server: ServerConfig, scheme: str = "http") -> bool:
    if origin is None:  # not sent by a browser page
        return True
    key = _origin_key(origin)
    if key is None:  # "null" (sandboxed frames, file://) and garbage
        return False
    if key in {_origin_key(o) for o in server.allowed_origins}:
        return True
    # Same origin: the page this server served (behind a TLS proxy the scheme differs; the host does not).
    own = {_origin_key(f"{s}://{host_header}") for s in ("http", "https", scheme)} if host_header else set()
    return key in own


def starts_something(request: web.Request) -> bool:
    """A request the Origin rule applies to: any unsafe method, or a WebSocket upgrade."""
    upgrade = request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"
    return request.method not in SAFE_METHODS or upgrade


def guard_middleware(server: ServerConfig) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get(hdrs.HOST)
        if not host_allowed(host, server):
            return web.json_response({"error": f"Host {host[:100]!r} is not served here: use localhost or the "
                                               "server's address, or add the name to server.allowed_hosts"}, status=403)
        if starts_something(request) and not origin_allowed(request.headers.get(hdrs.ORIGIN), host, server, request.scheme):
            if request.path == "/offer":
                OFFERS_REJECTED.labels("origin").inc()
            origin = request.headers.get(hdrs.ORIGIN, "")[:100]
            return web.json_response({"error": f"Origin {origin!r} may not start a stream here: open the page this "
                                               "server serves, or add the origin to server.allowed_origins"}, status=403)
        return await handler(request)

    return guard
