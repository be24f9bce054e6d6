"""`sentistream train`: the fusion model on a data set (features cached, resumable)."""
from __future__ import annotations

import sys
from typing import Any

from models.training.data import load_dataset
from models.training.feature_cache import load_features
from models.training.loop import train_fusion

from ..config import AppConfig
from .outputs import check_distinct, check_output


def main(cfg: AppConfig, args: Any) -> int:
    check_output(args.out, "--out", directory=True)  # before features are extracted, not after
    check_distinct({"--data": args.data, "--config": getattr(args, "config", None)}, {"--out": args.out})
    dataset = load_dataset(args.data, cfg.train.seed, require=("train", "valid"))
    counts = dataset.counts()
    print(f"data: {dataset.path} ({dataset.layout}) " + ", ".join(f"{s} {sum(c.values())}" for s, c in counts.items()), file=sys.stderr)
    features = load_features(cfg, dataset, progress=True)
    result = train_fusion(cfg, features, args.out, progress=True, threads=cfg.engine.threads,
                          extra_meta={"data": str(dataset.path), "layout": dataset.layout, "counts": counts})
    if result.resumed_from:
        print(f"resumed after epoch {result.resumed_from}")
    v = result.valid
    print(f"trained {result.epochs_run} epochs ({result.stop_reason.replace('_', ' ')}), best epoch {result.best_epoch}: "
          f"valid accuracy {v['accuracy']:.3f}, weighted F1 {v['weighted_f1']:.3f}")
    if result.test is not None:
        t = result.test
        print(f"test accuracy {t['accuracy']:.3f}, weighted F1 {t['weighted_f1']:.3f}, macro F1 {t['macro_f1']:.3f}")
    print(f"checkpoint: {result.out_dir} (use with --set model.checkpoint={result.out_dir})")
    return 0
