"""Application configuration: the model library's sections (models.config) plus the app's own
(asr, engine, pipeline, server), loaded from YAML with `--set dotted.key=value` overrides.

Every command loads and validates its config before doing anything else; any problem is raised as
`ConfigError` with one line naming the key and what is allowed.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from pydantic import Field, ValidationInfo, field_validator, model_validator

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
    cpu_threads: int = Field(0, ge=0, le=1024)
    # A Whisper language code ("en", "de", ...; other than "en" needs asr.model=multilingual) or
    # "auto" (detected every pass; 30 s encoder windows, ~7x the pass cost of a fixed language).
    language: Optional[str] = "en"
    beam_size: int = Field(1, ge=1, le=10)
    # The decode that commits everything before a pause (rare: once per utterance); null: beam_size.
    # Tuning half of scripts/asr_replay.py: file-mode WER 0.255 -> 0.174 with the retry below, live unchanged.
    commit_beam_size: Optional[int] = Field(5, ge=1, le=10)
    # A decode that leaves this much of the uncommitted speech unheard (a word stretched over it, nothing
    # before/after, or no word at all) skipped it: decode the buffer again alone, without the committed-text
    # prompt, forced prefix or context audio, and keep the decode that heard more (null: never).
    retry_skipped_seconds: Optional[float] = Field(1.5, gt=0, le=30)
    chunk_seconds: float = Field(0.5, gt=0, le=30)  # live: a Whisper pass per this much new audio
    # Files (not live) need no low latency: a longer step means fewer passes (each costs a
    # padded 30 s window), so analysis runs well above real time with the same algorithm.
    file_chunk_seconds: float = Field(3.0, gt=0, le=30)
    # Words ending this close to the buffer's end wait a pass: they may still be cut short.
    settle_seconds: float = Field(0.5, ge=0, le=5)
    # A word either of two agreeing passes heard with a lower probability waits (for a pause's
    # commit, a surer pass, or max_word_age_seconds); 0: agreement alone decides. Agreed words
    # under 0.2 were wrong 10 times in 12 on the tuning half of scripts/asr_replay.py.
    hold_probability: float = Field(0.5, ge=0, le=1)
    # Live lag bound: a word ending this long before the buffer's end is final as the commit decode
    # (commit_beam_size) hears it, agreed or not (null: only agreement, a pause or the buffer limit
    # commit words). Files ignore it. 1.2 s: finals at most ~1.7 s + a pass's compute after the word.
    max_word_age_seconds: Optional[float] = Field(1.2, gt=0, le=30)
    # Each pass also decodes up to this much already-committed audio before the buffer, with the
    # committed words from there on forced as the decoder's prefix, so the start of a sentence (after
    # a trim or a pause) is not decoded without acoustic context (null: the committed text as a
    # prompt only). Short encoder window only (encoder_pad_seconds set, a fixed language).
    context_seconds: Optional[float] = Field(None, gt=0, le=10)
    # The same for the commit decodes only (at a pause, at the age bound); null: as context_seconds.
    # configs/default.yaml: 2 s with commit_model multilingual (docs/benchmarks.md, "Transcription").
    commit_context_seconds: Optional[float] = Field(None, ge=0, le=10)
    max_buffer_seconds: float = Field(15.0, gt=2, le=28)
    # Encoder window = buffer + this much padding (None: Whisper's full 30 s window every pass).
    encoder_pad_seconds: Optional[float] = Field(3.0, ge=0, le=30)
    # The Whisper model for the commit decodes only (the decode that commits at a pause, and the one
    # that commits words reaching max_word_age_seconds): null = asr.model; bundled | multilingual (Whisper
    # base, in asr.language) | a name or CTranslate2 dir. The frequent agreement passes stay on asr.model.
    # Needs the short encoder window and a fixed language.
    commit_model: Optional[str] = None
    vad: bool = True
    vad_threshold: float = Field(0.5, gt=0, lt=1)
    min_silence_ms: int = Field(500, ge=50, le=60_000)
    workers: int = Field(1, ge=1, le=16)
    # Passes of up to this many streams decoded together (needs encoder_pad_seconds); 1 = one at a time.
    batch: int = Field(1, ge=1, le=128)
    batch_wait_ms: float = Field(10.0, ge=0, le=1000)

    @field_validator("language")
    @classmethod
    def _language(cls, value: Optional[str]) -> Optional[str]:
        value = (value or "auto").strip().lower()
        return None if value == "auto" else value

    @field_validator("commit_model")
    @classmethod
    def _commit_model(cls, value: Optional[str], info: ValidationInfo) -> Optional[str]:
        if value is None:
            return None
        value = value.strip()
        if not value:
            raise ValueError("empty: use null (same as asr.model), bundled, multilingual, or a model name or directory")
        if info.data.get("encoder_pad_seconds", 3.0) is None:
            raise ValueError("needs the short encoder window: set asr.encoder_pad_seconds (e.g. 3.0) or asr.commit_model=null")
        if "language" in info.data and info.data["language"] is None:
            raise ValueError("needs a fixed asr.language (e.g. en), not auto, or asr.commit_model=null")
        return value

    @property
    def auto_language(self) -> bool:
        return self.language is None


def file_asr_config(asr: AsrConfig) -> AsrConfig:
    """The transcriber's settings for a file: no low latency needed, so a longer step (fewer passes,
    same algorithm) and no lag bound (words wait for agreement or a pause however long it takes)."""
    return asr.model_copy(update={"chunk_seconds": asr.file_chunk_seconds, "max_word_age_seconds": None})


class EngineConfig(Section):
    max_batch: int = Field(16, ge=1, le=1024)
    max_wait_ms: float = Field(5.0, ge=0, le=1000)
    # A CLIP image batch is cut so that it should last at most this long (from a running per-frame
    # cost): fusion requests, which go first, never wait behind a long batch. 0: count only.
    max_batch_ms: float = Field(250.0, ge=0, le=60_000)
    # A window text that changed only in its partial words (or lost old words at its start) is
    # re-encoded by CLIP at most every N hops; new final words at once. 1: every change.
    partial_text_every: int = Field(2, ge=1, le=100)
    compile: bool = False
    text_cache_size: int = Field(256, ge=0, le=1_000_000)
    threads: int = Field(0, ge=0, le=1024)  # torch intra-op threads; 0 = torch default


class PipelineConfig(Section):
    video_queue: int = Field(4, ge=1, le=1024)
    # Live: a frame older than this (since it entered the pipeline) when CLIP would take it is
    # dropped and counted (frames_stale), whatever the queue depth. 0: never. Files never drop.
    max_frame_age_ms: float = Field(1000.0, ge=0, le=600_000)
    # Live: when frames go stale the stream's sampler slows down to no less than this (frames/s),
    # and speeds back up to sampler.fps once the engine keeps up.
    min_sampler_fps: float = Field(0.5, gt=0, le=60)
    audio_queue_seconds: float = Field(10.0, gt=0, le=600)
    stream_name: str = "0"


_ORIGIN_RE = re.compile(r"https?://(\[[0-9a-fA-F:.]+\]|[^\s/:?#\[\]@]+)(:\d{1,5})?/?")
_HOST_RE = re.compile(r"[A-Za-z0-9.-]+|[0-9a-fA-F:.]+")


class ServerConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_clients: int = Field(8, ge=1, le=4096)
    token: Optional[str] = None
    max_body_bytes: int = Field(256 * 1024, ge=1024, le=64 * 1024 * 1024)
    # An answered offer whose peer never connects frees its slot after this long (replayed offers).
    connect_timeout_s: float = Field(10.0, gt=0, le=300)
    # A connected peer whose media and data channel both stay silent this long is closed (killed browser).
    media_timeout_s: float = Field(5.0, gt=0, le=300)
    # A {"type": "heartbeat"} message on every call's data channel this often (0: none): a page that
    # hears nothing for a few of these knows its server (or cluster replica) is gone and reconnects.
    heartbeat_s: float = Field(1.0, ge=0, le=60)
    max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1024)  # POST /analyze body (413 beyond)
    max_message_bytes: int = Field(1024 * 1024, ge=1024)  # one WebSocket message (a JPEG frame, an audio chunk)
    max_frame_rate: float = Field(30.0, gt=0, le=240)  # WebSocket video frames/s per stream; excess dropped, counted
    audio_lead_s: float = Field(2.0, ge=0.1, le=60)  # WebSocket audio more than this ahead of real time is refused
    # Pending + live connections from one IP; never more than the server's slots (max_clients).
    max_clients_per_address: int = Field(4, ge=1, le=4096)
    # GET /ws: a client that sends no start message this long after connecting is closed (bad_message).
    start_timeout_s: float = Field(30.0, gt=0, le=300)
    # Host header values served besides localhost names and the bound address (DNS rebinding guard).
    allowed_hosts: list[str] = []
    # Origins (scheme://host[:port]) other than the page's own that may POST an offer or open a stream.
    allowed_origins: list[str] = []
    # Client video larger than this is scaled down (aspect kept) before analysis and overlay drawing.
    max_video_width: int = Field(1280, ge=16, le=7680)
    max_video_height: int = Field(720, ge=16, le=4320)

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if not _ORIGIN_RE.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin: write scheme://host[:port], e.g. https://app.example.com")
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for host in value:
            if not _HOST_RE.fullmatch(host):
                raise ValueError(f"{host!r} is not a host name: write the name only, without scheme or port")
        return value


class FacesConfig(Section):
    """Per-person estimates: faces detected (OpenCV Haar cascade), tracked (ByteTrack) and embedded
    like frames; each face gets its own frame window and estimate next to the whole-frame one."""

    enabled: bool = True
    max: int = Field(4, ge=1, le=32)  # faces embedded per frame, largest first
    min_size_px: int = Field(40, ge=16, le=1024)  # smaller faces (in source pixels) are ignored
    # Frames larger than this (longer side, px) are scanned for faces scaled down to it (0: full size):
    # 720p in ~0.6x the time. The cascade finds faces reliably from ~40 px at the scan scale (~64 px
    # in 720p, ~96 px in 1080p; at 640 it missed 68 px faces in 720p): see docs/faces.md.
    detect_max_side: int = Field(800, ge=0, le=16384)
    margin: float = Field(0.25, ge=0, le=1)  # crop = bbox grown by this fraction of its size on each side
    blur_in_overlay: bool = False  # privacy: blur every tracked face in written overlays
    # Sampled frames a face may go undetected and keep its id (the tracker's lost-track buffer).
    keep_lost_frames: int = Field(3, ge=0, le=100)


class ClusterConfig(Section):
    """`serve --ray` / `run --ray`: Analyzer replicas on a Ray cluster (stream/cluster, docs/scale-out.md).
    Each replica owns what one process owns today: the engine, Whisper and its streams."""

    gpus_per_replica: float = Field(0.0, ge=0, le=64)  # Ray num_gpus of one Analyzer replica (1: a GPU each)
    cpus_per_replica: float = Field(1.0, gt=0, le=1024)  # Ray num_cpus of one Analyzer replica
    max_streams_per_replica: int = Field(8, ge=1, le=4096)  # offers/sources placed on one replica at most
    min_replicas: int = Field(1, ge=1, le=1024)
    max_replicas: int = Field(4, ge=1, le=1024)
    # A replica is asked for its load (streams, capacity, metrics) this often; placement and
    # /healthz see it at most about this old (plus Serve's broadcast delay).
    stats_period_s: float = Field(1.0, gt=0, le=60)

    @model_validator(mode="after")
    def _bounds(self) -> "ClusterConfig":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas}): "
                             "raise cluster.max_replicas or lower cluster.min_replicas")
        return self


class AppConfig(ModelConfig):
    asr: AsrConfig = AsrConfig()
    faces: FacesConfig = FacesConfig()
    engine: EngineConfig = EngineConfig()
    pipeline: PipelineConfig = PipelineConfig()
    server: ServerConfig = ServerConfig()
    cluster: ClusterConfig = ClusterConfig()


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> AppConfig:
    return _load(path, overrides, AppConfig)


def default_config_path() -> Path:
    """configs/default.yaml next to the package (source checkout) if present."""
    return Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
