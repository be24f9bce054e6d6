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
