"""`POST /analyze`: a media file in the body (raw, or the first file part of a multipart form),
analysed like `sentistream run` (file mode), its events streamed back as NDJSON while they are
produced, ending with the summary.

The body goes to a temporary file (removed whatever happens) while its size is counted against
`server.max_upload_bytes` (413 beyond); a body FFmpeg cannot open, or a malformed multipart body,
is a 400; a client that goes away mid-upload is one log line (INFO), not an error. An upload takes a
client slot like a WebRTC or WebSocket stream (503 when full) and can be followed on
`/ws/events?stream=ID` (the ID is in the `X-Stream-Id` header)."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import tempfile
import uuid
from typing import Any, Awaitable, Callable, Optional

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from models.errors import UserError, one_line

from ..api import stream_events
from ..config import AppConfig
from ..events import encode_event
from ..metrics import ESTIMATES, OFFERS_REJECTED, TRANSCRIPTS
from ..runtime import Runtime
from ..sources import AvSource
from .auth import authorized
from .followers import Followers
from .manager import ConnectionManager

log = logging.getLogger(__name__)

CHUNK = 1 << 16
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class UploadTooLarge(Exception):
    pass


class Upload:
    """One running upload in the manager's slots: `close()` (server shutdown) stops its analysis."""

    live = True  # media is here already: never a pending slot

    def __init__(self, address: str) -> None:
        self.id = uuid.uuid4().hex[:8]
        self.address = address
        self.followers = Followers()
        self.task: Optional[asyncio.Task] = None

    async def close(self, reason: str = "closed") -> None:
        if self.task is not None and self.task is not asyncio.current_task() and not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


async def _save_body(request: web.Request, fh: Any, limit: int) -> int:
    """Copies the raw body, or the first file part of a multipart body, into `fh`; returns its size."""
    size = 0

    def write(chunk: bytes) -> None:
        nonlocal size
        size += len(chunk)
        if size > limit:
            raise UploadTooLarge
        fh.write(chunk)

    if request.content_type.startswith("multipart/"):
        try:
            reader = await request.multipart()
            async for part in reader:
                if isinstance(part, aiohttp.BodyPartReader) and (part.filename or part.name in ("file", "media")):
                    while chunk := await part.read_chunk(CHUNK):
                        write(chunk)
                    break
            else:
                raise UserError("the multipart form has no file part (send the media as a part named 'file')")
        except (ValueError, HttpProcessingError) as exc:  # no boundary, a body that is not the multipart it says
            raise UserError(f"malformed multipart body ({one_line(exc, 120)}): send a multipart/form-data body with "
                            "the media in a part named 'file', or the media file itself as the body") from None
    else:
        async for chunk in request.content.iter_chunked(CHUNK):
            write(chunk)
    fh.flush()
    return size


def analyze_route(runtime: Runtime, cfg: AppConfig, manager: ConnectionManager) -> Handler:
    server = cfg.server

    async def analyze(request: web.Request) -> web.StreamResponse:
        if not authorized(request, server.token):
            OFFERS_REJECTED.labels("unauthorized").inc()
            return _error(401, "missing or wrong 'Authorization: Bearer <token>'", **{"WWW-Authenticate": "Bearer"})
        limit = server.max_upload_bytes
        if request.content_length is not None and request.content_length > limit:
            OFFERS_REJECTED.labels("too_large").inc()
            return _error(413, f"upload too large: {request.content_length} bytes (limit {limit} bytes, server.max_upload_bytes)")
        address = request.remote or ""
        if (refused := manager.refusal(address)) is not None:
            status, reason, message = refused
            OFFERS_REJECTED.labels(reason).inc()
            return _error(status, message, **{"Retry-After": "5"})
        job = Upload(address)
        job.task = asyncio.current_task()
        manager.take(job)
        fd, path = tempfile.mkstemp(prefix="sentistream-upload-", suffix=".media")
        try:
            with os.fdopen(fd, "wb") as fh:
                try:
                    size = await _save_body(request, fh, limit)
                except UploadTooLarge:
                    OFFERS_REJECTED.labels("too_large").inc()
                    return _error(413, f"upload too large (limit {limit} bytes, server.max_upload_bytes)")
                except UserError as exc:
                    return _error(400, str(exc))
                except ConnectionError as exc:  # the client reset or closed the connection mid-upload
                    log.info("upload %s: client went away during the upload (%s)", job.id, one_line(exc, 80))
                    return _error(400, "upload interrupted: the connection closed before the body was complete")
            if size == 0:
                return _error(400, "empty body: POST the media file (raw body or a multipart 'file' part)")
            source = AvSource(path)
            try:
                info = await asyncio.to_thread(source.open)
            except UserError as exc:
                source.close()
                reason = str(exc).replace(path, "the upload").split(" (")[0]
                return _error(400, f"{reason}: not a media file FFmpeg can open (send a video or audio file)")
            info = dataclasses.replace(info, description="the upload")
            return await _stream(request, runtime, job, source, info, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
            job.followers.close()
            manager.forget(job)

    return analyze


async def _stream(request: web.Request, runtime: Runtime, job: Upload, source: AvSource, info: Any,
                  path: str) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "X-Stream-Id": job.id,
                                       "Cache-Control": "no-cache"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    events = stream_events(runtime, source, info, name=job.id)
    try:
        async for event in events:
            kind = event["type"]
            if kind == "sentiment":
                ESTIMATES.inc()
            elif kind == "transcript":
                TRANSCRIPTS.inc()
            elif kind in ("warning", "error"):  # e.g. a truncated upload: never show the temporary path
                event["message"] = str(event.get("message", "")).replace(path, "the upload")
            job.followers.publish(event)
            await resp.write((encode_event(event) + "\n").encode("utf-8"))  # waits while the client is slow
        await resp.write_eof()
    except (ConnectionResetError, ConnectionError):
        log.info("upload %s: client went away", job.id)
    finally:
        await events.aclose()
        source.close()
    return resp
