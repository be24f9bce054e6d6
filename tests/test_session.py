"""A stream's session through its public seams: the branches and the two clock policies, on the
tiny random CLIP (real engine, no Whisper)."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from stream.engine import ModelEngine
from stream.queues import FileQueue, LatestQueue
from stream.runtime import Runtime
from stream.session import FileClock, LiveClock, StreamSession
from stream.sources import VideoFrame

FRAME = np.zeros((32, 32, 3), np.uint8)


@pytest.fixture
async def runtime(tiny_model, tiny_cfg):
    engine = ModelEngine(tiny_model, tiny_cfg.engine)
    yield Runtime(tiny_cfg, engine)
    await engine.close()


def test_clock_policies_pick_their_queues(tiny_cfg):
    assert isinstance(FileClock(tiny_cfg).video_queue(), FileQueue)
    assert isinstance(LiveClock(tiny_cfg).video_queue(), LatestQueue)
    # Files need no low latency: fewer, longer Whisper steps; live keeps the configured step.
    assert FileClock(tiny_cfg).asr_config().chunk_seconds == tiny_cfg.asr.file_chunk_seconds
    assert LiveClock(tiny_cfg).asr_config().chunk_seconds == tiny_cfg.asr.chunk_seconds


async def test_file_clock_estimates_every_hop_and_loses_no_frame(runtime, tiny_cfg):
    events: list[dict] = []
    session = StreamSession("f", runtime, events.append, live=False, has_video=True, has_audio=False)
    runner = asyncio.create_task(session.run())
    for i in range(45):  # 3 s at 15 fps
        await session.push_video(VideoFrame(i / 15, FRAME, 0.0))
    session.end_input()
    summary = await asyncio.wait_for(runner, 30)
    estimates = [e for e in events if e["type"] == "sentiment"]
    hop = tiny_cfg.window.hop
    assert [e["t"] for e in estimates] == pytest.approx([hop * k for k in range(1, len(estimates) + 1)])
    assert estimates[-1]["t"] == pytest.approx(int((44 / 15) / hop) * hop)  # the last hop the media reached
    assert summary["frames_in"] == 45 and summary["frames_dropped"] == 0
    assert summary["frames_processed"] + summary["frames_skipped"] == 45


async def test_live_video_branch_never_queues_skipped_frames(runtime):
    # A live queue holds few frames: sampler-skipped frames must not push kept ones out of it.
    session = StreamSession("l", runtime, lambda e: None, live=True, has_video=True, has_audio=False)
    assert session.video is not None
    for i in range(30):  # one second at 30 fps, nobody consuming yet
        await session.push_video(VideoFrame(i / 30, FRAME, 0.0))
    kept = session.video.frames_in - session.video.frames_skipped
    assert session.video.queue.qsize() == min(kept, session.cfg.pipeline.video_queue)
    assert session.frames_dropped == max(0, kept - session.cfg.pipeline.video_queue)
    session.end_input()
    await asyncio.wait_for(session.run(), 30)


async def test_live_frames_older_than_the_age_limit_are_dropped_and_counted(runtime):
    import time

    session = StreamSession("s", runtime, lambda e: None, live=True, has_video=True, has_audio=False)
    limit = session.cfg.pipeline.max_frame_age_ms / 1000.0
    now = time.perf_counter()
    # Two frames that waited past the limit, two fresh ones (all kept by the source's policy).
    for i, wall in enumerate((now - 3 * limit, now - 2 * limit, now + 60, now + 60)):
        await session.push_video(VideoFrame(i * 0.5, FRAME, wall, keep=True))
    session.end_input()
    summary = await asyncio.wait_for(session.run(), 30)
    assert summary["frames_stale"] == 2 and summary["frames_processed"] == 2
    assert summary["frames_dropped"] == 2  # stale frames count as dropped; the queue itself lost none
    assert summary["sampler_fps"]["steps_down"] == 1  # the loss slowed the sampler one step


def test_rate_governor_slows_on_loss_and_recovers_when_calm():
    from models.sampling import FrameSampler
    from stream.session.rate import RateGovernor

    sampler = FrameSampler(2.0)
    gov = RateGovernor(sampler, 2.0, 0.5)
    gov.observe(3, False, now=0.0)
    assert sampler.fps == pytest.approx(1.5)
    gov.observe(1, False, now=0.5)  # within the hold time: no second step yet
    assert sampler.fps == pytest.approx(1.5)
    for k in range(1, 10):
        gov.observe(1, True, now=float(k))
    assert sampler.fps == pytest.approx(0.5) and gov.lowest == pytest.approx(0.5)  # never below the floor
    gov.observe(0, False, now=12.0)  # calm for 3 s: not yet
    assert sampler.fps == pytest.approx(0.5)
    t = 14.0
    while sampler.fps < 2.0 and t < 100:
        gov.observe(0, False, now=t)
        t += 5.0
    assert sampler.fps == pytest.approx(2.0) and gov.summary()["last"] == 2.0


def test_partial_text_changes_wait_n_hops_final_words_go_at_once():
    from stream.asr.agreement import Word
    from stream.session.session import TextSchedule
    from stream.windows import TranscriptWindow

    window = TranscriptWindow(8.0)
    sched = TextSchedule(window, every=3)
    window.add_final([Word(0.0, 0.4, "hello")])
    assert sched.at(1.0) == ("hello", 1)  # the first text goes at once
    window.set_partial([Word(0.5, 0.9, "there")])
    assert sched.at(1.5) == ("hello", 1)  # partial change held (hop 1 of 3)
    window.set_partial([Word(0.5, 0.9, "there"), Word(1.0, 1.4, "my")])
    assert sched.at(2.0) == ("hello", 1)  # held (hop 2)
    assert sched.at(2.5) == ("hello there my", 3)  # third hop: the partial goes in
    window.add_final([Word(0.5, 0.9, "there"), Word(1.0, 1.4, "my"), Word(1.5, 1.9, "friend")])
    assert sched.at(3.0) == ("hello there my friend", 4)  # new final words: at once
    assert sched.at(8.6) == ("hello there my friend", 4)  # "hello" slid out: held like a partial change
    assert sched.counts() == {"final": 2, "partial": 1, "held": 3}
    every_hop = TextSchedule(window, every=1)
    assert every_hop.at(3.0) == ("hello there my friend", 4)
    window.set_partial([Word(2.0, 2.4, "again")])
    assert every_hop.at(3.5)[0].endswith("again") and every_hop.counts()["held"] == 0


async def test_live_estimates_never_wait_for_a_text_pass(runtime):
    """A live estimate fuses the newest text only once it is encoded; until then the previous text,
    while the new one is encoded off the estimate's path. Files always fuse the newest text."""
    from stream.asr.agreement import Word

    engine, budget = runtime.engine, runtime.cfg.window.max_text_tokens
    session = StreamSession("t", runtime, lambda e: None, live=True, has_video=False, has_audio=False)
    session.transcript.add_final([Word(0.0, 0.4, "hello")])
    await session.estimate(0.5)  # nothing fused yet: the first text is encoded on the spot
    assert session._fused_text == ("hello", 1) and session.text_deferred == 0
    session.transcript.add_final([Word(0.5, 0.9, "world")])
    misses = engine.text_cache.misses
    await session.estimate(1.0)
    assert session._fused_text == ("hello", 1) and session.text_deferred == 1
    await session._text_ahead  # the new text was encoded ahead, as its own pass
    assert engine.has_text("hello world", budget) and engine.text_cache.misses == misses + 1
    await session.estimate(1.5)
    assert session._fused_text == ("hello world", 2) and session.text_deferred == 1
    # A transcript change starts the encode at once: the next estimate needs no pass of its own.
    session.transcript.add_final([Word(1.5, 1.9, "again")])
    session._clock = 2.0
    session._on_transcript()
    await session._text_ahead
    await session.estimate(2.0)
    assert session._fused_text == ("hello world again", 3) and session.text_deferred == 1

    files = StreamSession("f", runtime, lambda e: None, live=False, has_video=False, has_audio=False)
    files.transcript.add_final([Word(0.0, 0.4, "hello")])
    await files.estimate(0.5)
    files.transcript.add_final([Word(0.5, 0.9, "there")])
    await files.estimate(1.0)
    assert files._fused_text == ("hello there", 2) and files.text_deferred == 0


async def test_live_estimates_keep_the_hop_rate_when_the_sampler_is_slowed(runtime, tiny_cfg):
    """Frames at the configured rate pace live estimates (the timer waits 1.5 hops for a late one);
    once overload slows the sampler below the hop rate, the timer takes over at one hop."""
    hop = tiny_cfg.window.hop
    clock = LiveClock(tiny_cfg)
    session = StreamSession("r", runtime, lambda e: None, live=True, has_video=True, has_audio=False)
    session.sampler.set_fps(1.0 / hop)
    assert session.frame_period == pytest.approx(hop) and clock.timer(session) == pytest.approx(1.5 * hop)
    session.sampler.set_fps(0.5 / hop)  # what the rate governor does under overload
    assert clock.timer(session) == pytest.approx(hop)
    audio_only = StreamSession("a", runtime, lambda e: None, live=True, has_video=False, has_audio=False)
    assert audio_only.frame_period == float("inf") and clock.timer(audio_only) == pytest.approx(hop)
