"""Training plots: loss/accuracy curves and the confusion matrix (matplotlib Figure + Agg canvas:
no global pyplot state)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..prompts import LABELS


def plot_curves(rows: list[dict[str, Any]], path: Path, best_epoch: int = 0) -> None:
    """Loss and accuracy per epoch (train vs valid). Figure/Agg canvas directly: no global pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5))
    FigureCanvasAgg(fig)
    epochs = [r["epoch"] for r in rows]
    panels = (("loss", [("train_loss", "train (uncertainty loss)"), ("valid_nll", "valid (fused NLL)")]),
              ("accuracy", [("train_accuracy", "train"), ("valid_accuracy", "valid"), ("valid_weighted_f1", "valid weighted F1")]))
    for ax, (title, series) in zip(fig.subplots(1, 2), panels):
        for key, label in series:
            ax.plot(epochs, [r[key] for r in rows], marker=".", label=label)
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_confusion(cm: Any, path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(LABELS)), LABELS)
    ax.set_yticks(range(len(LABELS)), LABELS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    for i in range(len(LABELS)):
        for j in range(len(LABELS)):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


