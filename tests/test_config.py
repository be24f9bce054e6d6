"""Config validation, `--set` overrides, CLI error reporting and CLIP weight resolution."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.errors import UserError
from stream import cli
from stream.config import AppConfig, ConfigError, load_config

ROOT = Path(__file__).parent.parent
CONFIGS = ROOT / "configs"


@pytest.mark.parametrize("name", ["default.yaml", "edge.yaml", "quality.yaml", "gpu.yaml", "tiny-test.yaml"])
def test_shipped_configs_validate(name):
    cfg = load_config(CONFIGS / name)
    assert isinstance(cfg, AppConfig)


def test_shipped_config_values():
    assert load_config(CONFIGS / "gpu.yaml").vision.precision == "fp16"
    tiny = load_config(CONFIGS / "tiny-test.yaml")
    assert tiny.vision.pretrained == "random" and tiny.vision.arch["embed_dim"] == 64
    assert load_config(None) == AppConfig()


def test_unknown_key_from_set():
    with pytest.raises(ConfigError, match="unknown config key 'foo"):
        load_config(CONFIGS / "tiny-test.yaml", ["foo.bar=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.layerz'"):
        load_config(CONFIGS / "tiny-test.yaml", ["model.layerz=3"])


def test_unknown_key_in_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  layers: 1\n  hedas: 4\n")
    with pytest.raises(ConfigError, match=r"model\.hedas") as err:
        load_config(p)
    assert "\n" not in str(err.value)


def test_bad_values_name_key_and_allowed():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["window.hop=-1"])
    assert "window.hop" in str(err.value) and "greater than 0" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(None, ["vision.precision=fp8"])
    msg = str(err.value)
    assert "vision.precision" in msg and all(v in msg for v in ("auto", "fp32", "fp16", "bf16"))
    with pytest.raises(ConfigError, match=r"model\.layers"):
        load_config(None, ["model.layers=lots"])


def test_set_overrides_and_string_keys():
    cfg = load_config(CONFIGS / "default.yaml", ["vision.pretrained=random", "model.layers=3", "window.hop=0.25"])
    assert cfg.vision.pretrained == "random" and cfg.model.layers == 3 and cfg.window.hop == 0.25
    for raw in ("123", "1e3", "true", "2.0"):
        cfg = load_config(None, [f"vision.pretrained={raw}"])
        assert cfg.vision.pretrained == raw and isinstance(cfg.vision.pretrained, str)
    assert load_config(None, ["pipeline.stream_name=7"]).pipeline.stream_name == "7"
    assert load_config(None, ["model.checkpoint=null"]).model.checkpoint is None
    # a later --set wins over an earlier one and over the file
    assert load_config(CONFIGS / "tiny-test.yaml", ["model.layers=2", "model.layers=0"]).model.layers == 0


def test_malformed_set():
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_config(None, ["model.layers"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(CONFIGS / "tiny-test.yaml", ["window.hop.x=1"])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  layers: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_config(bad)
    assert "\n" not in str(err.value)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == AppConfig()


# ---------------------------------------------------------------- CLI


def _cli_error(capsys, argv):
    code = cli.main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    return lines[0]


def test_cli_config_errors(capsys, tmp_path):
    tiny = str(CONFIGS / "tiny-test.yaml")
    assert "foo" in _cli_error(capsys, ["run", "--source", "demo", "--config", tiny, "--set", "foo.bar=1"])
    assert "window.hop" in _cli_error(capsys, ["profile", "--source", "demo", "--config", tiny, "--set", "window.hop=-1"])
    assert "vision.precision" in _cli_error(capsys, ["serve", "--config", tiny, "--set", "vision.precision=fp8"])
    assert "not found" in _cli_error(capsys, ["train", "--data", "x", "--out", "y", "--config", str(tmp_path / "missing.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("vision: {model: [\n")
    assert "YAML" in _cli_error(capsys, ["evaluate", "--checkpoint", "c", "--data", "d", "--config", str(bad)])


def test_cli_subprocess_error_and_help(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "stream.cli", "run", "--source", "demo", "--config", str(tmp_path / "no.yaml")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    script = Path(sys.executable).parent / "sentistream"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "stream.cli"]
    r = subprocess.run([*cmd, "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for command in ("run", "serve", "profile", "train", "evaluate"):
        assert command in r.stdout


# ---------------------------------------------------------------- CLIP weights


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and an empty cache: pretrained weights cannot be had."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    try:
        import huggingface_hub.constants as hf_constants
    except ImportError:  # pragma: no cover
        hf_constants = None
    if hf_constants is not None:  # read at import time: patch the live value as well
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True, raising=False)
    return tmp_path / "clip-cache"


def _vision(*overrides):
    return load_config(None, ["vision.device=cpu", *overrides]).vision


def test_pretrained_unavailable_offline(offline):
    from models.backbone import WeightsUnavailable, create_backbone

    with pytest.raises(WeightsUnavailable) as err:
        create_backbone(_vision("vision.model=ViT-B-32", "vision.pretrained=laion2b_s34b_b79k", f"vision.cache_dir={offline}"))
    msg = str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in msg
    assert "ViT-B-32" in msg and "laion2b_s34b_b79k" in msg
    assert "online" in msg and "download" in msg  # way 1: go online once
    assert "vision.pretrained=/path" in msg  # way 2: a local file/dir


def test_nonexistent_local_weights(tmp_path):
    from models.backbone import WeightsUnavailable, create_backbone

    missing = tmp_path / "weights" / "clip.safetensors"
    with pytest.raises(WeightsUnavailable, match="not found") as err:
        create_backbone(_vision(f"vision.pretrained={missing}"))
    assert str(missing) in str(err.value)
    empty_dir = tmp_path / "snapshot"
    empty_dir.mkdir()
    with pytest.raises(WeightsUnavailable, match="open_clip_config.json"):
        create_backbone(_vision(f"vision.pretrained={empty_dir}"))


def test_unknown_pretrained_tag_lists_known():
    from models.backbone import create_backbone

    with pytest.raises(UserError, match="unknown pretrained tag 'nosuchtag'") as err:
        create_backbone(_vision("vision.pretrained=nosuchtag"))
    assert "laion2b_s34b_b79k" in str(err.value) and "openai" in str(err.value)


def test_unknown_model_and_bad_precision():
    from models.backbone import create_backbone

    with pytest.raises(UserError, match="unknown CLIP model 'NoSuchNet'"):
        create_backbone(_vision("vision.model=NoSuchNet", "vision.pretrained=random"))
    with pytest.raises(UserError, match="GPU"):
        create_backbone(_vision("vision.precision=fp16", "vision.pretrained=random"))


# ------------------------------------------------------------------------------ issue 15: probing
def test_unknown_key_names_the_dotted_key_and_its_sections_keys(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "tiny-test.yaml", ["window.hopp=1"])
    assert str(err.value) == "unknown config key 'window.hopp' (allowed in window: seconds, max_frames, hop, max_text_tokens)"
    with pytest.raises(ConfigError) as err:
        load_config(None, ["foo.bar=1"])
    assert "'foo.bar'" in str(err.value) and "allowed sections: vision, model, experts, window" in str(err.value)
    p = tmp_path / "c.yaml"
    p.write_text("asr:\n  beam: 2\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'asr\.beam' \(allowed in asr: enabled, model, .*beam_size"):
        load_config(p)


@pytest.mark.parametrize("key", ["engine.max_wait_ms", "pipeline.audio_queue_seconds", "window.hop", "window.seconds",
                                 "asr.chunk_seconds", "train.lr", "server.connect_timeout_s", "model.dropout"])
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_floats_must_be_finite(key, value, tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{key}={value}"])
    assert str(err.value) == f"bad value for '{key}': must be a finite number (not inf or nan)"
    p = tmp_path / "c.yaml"
    section, name = key.split(".")
    p.write_text(f"{section}:\n  {name}: {value}\n")
    with pytest.raises(ConfigError, match=f"'{key}': must be a finite number"):
        load_config(p)


@pytest.mark.parametrize("assignment", ["engine.max_wait_ms=1e9", "pipeline.audio_queue_seconds=1e12", "window.hop=1e6",
                                        "window.seconds=1e9", "pipeline.video_queue=100000000", "engine.max_batch=10000000",
                                        "server.max_body_bytes=100000000000", "window.max_frames=1000000"])
def test_sizes_that_break_the_pipeline_are_bounded(assignment):
    key = assignment.split("=")[0]
    with pytest.raises(ConfigError, match=rf"bad value for '{key}': Input should be less than or equal to"):
        load_config(None, [assignment])


def test_heads_that_do_not_divide_the_width_are_a_config_error(tiny_cfg):
    from models.factory import build_model

    cfg = tiny_cfg.model_copy(update={"model": tiny_cfg.model.model_copy(update={"heads": 7})})
    with pytest.raises(ConfigError) as err:
        build_model(cfg)
    assert str(err.value) == "model.heads=7 must divide the CLIP embedding size 64 (use one of 1, 2, 4, 8, 16, 32, 64)"


def test_cli_config_probes_exit_2_with_one_line(repo_root, tmp_path):
    """Through the command line: one line, exit 2, before anything runs (and no traceback for model.heads)."""
    for assignment, needle in [("engine.max_wait_ms=.inf", "engine.max_wait_ms"), ("window.hop=.inf", "window.hop"),
                               ("model.heads=7", "model.heads=7")]:
        res = subprocess.run([sys.executable, "-m", "stream.cli", "run", "--source", str(repo_root / "samples" / "demo.mp4"),
                              "--config", str(CONFIGS / "tiny-test.yaml"), "--set", assignment, "--output", str(tmp_path / "e.jsonl")],
                             capture_output=True, text=True, timeout=120, cwd=repo_root)
        assert res.returncode == 2, (assignment, res.stderr)
        assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1 and needle in res.stderr, res.stderr
        assert not (tmp_path / "e.jsonl").exists()
