#!/usr/bin/env python3
"""Fit the lexicon expert's calibration (models/experts/data/lexicon.json) on human-rated sentences.

A multinomial logistic regression (class-balanced, L2) over VADER's scores, fitted on the tune part of
the data (scripts/sentiment_data.py holds 10 % back). Prints macro-F1 of VADER's usual cut
(|compound| >= 0.05) and of the calibration: 5-fold on the tune part, leave-one-source-out (fit on two
sources, score the third: a harder, out-of-domain check), and on the held-back part.

    .venv/bin/python scripts/fit_lexicon.py [--data ../shared/data/sentiment-dev.json] [--out models/experts/data/lexicon.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.experts.lexicon import CALIBRATION, Vader  # noqa: E402
from models.prompts import LABELS  # noqa: E402
from models.training.metrics import classification_metrics  # noqa: E402
from scripts import sentiment_data  # noqa: E402

L2 = 1e-3


def fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    torch.manual_seed(0)
    xt, yt = torch.tensor(x, dtype=torch.float64), torch.tensor(y)
    w = torch.zeros(x.shape[1], len(LABELS), dtype=torch.float64, requires_grad=True)
    b = torch.zeros(len(LABELS), dtype=torch.float64, requires_grad=True)
    counts = np.bincount(y, minlength=len(LABELS))
    class_w = torch.tensor(len(y) / (len(LABELS) * np.maximum(counts, 1)), dtype=torch.float64)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w + b, yt, weight=class_w) + L2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), b.detach().numpy()


def vader_cut(x: np.ndarray) -> np.ndarray:
    c = x[:, 0]
    return np.where(c >= 0.05, 2, np.where(c <= -0.05, 0, 1))


def calibrated(w: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    return (x @ w + b).argmax(1)


def macro(y: np.ndarray, pred: np.ndarray) -> float:
    return round(classification_metrics(y, pred)["macro_f1"], 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=sentiment_data.DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=CALIBRATION)
    args = ap.parse_args()
    tune, held = sentiment_data.split(sentiment_data.load(args.data))
    vader = Vader()

    def xy(records):
        return vader.features([r["text"] for r in records]), np.array([LABELS.index(r["label"]) for r in records])

    x, y = xy(tune)
    xh, yh = xy(held)
    src = np.array([r["src"] for r in tune])
    report: dict = {"data": str(args.data), "tune": len(tune), "held_back": len(held)}
    folds = np.array_split(np.random.default_rng(0).permutation(len(y)), 5)
    cv_cut, cv_cal = [], []
    for f in folds:
        train = np.ones(len(y), bool)
        train[f] = False
        w, b = fit(x[train], y[train])
        cv_cut.append(macro(y[f], vader_cut(x[f])))
        cv_cal.append(macro(y[f], calibrated(w, b, x[f])))
    report["five_fold_macro_f1"] = {"vader_cut": round(float(np.mean(cv_cut)), 4), "calibrated": round(float(np.mean(cv_cal)), 4)}
    loso = {}
    for s in sorted(set(src)):
        w, b = fit(x[src != s], y[src != s])
        loso[s] = {"vader_cut": macro(y[src == s], vader_cut(x[src == s])), "calibrated": macro(y[src == s], calibrated(w, b, x[src == s]))}
    report["leave_one_source_out_macro_f1"] = loso
    w, b = fit(x, y)
    report["held_back_macro_f1"] = {"vader_cut": macro(yh, vader_cut(xh)), "calibrated": macro(yh, calibrated(w, b, xh))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "about": "VADER -> 3-class calibration (multinomial logistic regression); fitted by scripts/fit_lexicon.py",
        "features": ["compound", "compound^2", "|compound|", "neg", "neu", "pos"], "labels": list(LABELS),
        "weight": np.round(w, 6).tolist(), "bias": np.round(b, 6).tolist(), "fit": report}, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
