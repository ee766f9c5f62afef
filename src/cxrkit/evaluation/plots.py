"""Figures for the report: training curves, ROC and PR curves with the operating point, confusion matrix."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_history(history: list[dict], best_epoch: int, path: Path) -> Path:
    """Training and validation loss, and validation AUC, per epoch; the kept epoch is marked."""
    ep = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    a1.plot(ep, [h["train_loss"] for h in history], "o-", label="train loss (augmented)")
    a1.plot(ep, [h["val_loss"] for h in history], "o-", label="validation loss")
    a1.set_xlabel("epoch"), a1.set_ylabel("weighted loss"), a1.legend()
    a2.plot(ep, [h["val_auc"] for h in history], "o-", color="C2")
    a2.axvline(best_epoch, color="grey", ls="--", label=f"kept: epoch {best_epoch}")
    a2.set_xlabel("epoch"), a2.set_ylabel("validation AUC"), a2.legend()
    for a in (a1, a2):
        a.grid(alpha=0.3)
    return _save(fig, path)


def plot_roc(y: np.ndarray, score: np.ndarray, point: tuple[float, float] | None, auc: float, title: str, path: Path) -> Path:
    """ROC curve; ``point`` is the operating point as (1 - specificity, sensitivity)."""
    fpr, tpr, _ = roc_curve(y, score)
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    ax.plot(fpr, tpr, lw=2, label=f"ROC (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="chance")
    if point is not None:
        ax.plot(*point, "o", ms=9, color="C3", label="operating point")
    ax.set_xlabel("1 - specificity (false positive rate)"), ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title(title, fontsize=10), ax.legend(loc="lower right"), ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_roc_one_vs_rest(y: np.ndarray, probs: np.ndarray, classes: list[str], aucs: dict[str, float | None], title: str, path: Path) -> Path:
    """One-vs-rest ROC curve per class of a multi-class model."""
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for c, name in enumerate(classes):
        if 0 < (y == c).sum() < len(y):
            fpr, tpr, _ = roc_curve(y == c, probs[:, c])
            ax.plot(fpr, tpr, lw=2, label=f"{name} (AUC {aucs[name]:.3f})")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="chance")
    ax.set_xlabel("1 - specificity"), ax.set_ylabel("sensitivity"), ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=10), ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_pr(y: np.ndarray, score: np.ndarray, point: tuple[float, float] | None, ap: float, title: str, path: Path) -> Path:
    """Precision-recall curve with the prevalence line; ``point`` is (sensitivity, PPV)."""
    precision, recall, _ = precision_recall_curve(y, score)
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    ax.plot(recall, precision, lw=2, label=f"PR (AP {ap:.3f})")
    ax.axhline(np.mean(y), ls=":", color="grey", label=f"prevalence {np.mean(y):.2f}")
    if point is not None and point[1] is not None:
        ax.plot(*point, "o", ms=9, color="C3", label="operating point")
    ax.set_xlabel("sensitivity (recall)"), ax.set_ylabel("PPV (precision)"), ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10), ax.legend(loc="lower left"), ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_confusion(cm: np.ndarray, classes: list[str], title: str, path: Path) -> Path:
    """Confusion matrix with counts and row percentages (rows: truth, columns: prediction)."""
    cm = np.asarray(cm)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.1 * k + 2.0, 0.9 * k + 1.5))
    rows = cm.sum(axis=1, keepdims=True).clip(min=1)
    ax.imshow(cm / rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{cm[i, j]}\n({cm[i, j] / rows[i, 0]:.0%})", ha="center", va="center",
                    color="white" if cm[i, j] / rows[i, 0] > 0.5 else "black")
    ax.set_xticks(range(k), classes, rotation=20), ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_roc_overlay(curves: list[tuple[str, np.ndarray, np.ndarray, tuple[float, float] | None, float]], title: str, path: Path) -> Path:
    """Several models' ROC curves on the same cases; each item is (label, y, score, operating point, AUC)."""
    fig, ax = plt.subplots(figsize=(5.6, 5.0))
    for i, (label, y, score, point, auc) in enumerate(curves):
        fpr, tpr, _ = roc_curve(y, score)
        color = f"C{i % 10}"
        ax.plot(fpr, tpr, lw=1.8, color=color, label=f"{label} (AUC {auc:.3f})")
        if point is not None:
            ax.plot(*point, "o", ms=7, color=color, markeredgecolor="black")
    ax.plot([0, 1], [0, 1], ls=":", color="grey")
    ax.set_xlabel("1 - specificity (false positive rate)"), ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title(title, fontsize=10), ax.legend(loc="lower right", fontsize=8), ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_label_counts(counts: dict[str, dict[str, int]], images: dict[str, int], path: Path) -> Path:
    """Positive images per finding in each split (multi-label data), with each split's image count in the legend."""
    splits = list(counts)
    names = list(next(iter(counts.values())))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(names) + 2), 3.8))
    width = 0.8 / max(1, len(splits))
    x = np.arange(len(names))
    for j, s in enumerate(splits):
        ax.bar(x + j * width, [counts[s][c] for c in names], width, label=f"{s} ({images.get(s, 0)} images)")
    ax.set_xticks(x + width * (len(splits) - 1) / 2, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("images with the finding"), ax.set_title("Label counts per split", fontsize=10), ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def plot_cooccurrence(labels: np.ndarray, names: list[str], path: Path) -> Path:
    """How often two findings appear on the same image (training split); the diagonal counts each finding."""
    y = np.asarray(labels, dtype=np.int64)
    co = y.T @ y
    k = len(names)
    fig, ax = plt.subplots(figsize=(0.45 * k + 2.5, 0.45 * k + 2.0))
    im = ax.imshow(co, cmap="Blues")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(co[i, j]), ha="center", va="center", fontsize=6, color="white" if co[i, j] > co.max() / 2 else "black")
    ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=7), ax.set_yticks(range(k), names, fontsize=7)
    ax.set_title("Finding co-occurrence (training images)", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.04)
    return _save(fig, path)
