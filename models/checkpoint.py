"""Checkpoints: safetensors tensors + the config needed to rebuild the model (never pickle)."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .errors import UserError

log = logging.getLogger(__name__)
FORMAT = "sentistream-checkpoint/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
META_FILE = "meta.json"
# Fusion settings that change the tensors' shapes or the model's meaning: must match to load.
ARCH_KEYS = ("layers", "heads", "ffn_mult", "time_embedding", "modalities", "uncertainty")


def save_checkpoint(out_dir: str | Path, fusion: torch.nn.Module, cfg: ModelConfig, embed_dim: int, extra: dict[str, Any] | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in fusion.state_dict().items()}
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": FORMAT})
    (out / CONFIG_FILE).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    meta = {
        "format": FORMAT,
        "backbone": {"model": cfg.vision.model, "pretrained": cfg.vision.pretrained, "embed_dim": embed_dim},
        "fusion": {k: getattr(cfg.model, k) for k in ARCH_KEYS},
        **(extra or {}),
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    return out


def read_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    d = Path(ckpt_dir)
    if not d.is_dir():
        raise UserError(f"checkpoint not found: {d} (expected a directory written by 'sentistream train')")
    meta_path = d / META_FILE
    if not meta_path.is_file() or not (d / WEIGHTS_FILE).is_file():
        raise UserError(f"{d} is not a sentistream checkpoint: it needs {WEIGHTS_FILE} and {META_FILE}")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"checkpoint metadata {meta_path} is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"checkpoint {d} has unknown format {meta.get('format') if isinstance(meta, dict) else None!r} (expected {FORMAT})")
    _check_meta_types(meta, meta_path)
    return meta


# What load_checkpoint reads from meta.json, with the JSON type each field must have.
_META_TYPES: dict[str, dict[str, tuple[type, ...]]] = {
    "backbone": {"model": (str,), "pretrained": (str,), "embed_dim": (int,)},
    "fusion": {"layers": (int,), "heads": (int,), "ffn_mult": (int,), "time_embedding": (bool,),
               "modalities": (str,), "uncertainty": (bool,)},
}
_JSON_NAMES = {str: "a string", int: "an integer", bool: "true or false", dict: "an object"}


def _check_meta_types(meta: dict[str, Any], path: Path) -> None:
    """A field of the wrong JSON type is a one-line UserError naming it (not an AttributeError later)."""
    for section, fields in _META_TYPES.items():
        value = meta.get(section)
        if not isinstance(value, dict):
            raise UserError(f"{path}: '{section}' must be {_JSON_NAMES[dict]} (got {type(value).__name__}); "
                            "the checkpoint metadata is damaged")
        for key, types in fields.items():
            got = value.get(key)
            # bool is an int in Python but not in JSON: an integer field refuses true/false.
            if not isinstance(got, types) or (bool not in types and isinstance(got, bool)):
                raise UserError(f"{path}: '{section}.{key}' must be {_JSON_NAMES[types[0]]} (got {json.dumps(got)[:40]}); "
                                "the checkpoint metadata is damaged")


def load_checkpoint(ckpt_dir: str | Path, fusion: torch.nn.Module, cfg: ModelConfig, embed_dim: int) -> dict[str, Any]:
    """Loads tensors into `fusion` after checking backbone and architecture against `cfg`."""
    d = Path(ckpt_dir)
    meta = read_meta(d)
    backbone = meta.get("backbone", {})
    if backbone.get("model") != cfg.vision.model or backbone.get("embed_dim") != embed_dim:
        raise UserError(
            f"checkpoint {d} was trained on CLIP {backbone.get('model')} (dim {backbone.get('embed_dim')}) but the config "
            f"uses {cfg.vision.model} (dim {embed_dim}): use the training config (--config {d / CONFIG_FILE})"
        )
    trained_on = backbone.get("pretrained")
    if trained_on != cfg.vision.pretrained and "random" in (trained_on, cfg.vision.pretrained):
        # Features of random and pretrained CLIP share nothing: such a fusion would be meaningless.
        raise UserError(f"checkpoint {d} was trained on CLIP weights '{trained_on}' but the config uses "
                        f"'{cfg.vision.pretrained}': --set vision.pretrained={trained_on}")
    if trained_on != cfg.vision.pretrained:
        log.warning("checkpoint %s was trained with CLIP weights %s, the config uses %s", d, trained_on, cfg.vision.pretrained)
    for key in ARCH_KEYS:
        want = meta.get("fusion", {}).get(key)
        have = getattr(cfg.model, key)
        if want != have:
            raise UserError(f"checkpoint {d} has model.{key}={want} but the config says {have}: --set model.{key}={want} or use --config {d / CONFIG_FILE}")
    try:
        tensors = load_file(str(d / WEIGHTS_FILE), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"checkpoint weights {d / WEIGHTS_FILE} are unreadable ({str(exc).splitlines()[0][:120]})") from None
    expected = fusion.state_dict()
    if "expert_log_vars" in expected and "expert_log_vars" not in tensors:
        # Trained before the experts' heads existed: they start from s = 0, as untrained.
        log.info("checkpoint %s predates the experts' heads: their log-variances start at 0", d)
        tensors["expert_log_vars"] = expected["expert_log_vars"].detach().cpu().clone()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise UserError(f"checkpoint {d} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise UserError(f"checkpoint {d} tensor '{name}' has shape {tuple(tensor.shape)}, model expects {tuple(expected[name].shape)}")
    fusion.load_state_dict(tensors)
    return meta
