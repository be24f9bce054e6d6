"""Application configuration: the model library's sections (models.config) plus the app's own
(asr, engine, pipeline, server), loaded from YAML with `--set dotted.key=value` overrides.

Every command loads and validates its config before doing anything else; any problem is raised as
`ConfigError` with one line naming the key and what is allowed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import Field, field_validator

from models.config import (  # noqa: F401  (re-exported: the app's config is the model's plus its own)
    FusionConfig,
    ModelConfig,
    SamplerConfig,
    Section,
    TrainConfig,
    VisionConfig,
    WindowConfig,
)
from models.config import load_config as _load
from models.errors import ConfigError  # noqa: F401


class AsrConfig(Section):
    enabled: bool = True
    model: str = "bundled"  # bundled | faster-whisper model name | local CTranslate2 dir
    device: str = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = Field(0, ge=0)
    # A Whisper language code ("en", "de", ...; other than "en" needs asr.model=multilingual) or
    # "auto" (detected every pass; 30 s encoder windows, ~7x the pass cost of a fixed language).
    language: Optional[str] = "en"
    beam_size: int = Field(1, ge=1, le=10)
    # The decode that commits everything before a pause (rare: once per utterance); null: beam_size.
    # Tuning half of scripts/asr_replay.py: file-mode WER 0.255 -> 0.174 with the retry below, live unchanged.
    commit_beam_size: Optional[int] = Field(5, ge=1, le=10)
    # A pass that leaves this much of the uncommitted speech unheard (a word stretched over it, or
    # nothing before/after) skipped it: decode it again without the committed-text prompt (null: never).
    retry_skipped_seconds: Optional[float] = Field(1.5, gt=0)
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

    @field_validator("language")
    @classmethod
    def _language(cls, value: Optional[str]) -> Optional[str]:
        value = (value or "auto").strip().lower()
        return None if value == "auto" else value

    @property
    def auto_language(self) -> bool:
        return self.language is None


class EngineConfig(Section):
    max_batch: int = Field(16, ge=1)
    max_wait_ms: float = Field(5.0, ge=0)
    compile: bool = False
    text_cache_size: int = Field(256, ge=0)
    threads: int = Field(0, ge=0)  # torch intra-op threads; 0 = torch default


class PipelineConfig(Section):
    video_queue: int = Field(4, ge=1)
    audio_queue_seconds: float = Field(10.0, gt=0)
    stream_name: str = "0"


class ServerConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_clients: int = Field(8, ge=1)
    token: Optional[str] = None
    max_body_bytes: int = Field(256 * 1024, ge=1024)
    connect_timeout_s: float = Field(30.0, gt=0, le=300)  # an answered offer that never connects frees its slot


class AppConfig(ModelConfig):
    asr: AsrConfig = AsrConfig()
    engine: EngineConfig = EngineConfig()
    pipeline: PipelineConfig = PipelineConfig()
    server: ServerConfig = ServerConfig()


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> AppConfig:
    return _load(path, overrides, AppConfig)


def default_config_path() -> Path:
    """configs/default.yaml next to the package (source checkout) if present."""
    return Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
