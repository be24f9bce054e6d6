"""`sentistream evaluate`: a checkpoint's scores on the test split, and optionally the ablations
(`--ablations` trains each variant with the checkpoint's own recipe and seed on the data's
train/valid splits, into `<checkpoint>/ablations/<variant>`)."""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from models.backbone import resolve_device
from models.checkpoint import CONFIG_FILE, load_checkpoint, read_meta
from models.errors import UserError
from models.experts import EXPERTS
from models.factory import build_fusion
from models.training.ablations import run_ablations
from models.training.data import load_dataset
from models.training.feature_cache import load_features
from models.training.metrics import score_model

from ..config import AppConfig, load_config
from .outputs import check_distinct, check_output


def _ablation_root(ckpt: Path) -> Path:
    root = ckpt / "ablations"
    try:
        root.mkdir(exist_ok=True)
        return root
    except OSError:  # a read-only checkpoint: train the variants somewhere temporary
        return Path(tempfile.mkdtemp(prefix="sentistream-ablations-"))


def format_table(report: dict[str, Any], n_test: int) -> str:
    rows = [("full model (fused)", report["fused"]), ("  its image head", report["image"]), ("  its text head", report["text"])]
    rows += [(f"  its {name} expert", report[name]) for name in EXPERTS if name in report]
    rows += [(name, m) for name, m in report.get("ablations", {}).items()]
    lines = [f"test split, {n_test} samples", f"{'model':<22}{'accuracy':>10}{'weighted_f1':>13}{'macro_f1':>10}"]
    for name, m in rows:
        lines.append(f"{name:<22}{m['accuracy']:>10.4f}{m['weighted_f1']:>13.4f}{m['macro_f1']:>10.4f}")
    return "\n".join(lines)


def main(cfg: AppConfig, args: Any) -> int:
    ckpt = Path(args.checkpoint)
    if args.json:
        check_output(args.json, "--json")
        check_distinct({"--data": args.data, "--checkpoint": args.checkpoint, "--config": getattr(args, "config", None)},
                       {"--json": args.json})
    read_meta(ckpt)  # a clear error for a directory that is not a checkpoint, before anything else
    if not (ckpt / CONFIG_FILE).is_file():
        raise UserError(f"checkpoint {ckpt} has no {CONFIG_FILE}: it cannot be rebuilt (re-run sentistream train)")
    # The checkpoint's own config rebuilds its model; --set overrides (e.g. vision.device) still apply.
    cfg = load_config(ckpt / CONFIG_FILE, getattr(args, "overrides", []) or [])
    required = ("train", "valid", "test") if args.ablations else ("test",)
    dataset = load_dataset(args.data, cfg.train.seed, require=required)
    features = load_features(cfg, dataset, progress=True)
    fusion = build_fusion(features.zero_shot, cfg)
    load_checkpoint(ckpt, fusion, cfg, features.embed_dim)
    device = resolve_device(cfg.vision.device)
    fusion.to(device).eval()
    report: dict[str, Any] = score_model(fusion, features, "test", device)
    report["ablations"] = run_ablations(cfg, features, _ablation_root(ckpt), threads=cfg.engine.threads) if args.ablations else {}
    print(format_table(report, len(features.indices("test"))))
    if args.json:
        out = Path(args.json)
        try:
            out.write_text(json.dumps(report, indent=2) + "\n")
        except OSError as exc:
            raise UserError(f"cannot write the metrics to {out}: {exc.strerror}") from None
        print(f"metrics written to {out}", file=sys.stderr)
    return 0
