"""The shared engine: micro-batching across callers, failure isolation, windows, compile switch."""
from __future__ import annotations

import asyncio
import concurrent.futures
import copy

import numpy as np
import pytest
import torch

from models.inference import WindowInput
from stream.asr.agreement import Word
from stream.batching import Expired
from stream.engine import MicroBatcher, ModelEngine
from stream.windows import FrameWindow, TranscriptWindow


@pytest.fixture
def pool():
    ex = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    yield ex
    ex.shutdown()


async def test_batcher_groups_concurrent_requests_up_to_max_batch(pool):
    seen: list[int] = []

    def double(items: list[int]) -> list[int]:
        seen.append(len(items))
        return [2 * x for x in items]

    batcher = MicroBatcher("t", double, pool, max_batch=4, max_wait_ms=50)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
    assert results == [2 * i for i in range(10)]  # each caller gets its own answer, in order
    assert max(seen) == 4 and sum(seen) == 10 and len(seen) == 3
    await batcher.close()


async def test_batcher_failure_reaches_every_waiter_and_it_keeps_serving(pool):
    def flaky(items: list[int]) -> list[int]:
        if any(x < 0 for x in items):
            raise ValueError("bad item")
        return items

    batcher = MicroBatcher("t", flaky, pool, max_batch=8, max_wait_ms=20)
    outcomes = await asyncio.gather(batcher.submit(1), batcher.submit(-1), return_exceptions=True)
    assert all(isinstance(o, ValueError) for o in outcomes)
    assert await batcher.submit(5) == 5  # the worker survived
    await batcher.close()


async def test_closing_a_batcher_releases_every_waiter(pool):
    # Whisper passes wait on the batcher from worker threads: a close mid-batch, or with requests
    # still queued, must fail them at once, not leave threads blocked.
    import threading

    release = threading.Event()

    def slow(items: list[int]) -> list[int]:
        release.wait(5)
        return items

    batcher = MicroBatcher("t", slow, pool, max_batch=1, max_wait_ms=0)
    waiters = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
    await asyncio.sleep(0.1)  # the first is running, two are queued
    await batcher.close()
    release.set()
    outcomes = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 2)
    assert all(isinstance(o, RuntimeError) and "closed" in str(o) for o in outcomes), outcomes


def test_frame_window_cuts_at_its_end_and_bounds_memory():
    w = FrameWindow(seconds=2.0, max_frames=3, retain=10)
    for i in range(20):
        w.add(i * 0.5, torch.full((4,), float(i)), wall=0.0)
    assert len(w) == 10  # retain bounds memory however far ahead features run
    snap = w.snapshot(end=8.0)  # frames at 6.5, 7.0, 7.5, 8.0 are inside (6, 8]; newest 3 kept
    assert [e.t for e in snap.entries] == [7.0, 7.5, 8.0]
    assert snap.ages.tolist() == [1.0, 0.5, 0.0]
    assert w.snapshot(end=100.0).entries == []


def test_transcript_window_keeps_recent_words_and_replaces_partials():
    w = TranscriptWindow(seconds=3.0)
    w.add_final([Word(0.0, 0.4, "old"), Word(5.0, 5.4, "hello")])
    w.set_partial([Word(5.5, 5.9, "wor")])
    assert w.text(6.0) == ("hello wor", 2)
    w.add_final([Word(5.5, 6.0, "world")])  # a commit replaces the partial
    assert w.text(6.0) == ("hello world", 2)
    assert w.text(4.0) == ("", 0)


async def test_engine_estimates_match_across_batch_sizes(tiny_model, tiny_cfg):
    engine = ModelEngine(tiny_model, tiny_cfg.engine)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for _ in range(3)]
    feats = await asyncio.gather(*(engine.encode_frame(f) for f in frames))
    alone = await engine.encode_frame(frames[1])
    assert torch.allclose(alone, feats[1], atol=1e-5)  # batching does not change a frame's features
    window = WindowInput(torch.stack(feats), torch.tensor([1.0, 0.5, 0.0]), "what a lovely day", 4)
    together = await asyncio.gather(engine.estimate(window), engine.estimate(WindowInput(torch.zeros(0, 64), torch.zeros(0), "", 0)))
    single = await engine.estimate(window)
    assert together[0].probs == pytest.approx(single.probs, abs=1e-5)
    assert together[1].modalities["image"]["weight"] == 0 and together[1].modalities["text"]["weight"] == 0
    assert engine.fusion.batch_sizes[2] >= 1  # the two concurrent windows went through as one batch
    await engine.close()


@pytest.mark.slow
async def test_compile_switch_gives_the_same_estimates(tiny_cfg):
    from models.factory import build_model

    torch_cfg = tiny_cfg.model_copy(update={"vision": tiny_cfg.vision.model_copy(update={"backend": "torch"})})
    model = build_model(torch_cfg)  # engine.compile compiles the torch towers
    assert model.backbone.backend == "torch"
    eager = ModelEngine(model, tiny_cfg.engine)
    compiled_model = copy.deepcopy(model)
    compiled = ModelEngine(compiled_model, tiny_cfg.engine.model_copy(update={"compile": True}))
    frame = np.random.default_rng(1).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    a, b = await eager.encode_frame(frame), await compiled.encode_frame(frame)
    assert torch.allclose(a, b, atol=1e-4)
    window = WindowInput(a.unsqueeze(0), torch.zeros(1), "terrible news", 2)
    ea, eb = await eager.estimate(window), await compiled.estimate(window)
    assert ea.probs == pytest.approx(eb.probs, abs=1e-4)
    await eager.close()
    await compiled.close()


async def test_failing_analysis_does_not_hang_a_blocked_file_producer(tiny_model, tiny_cfg, monkeypatch):
    from stream.runtime import Runtime
    from stream.session import StreamSession
    from stream.sources import VideoFrame

    engine = ModelEngine(tiny_model, tiny_cfg.engine)

    async def broken(image, deadline=None):
        raise RuntimeError("engine failed")

    monkeypatch.setattr(engine, "encode_frame", broken)
    session = StreamSession("0", Runtime(tiny_cfg, engine), lambda e: None, live=False, has_video=True, has_audio=False)
    runner = asyncio.create_task(session.run())
    frame = np.zeros((32, 32, 3), np.uint8)

    async def produce():  # a file source pushes far more than the bounded queue holds
        for i in range(200):
            await session.push_video(VideoFrame(i / 15, frame, 0.0))

    producer = asyncio.create_task(produce())
    with pytest.raises(RuntimeError, match="engine failed"):
        await asyncio.wait_for(runner, 10)
    await asyncio.wait_for(producer, 10)  # woken up and finished instead of blocking forever
    await engine.close()


async def test_batcher_drops_items_whose_deadline_passed_before_their_batch(pool):
    import time

    computed: list[int] = []

    def slow(items: list[int]) -> list[int]:
        computed.extend(items)
        time.sleep(0.2)
        return items

    batcher = MicroBatcher("t", slow, pool, max_batch=1, max_wait_ms=0)
    first = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.02)  # the first batch is running for 0.2 s
    late = asyncio.ensure_future(batcher.submit(2, deadline=time.perf_counter() + 0.05))
    ok = asyncio.ensure_future(batcher.submit(3, deadline=time.perf_counter() + 30))
    outcomes = await asyncio.gather(first, late, ok, return_exceptions=True)
    assert outcomes[0] == 1 and isinstance(outcomes[1], Expired) and outcomes[2] == 3
    assert computed == [1, 3] and batcher.expired == 1  # the stale item was never computed
    await batcher.close()


async def test_batcher_bounds_a_batch_by_time_from_its_cost_per_item(pool):
    import time

    sizes: list[int] = []

    def per_item(items: list[int]) -> list[int]:
        sizes.append(len(items))
        time.sleep(0.02 * len(items))  # >= 20 ms per item, whatever the load
        return items

    batcher = MicroBatcher("t", per_item, pool, max_batch=16, max_wait_ms=0, max_batch_ms=50)
    far = time.perf_counter() + 60
    assert await batcher.submit(0, far) == 0  # learns the cost
    results = await asyncio.gather(*(batcher.submit(i, far) for i in range(1, 13)))
    assert results == list(range(1, 13))
    assert batcher.batch_limit <= 2 and max(sizes[1:]) <= 2  # 50 ms / >= 20 ms per item
    assert batcher.time_capped >= 1
    # Work without a deadline (files) keeps full batches: throughput over latency.
    del sizes[:]
    await asyncio.gather(*(batcher.submit(i) for i in range(12)))
    assert max(sizes) > 2
    await batcher.close()


async def test_image_batches_let_queued_fusion_go_first(pool):
    order: list[str] = []

    def run(tag: str):
        def fn(items: list[int]) -> list[int]:
            order.append(tag)
            return items
        return fn

    fusion = MicroBatcher("fusion", run("fusion"), pool, max_batch=1, max_wait_ms=100)  # still collecting
    images = MicroBatcher("images", run("images"), pool, max_batch=8, max_wait_ms=0, yield_to=fusion)
    await asyncio.gather(fusion.submit(1), images.submit(2))
    assert order == ["fusion", "images"]  # without yield_to the image batch would have run first
    # Fusion work that keeps coming delays an image batch by a fusion batch (or two: the one that
    # was already on the executor when its turn came), never starves it.
    del order[:]
    await asyncio.gather(*(fusion.submit(i) for i in range(6)), images.submit(9))
    assert 1 <= order.index("images") <= 2
    await fusion.close()
    await images.close()
