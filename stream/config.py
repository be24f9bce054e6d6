"""Configuration as data: YAML files validated by pydantic, plus `--set dotted.key=value` overrides.

Every command loads and validates its config before doing anything else; any problem is raised as
`ConfigError` with one line naming the key and what is allowed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class VisionConfig(_Section):
    """CLIP backbone: open_clip name + pretrained tag, a local file/dir, or `random`."""

    model: str = "ViT-B-32"
    pretrained: str = "laion2b_s34b_b79k"
    # Architecture as data for models open_clip does not ship (the tiny test CLIP).
    arch: Optional[dict[str, Any]] = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    cache_dir: Optional[str] = None


class FusionConfig(_Section):
    """The CLIP-CA-MSA fusion model on top of the frozen backbone."""

    layers: int = Field(2, ge=0, le=12)
    heads: int = Field(8, ge=1)
    ffn_mult: int = Field(2, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    time_embedding: bool = True
    uncertainty: bool = True  # False: plain mean of heads (the "no uncertainty" ablation)
    modalities: Literal["both", "image", "text"] = "both"
    checkpoint: Optional[str] = None


class WindowConfig(_Section):
    seconds: float = Field(8.0, gt=0)
    max_frames: int = Field(40, ge=1)
    hop: float = Field(0.5, gt=0)
    max_text_tokens: int = Field(75, ge=8, le=75)


class SamplerConfig(_Section):
    fps: float = Field(2.0, gt=0, le=60)


class AsrConfig(_Section):
    enabled: bool = True
    model: str = "bundled"  # bundled | faster-whisper model name | local CTranslate2 dir
    device: str = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = Field(0, ge=0)
    language: Optional[str] = "en"
    beam_size: int = Field(1, ge=1, le=10)
    chunk_seconds: float = Field(0.5, gt=0)  # live: a Whisper pass per this much new audio
    # Files (not live) need no low latency: a longer step means fewer passes (each costs a
    # padded 30 s window), so analysis runs well above real time with the same algorithm.
    file_chunk_seconds: float = Field(3.0, gt=0)
    # Words ending this close to the buffer's end wait a pass: they may still be cut short.
    settle_seconds: float = Field(0.5, ge=0, le=5)
    max_buffer_seconds: float = Field(15.0, gt=2, le=28)
    # Encoder window = buffer + this much padding (None: Whisper's full 30 s window every pass).
    encoder_pad_seconds: Optional[float] = Field(3.0, ge=0, le=30)
    vad: bool = True
    vad_threshold: float = Field(0.5, gt=0, lt=1)
    min_silence_ms: int = Field(500, ge=50)
    workers: int = Field(1, ge=1, le=16)
    # Passes of up to this many streams decoded together (needs encoder_pad_seconds); 1 = one at a time.
    batch: int = Field(1, ge=1, le=128)
    batch_wait_ms: float = Field(10.0, ge=0, le=1000)


class EngineConfig(_Section):
    max_batch: int = Field(16, ge=1)
    max_wait_ms: float = Field(5.0, ge=0)
    compile: bool = False
    text_cache_size: int = Field(256, ge=0)
    threads: int = Field(0, ge=0)  # torch intra-op threads; 0 = torch default


class PipelineConfig(_Section):
    video_queue: int = Field(4, ge=1)
    audio_queue_seconds: float = Field(10.0, gt=0)
    stream_name: str = "0"


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_clients: int = Field(8, ge=1)
    token: Optional[str] = None
    max_body_bytes: int = Field(256 * 1024, ge=1024)


class TrainConfig(_Section):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    patience: int = Field(5, ge=1)
    seed: int = 0
    frames_per_video: int = Field(8, ge=1)


class AppConfig(_Section):
    vision: VisionConfig = VisionConfig()
    model: FusionConfig = FusionConfig()
    window: WindowConfig = WindowConfig()
    sampler: SamplerConfig = SamplerConfig()
    asr: AsrConfig = AsrConfig()
    engine: EngineConfig = EngineConfig()
    pipeline: PipelineConfig = PipelineConfig()
    server: ServerConfig = ServerConfig()
    train: TrainConfig = TrainConfig()


class ConfigError(ValueError):
    """A user error in a config file or override: the message is one line, shown as is."""


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(root)"
    kind = first["type"]
    if kind == "extra_forbidden":
        return f"unknown config key '{key}'"
    allowed = first.get("ctx", {}).get("expected")
    msg = first["msg"]
    return f"bad value for '{key}': {msg}" + (f" (allowed: {allowed})" if allowed and "expected" not in msg.lower() else "")


def _parse_scalar(raw: str) -> Any:
    # YAML parsing gives ints, floats, bools, null and lists the way a user writes them in a file.
    try:
        return yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        return raw


def apply_override(data: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"--set expects dotted.key=value, got '{assignment}'")
    key, raw = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set expects dotted.key=value, got '{assignment}'")
    node = data
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"unknown config key '{key}': '{p}' is not a section")
        node = child
    value = _parse_scalar(raw)
    # Keys that take names/tags are strings even when they look like numbers or booleans.
    if parts[-1] in {"pretrained", "model", "stream_name", "token", "checkpoint", "language"} and value is not None:
        value = raw
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> AppConfig:
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p} (pass an existing YAML file to --config)")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            where = f" line {line + 1}" if line is not None else ""
            raise ConfigError(f"config file {p}{where} is not valid YAML") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections (vision:, model:, ...)")
        data = loaded
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        return AppConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def default_config_path() -> Path:
    """configs/default.yaml next to the package (source checkout) if present."""
    return Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
