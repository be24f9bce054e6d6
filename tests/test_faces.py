"""Per-face estimates on a real photo (scikit-image's astronaut.png) in a generated 2x2 gallery view:
real Haar detector, real ByteTrack, real PyAV decode, the tiny random CLIP."""
from __future__ import annotations

import asyncio

import cv2
import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY

from models.inference import WindowInput
from scripts.media import GALLERY_TILE, GALLERY_TILES, gallery_frame, gallery_tile_of, make_gallery_video
from stream.engine import ModelEngine
from stream.runtime import Runtime
from stream.session import StreamSession
from stream.sources import VideoFrame, open_source
from stream.sources.pump import pump

pytest.importorskip("skimage")
SECONDS = 9.0
STILL, MOVING, EMPTY, MIDDLE = (GALLERY_TILES.index(k) for k in ("still", "moving", "empty", "middle"))


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    return make_gallery_video(tmp_path_factory.mktemp("faces") / "gallery.mp4", SECONDS, fps=10)


async def _analyse(cfg, model, path) -> tuple[list[dict], dict]:
    engine = ModelEngine(model, cfg.engine)
    events: list[dict] = []
    try:
        session = StreamSession("g", Runtime(cfg, engine), events.append, live=False, has_video=True, has_audio=False)
        source = open_source(str(path))
        source.open()
        runner = asyncio.create_task(session.run())
        await pump(source.frames(), session)
        summary = await asyncio.wait_for(runner, 300)
    finally:
        await engine.close()
    return [e for e in events if e["type"] == "sentiment"], summary


@pytest.fixture(scope="module")
def faces_on(gallery, tiny_model, tiny_cfg):
    return asyncio.run(_analyse(tiny_cfg, tiny_model, gallery))


def _tile_box(tile: int) -> tuple[int, int, int, int]:
    tw, th = GALLERY_TILE
    return (tile % 2) * tw, (tile // 2) * th, (tile % 2 + 1) * tw, (tile // 2 + 1) * th


def test_gallery_two_stable_ids_a_third_comes_and_goes_boxes_in_their_tiles(faces_on, tiny_cfg):
    estimates, summary = faces_on
    hop = tiny_cfg.window.hop
    assert [e["t"] for e in estimates] == pytest.approx([hop * k for k in range(1, int(SECONDS / hop))])
    ids_by_tile: dict[int, set[int]] = {k: set() for k in range(4)}
    middle_seen = []
    for e in estimates:
        tiles = []
        for f in e["faces"]:
            assert set(f) == {"id", "bbox", "label", "probs", "score", "modalities", "n"}
            assert sum(f["probs"].values()) == pytest.approx(1.0, abs=1e-4)
            assert 1 <= f["n"] <= tiny_cfg.window.max_frames and f["modalities"]["image"]["n"] == f["n"]
            x, y, w, h = f["bbox"]
            tile = gallery_tile_of(x + w / 2, y + h / 2)
            x0, y0, x1, y1 = _tile_box(tile)
            assert x0 <= x and y0 <= y and x + w <= x1 and y + h <= y1, f"bbox {f['bbox']} leaves tile {tile}"
            assert w >= tiny_cfg.faces.min_size_px - 1
            ids_by_tile[tile].add(f["id"])
            tiles.append(tile)
        # The still and the moving face are in view in every estimate, one box each.
        assert sorted(t for t in tiles if t in (STILL, MOVING)) == [STILL, MOVING], (e["t"], e["faces"])
        assert EMPTY not in tiles
        if MIDDLE in tiles:
            middle_seen.append(e["t"])
    # One id each for the first two throughout (no new id, no swap between them) ...
    assert len(ids_by_tile[STILL]) == 1 and len(ids_by_tile[MOVING]) == 1
    assert ids_by_tile[STILL] != ids_by_tile[MOVING]
    # ... a third appears during the middle third only and is gone afterwards.
    assert len(ids_by_tile[MIDDLE]) == 1 and not ids_by_tile[MIDDLE] & (ids_by_tile[STILL] | ids_by_tile[MOVING])
    assert middle_seen and SECONDS / 3 <= min(middle_seen) and max(middle_seen) <= 2 * SECONDS / 3 + hop
    assert estimates[-1]["t"] > max(middle_seen)  # it disappeared before the end
    assert summary["latency"]["face_detect"]["count"] == summary["frames_processed"]


def test_faces_disabled_gives_no_faces_and_the_whole_frame_estimate_unchanged(faces_on, gallery, tiny_model, tiny_cfg):
    off_cfg = tiny_cfg.model_copy(update={"faces": tiny_cfg.faces.model_copy(update={"enabled": False})})
    off, summary = asyncio.run(_analyse(off_cfg, tiny_model, gallery))
    on, _ = faces_on
    assert off and all("faces" not in e for e in off)
    assert "face_detect" not in summary["latency"]
    # The whole-frame estimate stays as it is: same hops, same probabilities.
    assert [e["t"] for e in off] == [e["t"] for e in on]
    for a, b in zip(off, on):
        assert a["label"] == b["label"]
        for k in a["probs"]:
            assert a["probs"][k] == pytest.approx(b["probs"][k], abs=1e-5)


async def test_faces_and_frames_of_two_streams_share_clip_batches(tiny_model, tiny_cfg):
    # Stream A sends the 640x480 gallery, stream B the same scaled to 800x600: a batch's image
    # shapes tell whose frames are in it; face crops are far smaller than either.
    # Detection takes longer on the bigger frames: the image batcher waits long enough for both
    # streams (a batch closes at 64 items or 10 s); fusion keeps its short wait.
    cfg = tiny_cfg.model_copy(update={"engine": tiny_cfg.engine.model_copy(update={"max_wait_ms": 10_000.0, "max_batch": 64})})
    engine = ModelEngine(tiny_model, cfg.engine)
    engine.fusion.max_wait = tiny_cfg.engine.max_wait_ms / 1000
    shapes: list[list[tuple[int, ...]]] = []
    encode = engine._encode_images
    engine.images._fn = lambda imgs: (shapes.append([i.shape for i in imgs]), encode(imgs))[1]
    runtime = Runtime(cfg, engine)
    try:
        sessions = [StreamSession(n, runtime, lambda e: None, live=False, has_video=True, has_audio=False) for n in "ab"]
        runners = [asyncio.create_task(s.run()) for s in sessions]
        for i in range(4):  # 4 sampled frames (2 fps): the faces are confirmed from the second
            t = i * 0.5
            img = gallery_frame(t, SECONDS)
            await sessions[0].push_video(VideoFrame(t, img, 0.0))
            await sessions[1].push_video(VideoFrame(t, cv2.resize(img, (800, 600)), 0.0))
        for s in sessions:
            s.end_input()
        await asyncio.wait_for(asyncio.gather(*runners), 120)
    finally:
        await engine.close()
    a, b = (480, 640, 3), (600, 800, 3)
    shared = [s for s in shapes if a in s and b in s and any(x not in (a, b) for x in s)]
    assert shared, shapes
    crops = [x for s in shapes for x in s if x not in (a, b)]
    assert all(x[0] < 200 and x[1] < 200 for x in crops)


def test_overlay_boxes_each_face_in_its_label_colour_and_blurs_on_request():
    from stream.overlay import OverlayTracker, draw_overlay
    from stream.overlay.draw import _LABEL_COLOURS

    img = gallery_frame(0.0, SECONDS)
    face = {"id": 7, "bbox": [370.0, 20.0, 70.0, 70.0], "label": "positive", "score": 0.4, "probs": {}, "modalities": {}, "n": 3}
    event = {"type": "sentiment", "stream": "0", "t": 1.0, "label": "neutral", "score": 0.0, "probs": {}, "modalities": {}, "faces": [face]}
    inside = (slice(30, 80), slice(380, 430))  # the moving tile's face at t=0
    for blur in (False, True):
        tracker = OverlayTracker(blur_faces=blur)
        tracker.feed(event)
        out = draw_overlay(img, tracker.state())
        assert tuple(out[50, 370]) == _LABEL_COLOURS["positive"]  # the box's left edge
        assert tuple(out[20, 400]) == _LABEL_COLOURS["positive"]  # its top edge
        changed = np.abs(out[inside].astype(int) - img[inside].astype(int)).mean()
        assert (changed > 2.0) if blur else (changed == 0.0)
    tracker = OverlayTracker()
    tracker.feed({**event, "faces": []})
    assert np.array_equal(draw_overlay(img, tracker.state())[:, 330:], draw_overlay(img, OverlayTracker().state())[:, 330:])


def test_tracker_keeps_an_id_through_missed_detections_and_gives_a_returning_face_a_new_one():
    from stream.faces import FaceTracker

    tracker = FaceTracker(keep_lost_frames=3)
    a, b = np.array([100.0, 50, 48, 48]), np.array([420.0, 50, 48, 48])
    ids = []
    for i in range(14):
        boxes = [b] + ([a + [2 * i, 0, 0, 0]] if i not in (4, 5) and i < 8 or i >= 12 else [])
        ids.append({int(x // 320): tid for tid, (x, *_rest) in tracker.update(np.array(boxes))})
    assert ids[0] == {}  # a face's first frame only starts its track
    first_a, first_b = ids[1][0], ids[1][1]
    assert all(d[1] == first_b for d in ids[1:])  # b never loses its id
    assert all(d[0] == first_a for d in ids[1:8] if 0 in d) and 0 not in ids[4] and 0 not in ids[5]  # two misses survived
    assert ids[13][0] not in (first_a, first_b)  # gone for 4 frames: back with a new id


async def test_faces_max_keeps_the_largest(tiny_model, tiny_cfg):
    from stream.faces import FaceAnalyzer
    from stream.metrics import LatencyStats

    img = gallery_frame(0.0, SECONDS, tiles=("still", "moving", "still", "moving"))
    # The top-left photo (240x240 at x 40) enlarged 1.25x: its face is the largest of the four.
    img[:240, 10:310] = cv2.resize(img[:240, 40:280], (300, 300))[:240]
    engine = ModelEngine(tiny_model, tiny_cfg.engine)
    try:
        cfg = tiny_cfg.faces.model_copy(update={"max": 2})
        faces = FaceAnalyzer(cfg, engine, 8.0, 40, LatencyStats())
        for t in (0.0, 0.5):
            await asyncio.gather(*await faces.prepare([VideoFrame(t, img, 0.0)]))
        views = faces.views(0.5, WindowInput(torch.zeros(0, 64), torch.zeros(0)))
        assert len(views) == 2 and faces.detector.detect(img).shape[0] == 4
        widths = sorted(b[2] for b in faces.detector.detect(img).tolist())
        assert sorted(v.bbox[2] for v in views) == pytest.approx(widths[-2:], abs=3)
        assert any(gallery_tile_of(v.bbox[0] + v.bbox[2] / 2, v.bbox[1] + v.bbox[3] / 2) == 0 for v in views)
        gauge = lambda: REGISTRY.get_sample_value("sentistream_faces_tracked")  # noqa: E731
        assert gauge() == 2  # Prometheus: faces tracked in the newest frame
        faces.close()
        assert gauge() == 0
    finally:
        await engine.close()


def _iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix, iy = max(0.0, min(ax + aw, bx + bw) - max(ax, bx)), max(0.0, min(ay + ah, by + bh) - max(ay, by))
    return ix * iy / (aw * ah + bw * bh - ix * iy)


def test_large_frames_are_scanned_scaled_down_with_boxes_in_source_pixels():
    """A 1280x720 frame (the gallery at 1.5x, faces ~68 px) scanned at 800 px finds the same faces as
    the full-size scan, boxes in the frame's own pixels."""
    from models.face_detector import HaarFaceDetector

    frame = np.full((720, 1280, 3), 80, np.uint8)
    frame[:, 160:1120] = cv2.resize(gallery_frame(4.5, SECONDS), (960, 720), interpolation=cv2.INTER_LINEAR)
    full = HaarFaceDetector(40).detect(frame)
    scaled = HaarFaceDetector(40, max_side=800).detect(frame)
    assert len(full) == len(scaled) == 3  # still, moving and middle tiles (t = 4.5 s of 9)
    for a in full:
        assert max(_iou(a, b) for b in scaled) >= 0.7, (a, scaled)
    assert 60 < scaled[:, 2].min() and scaled[:, 2].max() < 80  # source pixels, not the scan's (~43 px)
