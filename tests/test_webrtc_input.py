"""WebRTC track input: the aiortc backlog workaround notices when aiortc changes under it."""
from __future__ import annotations

import asyncio
import logging

import stream.sources.webrtc as webrtc_input
from stream.sources.webrtc import TrackClock, newest_frame


def test_the_private_queue_is_still_there_in_this_aiortc():
    # newest_frame reads RemoteStreamTrack._queue; an aiortc that renames it fails here first.
    from aiortc.rtcrtpreceiver import RemoteStreamTrack

    track = RemoteStreamTrack(kind="video")
    assert isinstance(getattr(track, "_queue", None), asyncio.Queue)


def test_backlog_is_skipped_to_the_newest_frame_and_counted():
    class Track:
        _queue: asyncio.Queue = asyncio.Queue()

    track = Track()
    for name in ("f2", "f3", "f4"):
        track._queue.put_nowait(name)
    assert newest_frame(track, "f1") == ("f4", 3)
    track._queue.put_nowait(None)  # the end-of-track marker stays for the next recv()
    assert newest_frame(track, "f5") == ("f5", 0)
    assert track._queue.get_nowait() is None


def test_a_missing_private_queue_warns_once_and_keeps_working(caplog, monkeypatch):
    monkeypatch.setattr(webrtc_input, "_backlog_warned", False)
    with caplog.at_level(logging.WARNING, logger="stream.sources.webrtc"):
        assert newest_frame(object(), "frame") == ("frame", 0)
        assert newest_frame(object(), "frame") == ("frame", 0)
    warnings = [r for r in caplog.records if "backlog is not skipped" in r.getMessage()]
    assert len(warnings) == 1


def test_both_tracks_share_one_media_clock():
    clock = TrackClock()
    assert clock.since_start(100.0) == 0.0
    assert clock.since_start(101.5) == 1.5  # the second track's first item is 1.5 s into the call
