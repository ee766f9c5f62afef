"""Figures for the report: training curves, ROC and PR curves with the operating point, confusion matrix."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from cxrkit.record.files import replacing

# Perceptually uniform colour maps (Smith & van der Walt 2015): equal steps in value look like equal steps in colour,
# and they stay readable in grey and for colour-blind readers, which jet does not.
HEAT_CMAP = "magma"
SEQUENTIAL_CMAP = "cividis"
# Reliability bins with fewer images than this are drawn hollow and not joined into the curve.
MIN_BIN_COUNT = 10


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            # A class named in another script (结核) drew empty boxes and printed a warning per glyph into the training log.
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
            fig.tight_layout()
            # Via a temporary file: a full disk leaves the previous figure, not half a PNG, and the error names the figure.
            with replacing(path) as tmp:
                fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    finally:
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


def plot_roc(y: np.ndarray, score: np.ndarray, point: tuple[float, float] | None, auc: float, title: str, path: Path,
             readers: dict[str, tuple[float, float]] | None = None) -> Path:
    """ROC curve; ``point`` is the operating point as (1 - specificity, sensitivity), ``readers`` human readers' points likewise."""
    fpr, tpr, _ = roc_curve(y, score)
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    ax.plot(fpr, tpr, lw=2, label=f"ROC (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="chance")
    if point is not None:
        ax.plot(*point, "o", ms=9, color="C3", label="operating point")
    readers = readers or {}
    for i, (name, (x, y_)) in enumerate(readers.items()):
        # Ten marker looks (five shapes, filled or hollow), then colours: twelve readers in black had two pairs alike.
        ax.plot(x, y_, "^sDvP"[i % 5], ms=8, color="black" if i < 10 else f"C{(i - 10) % 10}", mfc="none" if i % 2 else None,
                ls="none", label=f"reader {name}"[:30])
    ax.set_xlabel("1 \u2212 specificity (false positive rate)"), ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title(title, fontsize=10), ax.grid(alpha=0.3)
    if len(readers) > 3:  # inside the axes a long legend covered the curve and the readers' own points
        cols = 1 + (len(readers) + 2) // 16
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, ncol=cols, borderaxespad=0)
        fig.set_size_inches(4.4 + 1.9 * cols, max(4.2, 0.19 * (len(readers) + 3) / cols + 1.2))
    else:
        ax.legend(loc="lower right")
    return _save(fig, path)


def plot_roc_one_vs_rest(y: np.ndarray, probs: np.ndarray, classes: list[str], aucs: dict[str, float | None], title: str, path: Path) -> Path:
    """One-vs-rest ROC curve per class of a multi-class model."""
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for c, name in enumerate(classes):
        if 0 < (y == c).sum() < len(y):
            fpr, tpr, _ = roc_curve(y == c, probs[:, c])
            ax.plot(fpr, tpr, lw=2, label=f"{name} (AUC {aucs[name]:.3f})")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="chance")
    ax.set_xlabel("1 \u2212 specificity"), ax.set_ylabel("sensitivity"), ax.legend(loc="lower right", fontsize=8)
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
    ax.set_xlabel("sensitivity (recall)"), ax.set_ylabel("positive predictive value (precision)"), ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10), ax.legend(loc="lower left"), ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_confusion(cm: np.ndarray, classes: list[str], title: str, path: Path) -> Path:
    """Confusion matrix with counts and row percentages (rows: truth, columns: prediction)."""
    cm = np.asarray(cm)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.1 * k + 2.0, 0.9 * k + 1.5))
    rows = cm.sum(axis=1, keepdims=True).clip(min=1)
    ax.imshow(cm / rows, cmap=SEQUENTIAL_CMAP, vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{cm[i, j]}\n({cm[i, j] / rows[i, 0]:.0%})", ha="center", va="center",
                    color="black" if cm[i, j] / rows[i, 0] > 0.5 else "white")
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
    ax.set_xlabel("1 \u2212 specificity (false positive rate)"), ax.set_ylabel("sensitivity (true positive rate)")
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
    im = ax.imshow(co, cmap=SEQUENTIAL_CMAP)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(co[i, j]), ha="center", va="center", fontsize=6, color="black" if co[i, j] > co.max() / 2 else "white")
    ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=7), ax.set_yticks(range(k), names, fontsize=7)
    ax.set_title("Finding co-occurrence (training images)", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.04)
    return _save(fig, path)


def plot_reliability(curves: list[tuple[str, dict, float]], title: str, path: Path, min_count: int | None = None) -> Path:
    """Reliability diagram: observed frequency against mean predicted probability per bin, with each bin's count written
    beside its point; each curve is (label, bins from :func:`cxrkit.metrics.calibration.reliability_bins`, ECE).

    Bins with fewer than ``min_count`` images are drawn hollow and grey and left out of the line: with a handful of
    images the observed share jumps in large steps and the line would zig-zag on noise.
    """
    min_count = MIN_BIN_COUNT if min_count is None else min_count
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfectly calibrated")
    kind = curves[0][1]["kind"] if curves else "positive class"
    colours = plt.get_cmap("viridis")(np.linspace(0.15, 0.75, max(2, len(curves))))
    any_small = False
    for i, (label, bins, ece) in enumerate(curves):
        mp, ob, n = (np.asarray(bins[k], dtype=float) for k in ("mean_predicted", "observed", "count"))
        big, small = n >= min_count, (n > 0) & (n < min_count)
        any_small |= bool(small.any())
        ax.plot(mp[big], ob[big], "o-", color=colours[i], ms=6, label=f"{label} (ECE {ece:.3f})")
        ax.plot(mp[small], ob[small], "o", ms=6, mfc="white", mec="0.6", color="0.6")
        for x, yv, c in zip(mp[n > 0], ob[n > 0], n[n > 0]):
            ax.annotate(f"{int(c)}", (x, yv), textcoords="offset points", xytext=(4, -10 if i else 4), fontsize=7,
                        color=colours[i] if c >= min_count else "0.5")
    if any_small:
        ax.plot([], [], "o", mfc="white", mec="0.6", label=f"bin of < {min_count} images (not joined)")
    what = "P(positive)" if kind == "positive class" else "top-label confidence"
    ax.set_xlabel(f"mean predicted {what}"), ax.set_ylabel("observed frequency" if kind == "positive class" else "observed accuracy")
    ax.set_xlim(0, 1), ax.set_ylim(0, 1.05), ax.set_title(title + "\n(numbers: images per bin)", fontsize=10)
    ax.legend(loc="upper left", fontsize=7), ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_decision_curve(curve: dict, threshold: float | None, title: str, path: Path) -> Path:
    """Net benefit against threshold probability for the model, treat-all and treat-none (Vickers & Elkin 2006)."""
    t = np.asarray(curve["thresholds"])
    model, every = np.asarray(curve["model"]), np.asarray(curve["treat_all"])
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    ax.plot(t, model, lw=2, label="model")
    ax.plot(t, every, lw=1.5, ls="--", color="C1", label="treat all")
    ax.plot(t, np.zeros_like(t), lw=1.5, ls=":", color="grey", label="treat none")
    if threshold is not None:
        ax.axvline(threshold, color="C3", lw=1, alpha=0.6, label=f"run threshold {threshold:.2f}")
    top = max(float(np.max(model)), curve["prevalence"], 0.01)
    ax.set_ylim(-0.1 * top, 1.1 * top), ax.set_xlim(0, 1)
    ax.set_xlabel("threshold probability (harm of a false alarm relative to a missed case)"), ax.set_ylabel("net benefit")
    ax.set_title(title, fontsize=10), ax.legend(fontsize=8), ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_attention(summary: dict, mean_heat: np.ndarray, path: Path) -> Path:
    """Mean heat map with the lung box drawn, beside the share of heat in lung field, border and corners
    against the share a uniform map would give."""
    from matplotlib.patches import Rectangle

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8.2, 3.6))
    s = mean_heat.shape[-1]
    a1.imshow(mean_heat, cmap=HEAT_CMAP, vmin=0)
    top, bottom, left, right = summary["lung_box"]
    # Of the images' own area, as the shares are counted (letterbox bars left out): it was drawn on the whole square.
    y0, y1, x0, x1 = summary.get("image_box") or (0, s, 0, s)
    h, w = y1 - y0, x1 - x0
    a1.add_patch(Rectangle((x0 + left * w, y0 + top * h), (right - left) * w, (bottom - top) * h, fill=False, ec="white", lw=2, ls="--"))
    a1.set_title(f"mean heat map over {summary['n']} images", fontsize=10), a1.axis("off")
    names = ["lung", "border", "corners"]
    shares = [summary["mean_share"][k] or 0 for k in names]
    x = np.arange(len(names))
    a2.bar(x - 0.2, shares, 0.4, label="share of heat")
    a2.bar(x + 0.2, [summary["area"][k] for k in names], 0.4, color="lightgrey", label="share of area (uniform map)")
    a2.set_xticks(x, ["central lung field", "border", "corners"]), a2.set_ylim(0, 1), a2.legend(fontsize=8)
    a2.set_title("where the heat falls" + (" — MOSTLY OUTSIDE THE LUNGS" if summary["flag"] else ""), fontsize=10, color="C3" if summary["flag"] else "black")
    return _save(fig, path)


def plot_gallery(images: np.ndarray, heat: np.ndarray, titles: list[str], path: Path) -> Path:
    """A row of radiographs with their heat maps overlaid and a title each (cell of the confusion matrix, probability)."""
    from cxrkit.explain.overlay import overlay_rgb

    n = len(images)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.7 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        ax = axes.ravel()[i]
        ax.imshow(overlay_rgb(images[i], heat[i]))
        ax.set_title(titles[i], fontsize=8)
    return _save(fig, path)


def plot_forest(sub: dict, title: str, path: Path) -> Path:
    """Forest plot of one subgroup column: sensitivity, specificity and ROC-AUC per group with 95% intervals."""
    metrics = [("sensitivity", "Sensitivity"), ("specificity", "Specificity"), ("roc_auc", "ROC-AUC")]
    groups = sub["groups"]
    fig, axes = plt.subplots(1, 3, figsize=(10, 0.5 * len(groups) + 1.6), sharey=True)
    ys = np.arange(len(groups))[::-1]
    for ax, (key, label) in zip(axes, metrics):
        for y, g in zip(ys, groups):
            e = g[key]
            if e["value"] is None:
                continue
            small = g["too_small"][key]
            lo, hi = e["ci"] if e.get("ci") else (e["value"], e["value"])
            ax.plot([lo, hi], [y, y], color="0.6" if small else "#1f4e79", lw=2)
            ax.plot(e["value"], y, "o", color="0.6" if small else "#1f4e79", ms=6, mfc="white" if small else None)
        p = sub["tests"][key]["p_value"]
        ax.set_title(f"{label}" + (f"\nheterogeneity p = {p:.3g}" if p is not None else "\nnot testable"), fontsize=9)
        ax.set_xlim(0, 1.02)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(ys)
    axes[0].set_yticklabels([f"{g['group']} (n={g['n']}, {g['n_positive']}+)" for g in groups], fontsize=8)
    fig.suptitle(title + " (hollow: too few cases to compare)", fontsize=10)
    return _save(fig, path)


def plot_risk_coverage(curve: dict, coverage: float | None, risk: float | None, title: str, path: Path) -> Path:
    """Error rate among the decided cases against the share decided (most confident first), with the band's point."""
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(curve["coverage"], curve["risk"], color="#1f4e79", label="deciding the most confident share")
    if coverage is not None and risk is not None:
        ax.plot([coverage], [risk], "o", color="#c0392b", label="the referral band")
    ax.set_xlabel("share decided without a reader (coverage)")
    ax.set_ylabel("error rate among decided cases")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, max(0.05, max(curve["risk"]) * 1.1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)
