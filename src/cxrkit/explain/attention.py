"""Where a model looks, over a whole split: the share of heat-map mass in the central lung field against the
borders and corners (where laterality markers, text and scanner labels sit), and a gallery of examples
from each cell of the confusion matrix.
"""

from __future__ import annotations

import numpy as np

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
    with_heat = np.isfinite(shares["lung"])  # a map that is zero everywhere has no shares: it counted as "not mostly outside"
    return {
        "n": int(len(heat)), "with_heat": int(with_heat.sum()), "mean_share": mean, "area": {k: float(m.mean()) for k, m in masks.items()},
        "share_mostly_outside": float(np.mean(shares["lung"][with_heat] < MOSTLY_OUTSIDE)) if inside is not None else None,
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
