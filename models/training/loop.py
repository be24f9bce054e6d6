"""Training the CLIP-CA-MSA fusion model on cached frozen-CLIP features.

Recipe: the uncertainty loss over the image/text/fused heads, AdamW (no decay on gates, biases,
norms and log-variances), early stopping on the valid split (weighted F1, ties broken by the
fused prediction's NLL), all randomness seeded per epoch so a resumed run is the run it continues.
Each epoch appends to `train_log.jsonl` and saves `last.safetensors` (weights + optimizer moments)
and `state.json`; the best epoch so far is always the checkpoint in the directory, so an
interrupted run leaves a usable model and `train` on the same directory continues it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..backbone import resolve_device
from ..checkpoint import WEIGHTS_FILE, load_checkpoint, save_checkpoint
from ..config import ModelConfig
from ..errors import UserError
from ..factory import build_fusion
from ..fusion import ClipCaMsa
from ..uncertainty import uncertainty_loss
from .feature_cache import FeatureSet
from .metrics import classification_metrics, confusion_matrix, run_heads
from .plots import plot_confusion, plot_curves

log = logging.getLogger(__name__)

LAST_FILE = "last.safetensors"
STATE_FILE = "state.json"
LOG_FILE = "train_log.jsonl"
_GRAD_CLIP = 5.0


@dataclass
class TrainResult:
    out_dir: Path
    fusion: ClipCaMsa  # the best epoch's weights, in eval mode
    best_epoch: int
    epochs_run: int  # total, including epochs run before a resume
    stop_reason: str  # early_stop | max_epochs
    resumed_from: int  # 0 = fresh start
    valid: dict[str, float] = field(default_factory=dict)
    test: Optional[dict[str, float]] = None


def _fingerprint(cfg: ModelConfig, features: FeatureSet) -> str:
    # epochs and patience may change between runs (e.g. "train 10 more epochs"); nothing else may.
    train = cfg.train.model_dump(exclude={"epochs", "patience"})
    spec = {"features": features.key, "model": cfg.model.model_dump(), "train": train, "vision": cfg.vision.model_dump(exclude={"device", "cache_dir"})}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _optimizer(fusion: ClipCaMsa, cfg: ModelConfig) -> torch.optim.AdamW:
    # Decay only matrices: decaying gates or log-variances would pull them back to 0 for no reason.
    decay = [p for p in fusion.parameters() if p.ndim >= 2]
    other = [p for p in fusion.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.train.lr)


# ------------------------------------------------------------------------------------ resume state
@dataclass
class _State:
    fingerprint: str
    epoch: int = 0
    best_epoch: int = 0
    best_f1: float = -1.0
    best_nll: float = float("inf")
    bad_epochs: int = 0
    stop_reason: str = ""
    resumed_from: int = 0

    def improved(self, f1: float, nll: float) -> bool:
        return f1 > self.best_f1 + 1e-9 or (abs(f1 - self.best_f1) <= 1e-9 and nll < self.best_nll - 1e-4)


def _save_last(out: Path, fusion: ClipCaMsa, opt: torch.optim.Optimizer, state: _State) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in fusion.state_dict().items()}
    for pid, slots in opt.state_dict()["state"].items():
        for name, value in slots.items():
            tensors[f"optim.{pid}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    save_file(tensors, str(out / f"{LAST_FILE}.part"))
    (out / f"{LAST_FILE}.part").replace(out / LAST_FILE)
    payload = {k: v for k, v in state.__dict__.items() if k != "resumed_from"}
    (out / f"{STATE_FILE}.part").write_text(json.dumps(payload, indent=1))
    (out / f"{STATE_FILE}.part").replace(out / STATE_FILE)  # state last: it vouches for the files above


def _load_last(out: Path, fusion: ClipCaMsa, opt: torch.optim.Optimizer) -> None:
    tensors = load_file(str(out / LAST_FILE))
    fusion.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            slots.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": slots, "param_groups": opt.state_dict()["param_groups"]})


def _resume(out: Path, fusion: ClipCaMsa, opt: torch.optim.Optimizer, fingerprint: str, restart_on_mismatch: bool) -> _State:
    state_path = out / STATE_FILE
    if not state_path.is_file():
        (out / LOG_FILE).unlink(missing_ok=True)
        return _State(fingerprint)
    try:
        saved = json.loads(state_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{state_path} is corrupt; delete it to start over, or train into another --out") from None
    if saved.get("fingerprint") != fingerprint or not (out / LAST_FILE).is_file():
        if not restart_on_mismatch:
            raise UserError(f"{out} holds a training run with another config or data; train into a new --out, or delete "
                            f"{state_path.name} there to start over")
        for name in (STATE_FILE, LAST_FILE, LOG_FILE):
            (out / name).unlink(missing_ok=True)
        return _State(fingerprint)
    state = _State(**{k: v for k, v in saved.items() if k in _State.__dataclass_fields__})
    _load_last(out, fusion, opt)
    state.resumed_from = state.epoch
    _truncate_log(out / LOG_FILE, state.epoch)
    log.info("resuming %s after epoch %d", out, state.epoch)
    return state


def _truncate_log(path: Path, epoch: int) -> None:
    """Drops log lines of epochs the saved state does not cover (a crash between the two writes)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["epoch"] <= epoch:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut off by the crash
    path.write_text("".join(line + "\n" for line in keep))


def read_log(out: Path) -> list[dict[str, Any]]:
    path = Path(out) / LOG_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


# ------------------------------------------------------------------------------------------- epochs
def _train_epoch(fusion: ClipCaMsa, opt: torch.optim.Optimizer, features: FeatureSet, idx: torch.Tensor,
                 cfg: ModelConfig, epoch: int, device: torch.device) -> dict[str, float]:
    # Seeded per epoch (shuffle and dropout alike): resuming after epoch k replays epochs k+1.. exactly.
    seed = cfg.train.seed * 100_003 + epoch
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    order = idx[torch.randperm(len(idx), generator=gen)]
    fusion.train()
    total, correct, count = 0.0, 0, 0
    for batch in order.split(cfg.train.batch_size):
        y = features.labels[batch].to(device)
        out = fusion(features.inputs(batch, device))
        loss, _ = uncertainty_loss(out.logits, y, out.available, fusion.head_log_vars[: out.logits.shape[1]], cfg.model.uncertainty)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(fusion.parameters(), _GRAD_CLIP)
        opt.step()
        total += loss.item() * len(batch)
        correct += int((out.probs.argmax(-1) == y).sum())
        count += len(batch)
    return {"train_loss": total / count, "train_accuracy": correct / count}


def _split_scores(fusion: ClipCaMsa, features: FeatureSet, idx: torch.Tensor, device: torch.device) -> tuple[dict[str, float], Any]:
    heads = run_heads(fusion, features, idx, device)
    y = features.labels[idx].numpy()
    probs = heads["fused"]
    nll = float(-torch.log(torch.from_numpy(probs[range(len(y)), y]).clamp_min(1e-12)).mean())
    return {**classification_metrics(y, probs.argmax(-1)), "nll": nll}, probs


def train_fusion(cfg: ModelConfig, features: FeatureSet, out_dir: str | Path, *, progress: bool = False,
                 restart_on_mismatch: bool = False, extra_meta: Optional[dict[str, Any]] = None,
                 threads: int = 0) -> TrainResult:
    """Trains (or resumes training) into out_dir; returns the best epoch's model and its scores.
    `threads` > 0 caps torch's CPU threads meanwhile: the fusion's small ops gain nothing from more,
    and on a busy machine extra threads only spin (seen: 8x slower on 2 shared cores)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.vision.device)
    if not len(features.indices("train")) or not len(features.indices("valid")):
        raise UserError("training needs samples in both the train and the valid split")
    warm_start = cfg.model.checkpoint
    save_cfg = cfg.model_copy(deep=True)
    save_cfg.model.checkpoint = None  # the trained checkpoint stands alone
    torch.manual_seed(cfg.train.seed)
    fusion = build_fusion(features.zero_shot, cfg)
    if warm_start:  # fine-tune from an earlier checkpoint
        load_checkpoint(warm_start, fusion, cfg, features.embed_dim)
    fusion.to(device)
    opt = _optimizer(fusion, cfg)
    with _threads(threads, device):
        return _run(out, fusion, opt, features, cfg, save_cfg, device, progress, restart_on_mismatch, extra_meta)


@contextmanager
def _threads(threads: int, device: torch.device) -> Iterator[None]:
    if device.type != "cpu" or threads <= 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run(out: Path, fusion: ClipCaMsa, opt: torch.optim.Optimizer, features: FeatureSet, cfg: ModelConfig, save_cfg: ModelConfig,
         device: torch.device, progress: bool, restart_on_mismatch: bool, extra_meta: Optional[dict[str, Any]]) -> TrainResult:
    train_idx, valid_idx, test_idx = (features.indices(s) for s in ("train", "valid", "test"))
    state = _resume(out, fusion, opt, _fingerprint(cfg, features), restart_on_mismatch)
    best = _best_weights(out, state)
    bar = tqdm(total=cfg.train.epochs, initial=min(state.epoch, cfg.train.epochs), desc=f"train {out.name}",
               unit="epoch", disable=not progress, file=sys.stderr)
    while state.stop_reason != "early_stop" and state.epoch < cfg.train.epochs:
        state.epoch += 1
        started = time.perf_counter()
        row: dict[str, Any] = {"epoch": state.epoch, **_train_epoch(fusion, opt, features, train_idx, cfg, state.epoch, device)}
        valid, _ = _split_scores(fusion, features, valid_idx, device)
        row.update({f"valid_{k}": v for k, v in valid.items()})
        row.update(log_vars=[round(float(v), 5) for v in fusion.head_log_vars.detach().cpu()], seconds=round(time.perf_counter() - started, 4))
        if state.improved(valid["weighted_f1"], valid["nll"]):
            state.best_epoch, state.best_f1, state.best_nll, state.bad_epochs = state.epoch, valid["weighted_f1"], valid["nll"], 0
            best = {k: v.detach().clone() for k, v in fusion.state_dict().items()}
            save_checkpoint(out, fusion, save_cfg, features.embed_dim, {"epoch": state.epoch, "valid": valid})
        else:
            state.bad_epochs += 1
        if state.bad_epochs >= cfg.train.patience:
            state.stop_reason = "early_stop"
        with (out / LOG_FILE).open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        _save_last(out, fusion, opt, state)
        bar.update(1)
        bar.set_postfix(valid_f1=f"{valid['weighted_f1']:.3f}", best=state.best_epoch, refresh=False)
    bar.close()
    return _finish(out, fusion, best, state, features, save_cfg, (valid_idx, test_idx), device, extra_meta)


def _best_weights(out: Path, state: _State) -> Optional[dict[str, torch.Tensor]]:
    if state.best_epoch and (out / WEIGHTS_FILE).is_file():
        return load_file(str(out / WEIGHTS_FILE))
    return None


def _finish(out: Path, fusion: ClipCaMsa, best: Optional[dict[str, torch.Tensor]], state: _State, features: FeatureSet,
            cfg: ModelConfig, splits: tuple[torch.Tensor, torch.Tensor], device: torch.device,
            extra_meta: Optional[dict[str, Any]]) -> TrainResult:
    valid_idx, test_idx = splits
    if best is not None:
        fusion.load_state_dict(best)
    fusion.eval()
    if not state.stop_reason:
        state.stop_reason = "max_epochs"
    valid, _ = _split_scores(fusion, features, valid_idx, device)
    eval_idx, eval_name = (test_idx, "test") if len(test_idx) else (valid_idx, "valid")
    scores, probs = _split_scores(fusion, features, eval_idx, device)
    test = scores if eval_name == "test" else None
    meta = {"epoch": state.best_epoch, "stop_reason": state.stop_reason, "epochs_run": state.epoch, "valid": valid,
            "test": test, "features": features.key, **(extra_meta or {})}
    save_checkpoint(out, fusion, cfg, features.embed_dim, meta)
    plot_curves(read_log(out), out / "curves.png", best_epoch=state.best_epoch)
    cm = confusion_matrix(features.labels[eval_idx].numpy(), probs.argmax(-1))
    plot_confusion(cm, out / "confusion.png", title=f"{eval_name} split, epoch {state.best_epoch}")
    return TrainResult(out, fusion, state.best_epoch, state.epoch, state.stop_reason, state.resumed_from, valid, test)
