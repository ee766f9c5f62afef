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
# Heat maps for at most this many images of a split (seeded sample), enough for a stable mean share (its standard error
# about 0.02 at 100 images). Occlusion costs 81 forward passes an image: 0.06 s for the cnn at 64 px on 2 CPU cores, about
# 2 s for efficientnet-lite0 at 224 px, so above 128 px its sample shrinks with the pixels (33 images at 224 px), to no
# fewer than 24: a corner-marker model's lung share (0.31-0.34) sat well below the warning's 0.5 on 12 to 20 images.
MAX_IMAGES = {"gradcam": 400, "gradcam++": 400, "occlusion": 100}
MIN_OCCLUSION_IMAGES = 24


def max_images(method: str, image_size: int) -> int:
    """How many images of a split the report explains with ``method`` at this image size."""
    if method != "occlusion":
        return MAX_IMAGES[method]
    scaled = round(MAX_IMAGES["occlusion"] * min(1.0, (128 / image_size) ** 2))
    return max(MIN_OCCLUSION_IMAGES, scaled)


def content_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a letterboxed image's own area: outside it the black bars the letterbox added.

    The letterbox centres the image, so its bars are two bands of zeros of equal width (to a pixel) on opposite sides, on
    one axis. A black band on one side only (a collimation edge, a shortcut a model may read) is part of the image: taken for
    a bar, its heat was erased and the report hid the shortcut."""
    h, w = image.shape
    rows, cols = np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))
    if not len(rows):
        return 0, h, 0, w
    top, bottom, left, right = int(rows[0]), h - 1 - int(rows[-1]), int(cols[0]), w - 1 - int(cols[-1])
    vertical = min(top, bottom) if abs(top - bottom) <= 1 else 0
    horizontal = min(left, right) if abs(left - right) <= 1 else 0
    if vertical >= horizontal and vertical > 0:
        return top, h - bottom, 0, w
    if horizontal > 0:
        return 0, h, left, w - right
    return 0, h, 0, w


def region_masks(size: int, box: tuple[int, int, int, int] | None = None) -> dict[str, np.ndarray]:
    """Boolean masks (size, size): ``lung`` (central box), ``corners`` (four corner squares) and ``border`` (the rest), of the
    image's own area ``box`` (:func:`content_box`; the whole square without one). Letterbox bars are in none of them."""
    top, bottom, left, right = box or (0, size, 0, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    yy, xx = (yy - top) / max(1, bottom - top), (xx - left) / max(1, right - left)
    inside = (yy >= 0) & (yy < 1) & (xx >= 0) & (xx < 1)
    t, b, lft, r = LUNG_BOX
    lung = inside & (yy >= t) & (yy < b) & (xx >= lft) & (xx < r)
    corners = inside & ((yy < CORNER) | (yy >= 1 - CORNER)) & ((xx < CORNER) | (xx >= 1 - CORNER))
    return {"lung": lung, "corners": corners, "border": inside & ~lung & ~corners}


REGIONS = ("lung", "corners", "border")


def _boxes(n: int, images: np.ndarray | None) -> list[tuple[int, int, int, int] | None]:
    return [None] * n if images is None else [content_box(im) for im in images]


def _shares(heat: np.ndarray, boxes: list, masks: dict) -> dict[str, np.ndarray]:
    mass = {k: np.array([(h * masks[b][k]).sum() for h, b in zip(heat, boxes)]) for k in REGIONS}
    total = sum(mass.values())  # heat on the letterbox bars is about no part of the radiograph: left out
    with np.errstate(invalid="ignore", divide="ignore"):
        return {k: mass[k] / total for k in REGIONS}


def region_shares(heat: np.ndarray, images: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per image, the share of heat-map mass in each region of :func:`region_masks`, of each image's own area when the
    (letterboxed) ``images`` are given (images with no heat get NaN)."""
    heat = np.asarray(heat, dtype=np.float64)
    boxes = _boxes(len(heat), images)
    return _shares(heat, boxes, {b: region_masks(heat.shape[-1], b) for b in set(boxes)})


def attention_summary(heat: np.ndarray, images: np.ndarray | None = None) -> dict:
    """Mean region shares over a split, the area each region covers (the share a uniform map would get) and the flag; with the
    letterboxed ``images``, of each image's own area."""
    heat = np.asarray(heat, dtype=np.float64)
    size = heat.shape[-1]
    boxes = _boxes(len(heat), images)
    areas = boxes or [None]
    by_box = {b: region_masks(size, b) for b in set(areas)}  # once per distinct image area, for the shares and the areas
    shares = _shares(heat, boxes, by_box)
    fraction = {b: {k: m[k].sum() / (m["lung"] | m["corners"] | m["border"]).sum() for k in REGIONS} for b, m in by_box.items()}
    area = {k: float(np.mean([fraction[b][k] for b in areas])) for k in REGIONS}
    mean = {k: float(np.nanmean(v)) if np.isfinite(v).any() else None for k, v in shares.items()}
    inside = mean["lung"]
    with_heat = np.isfinite(shares["lung"])  # a map that is zero everywhere has no shares: it counted as "not mostly outside"
    # the image area the figure draws its lung box in: the median of the images' own areas (the whole square without images)
    box = [int(v) for v in np.median(np.array([b or (0, size, 0, size) for b in areas]), axis=0)]
    return {
        "n": int(len(heat)), "with_heat": int(with_heat.sum()), "mean_share": mean, "area": area,
        "image_box": box,
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
