"""Where a model looks, over a whole split: the share of heat-map mass in the central lung field against the
borders and corners (where laterality markers, text and scanner labels sit), and a gallery of examples
from each cell of the confusion matrix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrkit.explain.cam import heatmaps
from cxrkit.run import Run

# Central box holding both lung fields on a PA radiograph (fractions of the side), and the corner squares.
LUNG_BOX = (0.10, 0.90, 0.15, 0.85)  # top, bottom, left, right
CORNER = 0.15
MOSTLY_OUTSIDE = 0.5  # flag when less than half the heat falls inside the lung box
MAX_IMAGES = 400  # heat maps for at most this many images of a split (seeded sample), enough for a stable mean


def region_masks(size: int) -> dict[str, np.ndarray]:
    """Boolean masks (size, size): ``lung`` (central box), ``corners`` (four corner squares) and ``border`` (the rest)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    top, bottom, left, right = LUNG_BOX
    lung = (yy >= top) & (yy < bottom) & (xx >= left) & (xx < right)
    corners = ((yy < CORNER) | (yy >= 1 - CORNER)) & ((xx < CORNER) | (xx >= 1 - CORNER))
    return {"lung": lung, "corners": corners, "border": ~lung & ~corners}


def region_shares(heat: np.ndarray) -> dict[str, np.ndarray]:
    """Per image, the share of heat-map mass in each region of :func:`region_masks` (images with no heat get NaN)."""
    heat = np.asarray(heat, dtype=np.float64)
    total = heat.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return {name: (heat * m).sum(axis=(1, 2)) / total for name, m in region_masks(heat.shape[-1]).items()}


def attention_summary(heat: np.ndarray) -> dict:
    """Mean region shares over a split, the area each region covers (the share a uniform map would get) and the flag."""
    shares = region_shares(heat)
    masks = region_masks(heat.shape[-1])
    mean = {k: float(np.nanmean(v)) if np.isfinite(v).any() else None for k, v in shares.items()}
    inside = mean["lung"]
    return {
        "n": int(len(heat)), "mean_share": mean, "area": {k: float(m.mean()) for k, m in masks.items()},
        "share_mostly_outside": float(np.nanmean(shares["lung"] < MOSTLY_OUTSIDE)) if inside is not None else None,
        "flag": inside is not None and inside < MOSTLY_OUTSIDE, "lung_box": LUNG_BOX,
    }


def pick_gallery(y: np.ndarray, pred: np.ndarray, score: np.ndarray, per_cell: int = 2) -> dict[str, list[int]]:
    """Indices of the most confident examples of each binary confusion cell (TP, FP, FN, TN)."""
    y, pred = np.asarray(y).astype(bool), np.asarray(pred).astype(bool)
    cells = {"true positive": y & pred, "false positive": ~y & pred, "false negative": y & ~pred, "true negative": ~y & ~pred}
    out = {}
    for name, mask in cells.items():
        idx = np.flatnonzero(mask)
        # the errors a reader most needs to see are the confident ones
        order = np.argsort(-score[idx]) if name in ("true positive", "false positive") else np.argsort(score[idx])
        out[name] = idx[order[:per_cell]].tolist()
    return out


def explain_split(
    run: Run, images: np.ndarray, y: np.ndarray, probs: np.ndarray, plots: Path, fname: str, method: str = "gradcam", seed: int = 0,
) -> dict:
    """Heat maps for (a sample of) a split, each image explained for the class the run decided: the attention
    summary, a region figure and a gallery figure in ``plots``."""
    from cxrkit.evaluation.plots import plot_attention, plot_gallery

    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(images), MAX_IMAGES, replace=False)) if len(images) > MAX_IMAGES else np.arange(len(images))
    # Each image is explained for the class the run decided on, so "normal" calls show what cleared them.
    decided = run.decide(probs[sample])
    heat = np.zeros((len(sample), *images.shape[1:]), dtype=np.float32)
    for c in np.unique(decided):
        heat[decided == c] = heatmaps(run, np.asarray(images[sample[decided == c]]), class_index=int(c), method=method)
    summary = attention_summary(heat)
    summary["no_heat"] = int((heat.reshape(len(heat), -1).max(1) == 0).sum())
    summary.update(method=method, sampled=len(sample) < len(images), n_split=int(len(images)))
    plot_attention(summary, heat.mean(axis=0), plots / f"attention_{fname}.png")
    if run.task == "binary":
        score = probs[:, 1]
        pred = run.decide(probs)
        picks = pick_gallery(y, pred, score)
        items = [(cell, int(i)) for cell, idx in picks.items() for i in idx]
        title = lambda cell, i: f"{cell}\nP({run.classes[1]}) = {score[i]:.2f}"
    else:
        pred = probs.argmax(1)
        items = []
        for c, name in enumerate(run.classes):
            right = np.flatnonzero((y == c) & (pred == c))
            wrong = np.flatnonzero((y == c) & (pred != c))
            items += [(f"{name}: right", int(i)) for i in right[np.argsort(-probs[right, c])][:1]]
            items += [(f"{name}: called {run.classes[pred[i]]}", int(i)) for i in wrong[np.argsort(-probs[wrong].max(1))][:1]]
        title = lambda cell, i: f"{cell}\nP = {probs[i, pred[i]]:.2f}"
    if items:
        idx = np.array([i for _, i in items])
        maps = heatmaps(run, np.asarray(images[idx]), class_index=1 if run.task == "binary" else None, method=method)
        plot_gallery(np.asarray(images[idx]), maps, [title(cell, i) for cell, i in items], plots / f"gallery_{fname}.png")
        summary["gallery"] = [{"cell": cell, "index": i} for cell, i in items]
    return summary
