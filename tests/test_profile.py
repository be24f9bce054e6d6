"""`sentistream profile` on a short generated clip with the tiny CLIP, and the bench script."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import av
import pytest

from scripts.media import make_speech_clip, make_video, require_tools
from stream.cli import main as cli_main
from stream.config import load_config
from stream.profile import STAGES, run_profile

ROOT = Path(__file__).parent.parent
TINY = ROOT / "configs" / "tiny-test.yaml"
REQUIRED = ("stages", "realtime_factor", "frames_in", "frames_dropped", "streams", "device", "peak_rss_mb",
            "gpu_peak_mb", "drift")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """4 s of 320x240 video at 15 fps with one spoken sentence (so asr/transcript_lag have samples)."""
    require_tools("espeak-ng", "ffmpeg")
    d = tmp_path_factory.mktemp("profile")
    wav, _ = make_speech_clip(["The weather is lovely today and the sun is shining."], 0.4, d / "speech.wav", wpm=170)
    return make_video(d / "clip.mp4", 4.0, audio=wav)


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    require_tools("espeak-ng")
    sentences = ["My brother likes to play football with his friends.", "We should finish the report before noon."]
    wav, _ = make_speech_clip(sentences, 0.6, tmp_path_factory.mktemp("speech") / "speech.wav", wpm=160)
    return wav


def test_whisper_passes_of_streams_are_batched(speech):
    # Three streams of the same speech in file mode race through it: their passes must meet in
    # shared Whisper batches, and every stream must still get its own full transcript.
    cfg = load_config(str(TINY), ["asr.batch=4", "asr.batch_wait_ms=50"])
    finals: dict[str, list[str]] = {}

    def collect(event: dict) -> None:
        if event["type"] == "transcript" and event["final"]:
            finals.setdefault(event["stream"], []).append(event["text"])

    result = asyncio.run(run_profile(cfg, str(speech), streams=3, on_event=collect))
    asr = result.report["batching"]["asr"]
    assert asr["items"] >= 3 and asr["max_batch"] >= 2, asr
    assert sorted(finals) == ["0", "1", "2"]
    for texts in finals.values():
        text = " ".join(texts).lower()
        assert "football" in text and "report" in text, texts
    assert not result.report["errors"]


def video_frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def test_profile_two_streams_json_table_plot(clip, tmp_path, capsys):
    out, png = tmp_path / "report.json", tmp_path / "hist.png"
    code = cli_main(["profile", "--source", str(clip), "--streams", "2", "--config", str(TINY),
                     "--json", str(out), "--plot", str(png)])
    assert code == 0
    report = json.loads(out.read_text())
    for key in REQUIRED:
        assert key in report, key
    assert report["streams"] == 2 and report["mode"] == "file"
    for stage in STAGES:
        row = report["stages"][stage]
        assert row["count"] > 0, (stage, row)
        assert 0 <= row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"], (stage, row)
    # Every stream reads the whole file: decoded + never-decoded frames (after a GOP's last kept
    # frame) are exactly one stream's frame count, and some were skipped (keyframe every second).
    n = video_frames(clip)
    assert report["frames_in"] + report["frames_undecoded"] == 2 * n and report["frames_undecoded"] > 0
    assert [s["frames_in"] + s["frames_undecoded"] for s in report["per_stream"]] == [n] * 2
    assert report["stages"]["decode"]["count"] == report["frames_in"]
    assert report["frames_dropped"] == 0  # files apply back-pressure, never drop
    assert report["realtime_factor"] > 0 and report["peak_rss_mb"] > 50
    assert report["gpu_peak_mb"] is None and report["device"]
    assert report["drift"] and report["drift"][0]["minute"] == 1 and report["drift"][0]["p95_ms"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    lines = table.strip().splitlines()
    assert lines[0].split()[:2] == ["stage", "count"] and len(lines) >= 1 + len(STAGES)
    assert not any(line.startswith("{") for line in lines)  # stdout is the table only


def test_engine_batches_across_streams(clip):
    """4 paced streams share one engine: their frames arrive together and go through CLIP as one
    batch. Paced, each stream submits one frame per 0.5 s, so a batch > 1 holds several streams."""
    cfg = load_config(TINY, ["engine.max_wait_ms=30", "asr.enabled=false"])
    result = asyncio.run(run_profile(cfg, str(clip), streams=4, realtime=True, duration=1.6))
    (runtime,) = result.runtimes
    sizes = runtime.engine.images.batch_sizes
    assert max(sizes) > 1, sizes
    assert result.report["batching"]["clip_image"]["max_batch"] == max(sizes)
    assert result.report["mode"] == "paced"
    # --duration stops each source: ~1.6 s of media per stream (frames kept at 0, 0.5, 1 and 1.5 s),
    # not the whole 4 s; of its 15 fps only what those frames depend on is decoded.
    rows = result.report["per_stream"]
    assert all(s["frames_processed"] == 4 and 8 <= s["frames_in"] <= 26 for s in rows), rows


def test_bad_arguments_are_user_errors(clip, capsys):
    assert cli_main(["profile", "--source", str(clip), "--streams", "0", "--config", str(TINY)]) == 2
    assert "--streams" in capsys.readouterr().err
    assert cli_main(["profile", "--source", str(clip), "--duration", "-1", "--config", str(TINY)]) == 2
    assert cli_main(["profile", "--source", "/nonexistent.mp4", "--config", str(TINY)]) == 2


@pytest.mark.slow
def test_bench_quick(tmp_path):
    require_tools("espeak-ng", "ffmpeg")
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--config", str(TINY),
                           "--json", str(out)], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    clip_b = data["clip_batching"]
    assert clip_b["batch1_fps"] > 0 and clip_b["batched_fps"] > 0 and clip_b["ratio"] > 0
    rows = data["engine_sharing"]["rows"]
    assert {r["streams"] for r in rows} == {1, 2} and {r["engine"] for r in rows} == {"shared", "per-stream"}
    assert all(r["frames_per_second"] > 0 and r["peak_rss_mb"] > 0 for r in rows)
    asr = data["asr"]
    assert 0 <= asr["streaming"]["wer"] <= 1 and 0 <= asr["offline"]["wer"] <= 1
    assert asr["streaming"]["lag_p95_ms"] > 0
    assert asr["streaming_full_window"]["passes"] > 0 and asr["pass_p50_ratio_full_over_short"] > 0
    batching = data["asr_batching"]["rows"]
    assert [r["asr_batch"] for r in batching] == [1, 2] and all(r["lag_p95_ms"] > 0 for r in batching)
    md = out.with_suffix(".md").read_text()
    assert "| streams |" in md and "WER" in md and "stock 30 s window" in md


def test_bench_cuda_fails_clearly_without_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--cuda", "--json", str(tmp_path / "g.json")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert "CUDA" in proc.stderr and "GPU" in proc.stderr
    assert not (tmp_path / "g.json").exists()
