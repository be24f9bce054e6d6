"""The Python API: analyse a source and iterate over its events.

    from stream import analyze, analyze_sync

    for event in analyze_sync("talk.mp4", overrides={"vision.pretrained": "random"}):
        if event.type == "sentiment":
            print(event.t, event.label, event.score)

`analyze` is an async generator (for asyncio code), `analyze_sync` a blocking generator that runs
the pipeline on its own thread and event loop, so it also works where a loop is already running
(Jupyter). Both yield `stream.events.Event` objects whose `to_json()` is the line `sentistream run`
writes. `stream_events` is the core both use (and `POST /analyze`): one opened source through a
`StreamSession` on a given `Runtime`, events yielded as they are produced.

Back-pressure: the pipeline waits while `MAX_PENDING_EVENTS` events wait for the consumer, so a
slow consumer slows a file's analysis (live sources then drop stale frames, as they do anyway)
instead of growing memory.
"""
from __future__ import annotations

import asyncio
import collections
import queue
import threading
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Mapping, Optional, Sequence, Union

from models.errors import UserError

from .config import AppConfig, default_config_path, load_config
from .events import Event, input_warnings, make_event
from .runtime import Runtime, build_runtime
from .session import StreamSession
from .sources import MediaItem, MediaSource, SourceInfo, open_source, pump

MAX_PENDING_EVENTS = 256

Overrides = Union[Mapping[str, Any], Sequence[str], None]
ConfigLike = Union[AppConfig, str, Path, None]


def _override_strings(overrides: Overrides) -> list[str]:
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        def text(v: Any) -> str:
            return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)

        return [f"{k}={text(v)}" for k, v in overrides.items()]
    if isinstance(overrides, str):
        return [overrides]
    return [str(o) for o in overrides]


def resolve_config(config: ConfigLike = None, overrides: Overrides = None) -> AppConfig:
    """An AppConfig from an AppConfig, a YAML path or None (configs/default.yaml when present), plus overrides."""
    extra = _override_strings(overrides)
    if isinstance(config, AppConfig):
        return _apply(config, extra) if extra else config
    path = config if config is not None else (default_config_path() if default_config_path().is_file() else None)
    return load_config(path, extra)


def _apply(cfg: AppConfig, extra: list[str]) -> AppConfig:
    from models.config import apply_override

    data = cfg.model_dump()
    for assignment in extra:
        apply_override(data, assignment)
    return AppConfig.model_validate(data)


class _Pending:
    """Events waiting for the consumer, and the gate the media side waits on while there are too many."""

    def __init__(self, limit: int) -> None:
        self.items: collections.deque[dict[str, Any]] = collections.deque()
        self.limit = limit
        self.ready = asyncio.Event()  # something to read, or finished
        self.room = asyncio.Event()  # the media side may push
        self.room.set()
        self.finished = False

    def emit(self, event: dict[str, Any]) -> None:
        self.items.append(event)
        self.ready.set()
        if len(self.items) >= self.limit:
            self.room.clear()

    def pop(self) -> dict[str, Any]:
        event = self.items.popleft()
        if len(self.items) < self.limit // 2:
            self.room.set()
        return event

    def finish(self) -> None:
        self.finished = True
        self.ready.set()
        self.room.set()  # never leave a decode thread waiting on a gate nobody opens


class _GatedSink:
    """The session's media input, held back while the consumer is behind."""

    def __init__(self, session: StreamSession, pending: _Pending) -> None:
        self.session = session
        self.pending = pending

    async def push(self, item: MediaItem) -> None:
        await self.pending.room.wait()
        if not self.pending.finished:
            await self.session.push(item)

    def end_input(self) -> None:
        self.session.end_input()


async def stream_events(runtime: Runtime, source: MediaSource, info: SourceInfo, *, name: str,
                        max_pending: int = MAX_PENDING_EVENTS) -> AsyncIterator[dict[str, Any]]:
    """Every event of one opened source, as `run` writes them: input warnings, transcripts and
    estimates, an `error` if decoding broke part-way (the analysis so far is kept), the summary.
    Closing the generator early stops decoding and the session."""
    pending = _Pending(max_pending)
    cfg = runtime.cfg
    for message in input_warnings(info.description, weights=runtime.engine.weights, has_video=info.has_video,
                                  has_audio=info.has_audio, asr_enabled=cfg.asr.enabled):
        pending.emit(make_event("warning", name, 0.0, message=message))
    session = StreamSession(name, runtime, pending.emit, live=info.live, has_video=info.has_video, has_audio=info.has_audio)

    async def drive() -> None:
        runner = asyncio.create_task(session.run(), name=f"{name}-session")
        runner.add_done_callback(lambda _: source.close())  # analysis over (or failed): stop decoding
        try:
            try:
                await pump(source.frames(session.frame_policy()), _GatedSink(session, pending))
            except UserError as exc:  # e.g. a truncated file: keep what was analysed, say what broke
                pending.emit(make_event("error", name, session.clock, message=str(exc)))
            pending.emit(await runner)
        finally:
            if not runner.done():
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)
            pending.finish()

    driver = asyncio.create_task(drive(), name=f"{name}-driver")
    try:
        while True:
            if pending.items:
                yield pending.pop()
                continue
            if pending.finished:
                break
            pending.ready.clear()
            await pending.ready.wait()
        await driver  # re-raise what broke the analysis
    finally:
        source.close()
        if not driver.done():
            driver.cancel()
        pending.finish()
        await asyncio.gather(driver, return_exceptions=True)


async def analyze(source: Union[str, Path, int], config: ConfigLike = None, overrides: Overrides = None, *,
                  realtime: bool = False, stream: Optional[str] = None) -> AsyncIterator[Event]:
    """Analyse a file, URL, camera index or "demo"; yields typed events ending with the summary.

    `config`: an AppConfig, a YAML path, or None (configs/default.yaml when present); `overrides`:
    {"dotted.key": value} or ["dotted.key=value", ...] as `--set` takes them. Loads the models for
    this call. Raises `UserError` (one clear line) for a bad config, source or missing weights."""
    cfg = resolve_config(config, overrides)
    src = open_source(str(source), realtime=realtime)
    runtime: Optional[Runtime] = None
    try:
        info = await asyncio.to_thread(src.open)  # bad input fails here, before any model is loaded
        runtime = await build_runtime(cfg, need_asr=info.has_audio)
        name = stream if stream is not None else cfg.pipeline.stream_name
        events = stream_events(runtime, src, info, name=name)
        try:
            async for event in events:
                yield Event.from_dict(event)
        finally:
            await events.aclose()
    finally:
        src.close()
        if runtime is not None:
            await runtime.close()


_DONE = object()


def analyze_sync(source: Union[str, Path, int], config: ConfigLike = None, overrides: Overrides = None, *,
                 realtime: bool = False, stream: Optional[str] = None) -> Iterator[Event]:
    """`analyze` as a blocking generator. The pipeline runs on its own thread with its own event
    loop, so this works from plain scripts and from code already inside a running loop (Jupyter).
    Breaking out of the loop stops the analysis; errors are raised here."""
    handoff: queue.Queue[Any] = queue.Queue(maxsize=MAX_PENDING_EVENTS)
    stop = threading.Event()
    box: dict[str, Any] = {}

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    async def produce() -> None:
        gen = analyze(source, config, overrides, realtime=realtime, stream=stream)
        try:
            async for event in gen:
                if stop.is_set() or not await asyncio.to_thread(put, event):
                    break
        finally:
            await gen.aclose()

    def main() -> None:
        loop = asyncio.new_event_loop()
        box["loop"] = loop
        try:
            task = loop.create_task(produce())
            box["task"] = task
            loop.run_until_complete(task)
        except BaseException as exc:  # handed to the consumer, raised there
            if not isinstance(exc, asyncio.CancelledError):
                box["error"] = exc
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()
                put(_DONE)

    thread = threading.Thread(target=main, name="sentistream-analyze", daemon=True)
    thread.start()
    try:
        while True:
            item = handoff.get()
            if item is _DONE:
                break
            yield item
        if "error" in box:
            raise box["error"]
    finally:
        stop.set()
        loop, task = box.get("loop"), box.get("task")
        if thread.is_alive() and loop is not None and task is not None:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # loop already closed
                pass
        thread.join()
