#!/usr/bin/env python3
"""Fit the text experts' small learned parts on human-rated sentences (the tune part of the data;
scripts/sentiment_data.py holds 10 % back):

- the lexicon's calibration (models/experts/data/lexicon.json): a multinomial logistic regression over
  VADER's scores;
- the sentence expert's head (models/experts/data/sentence.json): the same over all-MiniLM-L6-v2
  sentence embeddings.

Both class-balanced with an L2 penalty. Each file also gets the head's log-variance s = log CE, with
CE its out-of-fold cross-entropy on the tune part: the optimum of the uncertainty loss
exp(-s) * CE + s for a head whose weights are fixed, so the untrained fusion weighs the experts as
training would. Prints macro-F1 of VADER's usual cut (|compound| >= 0.05) and
of each expert: 5-fold on the tune part, leave-one-source-out (fit on two sources, score the third: an
out-of-domain check), and on the held-back part, for the two experts alone and mixed by confidence.

    .venv/bin/python scripts/fit_text_experts.py [--data ../shared/data/sentiment-dev.json] [--json docs/text-experts-fit.json]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.experts.lexicon import CALIBRATION, Vader  # noqa: E402
from models.experts.sentence import HEAD, SentenceEncoder  # noqa: E402
from models.prompts import LABELS  # noqa: E402
from models.training.metrics import classification_metrics  # noqa: E402
from scripts import sentiment_data  # noqa: E402

L2 = {"lexicon": 1e-3, "sentence": 1e-4}


def fit(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, np.ndarray]:
    xt, yt = torch.tensor(x, dtype=torch.float64), torch.tensor(y)
    w = torch.zeros(x.shape[1], len(LABELS), dtype=torch.float64, requires_grad=True)
    b = torch.zeros(len(LABELS), dtype=torch.float64, requires_grad=True)
    counts = np.bincount(y, minlength=len(LABELS))
    class_w = torch.tensor(len(y) / (len(LABELS) * np.maximum(counts, 1)), dtype=torch.float64)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w + b, yt, weight=class_w) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), b.detach().numpy()


def probs(wb: tuple[np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    return torch.tensor(x @ wb[0] + wb[1]).softmax(-1).numpy()


def confidence_mix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The untrained fusion's mixture of two heads: weights proportional to 1 - normalised entropy."""
    def conf(p):
        h = -(p * np.log(np.clip(p, 1e-12, 1))).sum(1)
        return np.clip(1 - h / math.log(len(LABELS)), 1e-3, None)[:, None]
    return (conf(a) * a + conf(b) * b) / (conf(a) + conf(b))


def macro(y: np.ndarray, p: np.ndarray) -> float:
    return round(classification_metrics(y, p if p.ndim == 1 else p.argmax(1))["macro_f1"], 4)


def vader_cut(x: np.ndarray) -> np.ndarray:
    return np.where(x[:, 0] >= 0.05, 2, np.where(x[:, 0] <= -0.05, 0, 1))


def scores_on(train: np.ndarray, test: np.ndarray, feats: dict[str, np.ndarray], y: np.ndarray) -> dict[str, float]:
    p = {k: probs(fit(x[train], y[train], L2[k]), x[test]) for k, x in feats.items()}
    return {"vader_cut": macro(y[test], vader_cut(feats["lexicon"][test])), "lexicon": macro(y[test], p["lexicon"]),
            "sentence": macro(y[test], p["sentence"]), "mixed": macro(y[test], confidence_mix(p["lexicon"], p["sentence"]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=sentiment_data.DEFAULT_DATA)
    ap.add_argument("--json", type=Path, default=None, help="also write the scores here")
    args = ap.parse_args()
    records = sentiment_data.load(args.data)
    tune, held = sentiment_data.split(records)
    rows = tune + held
    texts = [r["text"] for r in rows]
    y = np.array([LABELS.index(r["label"]) for r in rows])
    feats = {"lexicon": Vader().features(texts), "sentence": SentenceEncoder().embed(texts).astype(np.float64)}
    is_tune = np.arange(len(rows)) < len(tune)
    src = np.array([r["src"] for r in rows])
    report: dict = {"data": str(args.data), "tune": len(tune), "held_back": len(held)}
    folds = np.array_split(np.random.default_rng(0).permutation(len(tune)), 5)
    per_fold = []
    out_of_fold = {k: np.zeros((len(rows), len(LABELS))) for k in feats}
    for f in folds:
        test = np.zeros(len(rows), bool)
        test[f] = True
        per_fold.append(scores_on(is_tune & ~test, test, feats, y))
        for k, x in feats.items():
            out_of_fold[k][test] = probs(fit(x[is_tune & ~test], y[is_tune & ~test], L2[k]), x[test])
    log_var = {k: round(math.log(float(-np.log(np.clip(p[is_tune][np.arange(is_tune.sum()), y[is_tune]], 1e-12, 1)).mean())), 4)
               for k, p in out_of_fold.items()}
    report["log_variance"] = log_var
    report["five_fold_macro_f1"] = {k: round(float(np.mean([s[k] for s in per_fold])), 4) for k in per_fold[0]}
    report["leave_one_source_out_macro_f1"] = {s: scores_on(is_tune & (src != s), is_tune & (src == s), feats, y) for s in sorted(set(src))}
    report["held_back_macro_f1"] = scores_on(is_tune, ~is_tune, feats, y)
    for name, path, feature_names in (("lexicon", CALIBRATION, ["compound", "compound^2", "|compound|", "neg", "neu", "pos"]),
                                      ("sentence", HEAD, None)):
        w, b = fit(feats[name][is_tune], y[is_tune], L2[name])
        path.write_text(json.dumps({
            "about": f"{name} expert head: multinomial logistic regression fitted by scripts/fit_text_experts.py",
            "features": feature_names or f"all-MiniLM-L6-v2 mean-pooled, L2-normalised ({w.shape[0]})", "labels": list(LABELS),
            "l2": L2[name], "log_variance": log_var[name], "weight": np.round(w, 6).tolist(), "bias": np.round(b, 6).tolist()}) + "\n")
        print(f"wrote {path}", file=sys.stderr)
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
