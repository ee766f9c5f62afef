"""How many images a validation study needs for its confidence intervals to be as narrow as wanted.

A test set of 45 images gives a sensitivity interval ±0.15 wide: the figure is honest and nearly useless. Before a
site collects images to validate a model, the question is how many it needs. Here the answer is computed for the
intervals cxrkit itself reports, so the study's figures come out as narrow as planned:

- sensitivity, specificity (and PPV, NPV): the Wilson interval (:func:`cxrkit.metrics.intervals.wilson_interval`),
  the smallest count whose interval at the anticipated proportion reaches no farther than ``half_width`` from it on
  either side. Near 0.5 this is Buderer's formula (Acad Emerg Med 1996, 3:895-900), n = z^2 p (1 - p) / d^2. Away
  from 0.5 the Wilson interval is lopsided, longer on the side towards 0.5, which is the side a claim rests on (the
  lower bound of a sensitivity of 0.90): a count that only made the interval 2 d wide (141 cases for 0.90 ± 0.05)
  gave 0.839-0.939, 0.061 below the estimate; reaching at most d on both sides takes 196;
- ROC-AUC: the Hanley-McNeil standard error (Radiology 1982, 143:29-36), which approximates DeLong's, for
  positives and negatives in the given prevalence.

Each needed count of positives (or negatives) becomes a number of images through the prevalence at the site:
a screening population with 2% TB needs fifty images for every positive.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import norm

from cxrkit.metrics.inputs import confidence_level
from cxrkit.metrics.intervals import wilson_bounds


def interval_reach(value: float, low: float, high: float) -> float:
    """How far an interval reaches from its estimate, on its longer side: the ±D a study plan bounds."""
    return max(value - low, high - value)


def wilson_reach(p: float, n: int, confidence: float = 0.95) -> float:
    """How far the Wilson interval reaches from the proportion ``p`` seen in ``n`` cases, on its longer side."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a whole number of cases, at least 1, got {n!r}")
    lo, hi = wilson_bounds(p, n, confidence_level(confidence))
    return interval_reach(p, lo, hi)


def _smallest(enough: Callable[[int], bool], start: int) -> int:
    """The smallest n >= ``start`` for which ``enough(n)`` holds, for a condition that stays true once it holds:
    doubling until it does, then bisecting."""
    hi = start
    while not enough(hi):
        hi *= 2
    lo = hi // 2 if hi > start else start - 1  # enough(lo) is false, or lo is below the range
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return hi


def cases_for_proportion(p: float, half_width: float, confidence: float = 0.95) -> int:
    """The fewest cases whose Wilson interval at the proportion ``p`` lies within ``p`` ± ``half_width``."""
    _check_unit("the anticipated proportion", p, closed=True)
    _check_half_width(half_width)
    confidence = confidence_level(confidence)  # 95 for 0.95: an OverflowError
    return _smallest(lambda n: wilson_reach(p, n, confidence) <= half_width, 1)


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley and McNeil's standard error of an ROC-AUC estimated from ``positives`` and ``negatives``."""
    if min(positives, negatives) < 1:
        raise ValueError(f"an AUC needs at least one positive and one negative image, got {positives} and {negatives}")
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)) / (positives * negatives)
    return math.sqrt(max(var, 0.0))


def images_for_auc(auc: float, prevalence: float, half_width: float, confidence: float = 0.95) -> tuple[int, int, int]:
    """The fewest images (total, positives, negatives) at ``prevalence`` whose AUC interval is at most ± ``half_width``."""
    _check_unit("the anticipated ROC-AUC", auc, closed=False, low=0.5)
    _check_unit("prevalence", prevalence, closed=False)
    _check_half_width(half_width)
    z = norm.ppf(0.5 + confidence_level(confidence) / 2)

    def split(total: int) -> tuple[int, int]:
        pos = max(1, round(total * prevalence))
        return pos, max(1, total - pos)

    def narrow_enough(total: int) -> bool:
        return z * auc_standard_error(auc, *split(total)) <= half_width

    total = _smallest(narrow_enough, 2)
    return (total, *split(total))


@dataclass(frozen=True)
class Requirement:
    """What one figure needs: the cases it is computed on, and the images that bring that many at the prevalence."""

    metric: str
    anticipated: float
    cases: str  # "positives", "negatives" or "images"
    needed_cases: int
    positives: int
    negatives: int
    images: int

    def to_dict(self) -> dict:
        """The requirement as plain JSON values."""
        return asdict(self)


def plan_study(prevalence: float, half_width: float, sensitivity: float | None = None, specificity: float | None = None,
               auc: float | None = None, confidence: float = 0.95) -> dict:
    """The images a validation study needs for each anticipated figure to get an interval of at most ± ``half_width``.

    Returns ``{"requirements": [...], "images": N, "positives": P, "negatives": M, "binding": metric}``: the study
    needs the largest of the requirements, and ``binding`` names the figure that sets it."""
    _check_unit("prevalence", prevalence, closed=False)
    _check_half_width(half_width)
    if not 0.5 <= confidence < 1:
        raise ValueError(f"confidence must be from 0.5 to below 1, got {confidence!r}")
    if sensitivity is None and specificity is None and auc is None:
        raise ValueError("give at least one anticipated figure: sensitivity, specificity or ROC-AUC")
    reqs = []
    if sensitivity is not None:
        n = cases_for_proportion(sensitivity, half_width, confidence)
        total = math.ceil(n / prevalence - 1e-9)
        reqs.append(Requirement("sensitivity", sensitivity, "positives", n, n, total - n, total))
    if specificity is not None:
        n = cases_for_proportion(specificity, half_width, confidence)
        total = math.ceil(n / (1 - prevalence) - 1e-9)
        reqs.append(Requirement("specificity", specificity, "negatives", n, total - n, n, total))
    if auc is not None:
        total, pos, neg = images_for_auc(auc, prevalence, half_width, confidence)
        reqs.append(Requirement("roc_auc", auc, "images", total, pos, neg, total))
    binding = max(reqs, key=lambda r: r.images)
    return {"prevalence": prevalence, "half_width": half_width, "confidence": confidence,
            "requirements": [r.to_dict() for r in reqs], "binding": binding.metric,
            "images": binding.images, "positives": binding.positives, "negatives": binding.negatives}


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_unit(what: str, value: float, closed: bool, low: float = 0.0) -> None:
    if not _finite_number(value) or not (low <= value <= 1 if closed else low < value < 1):
        bounds = f"from {low:g} to 1" if closed else f"strictly between {low:g} and 1"
        raise ValueError(f"{what} must be a number {bounds}, got {value!r}")


def _check_half_width(half_width: float) -> None:
    if not _finite_number(half_width) or not 0.005 <= half_width <= 0.5:
        raise ValueError(f"the interval half-width must be from 0.005 to 0.5 (0.05 is ± 5 points), got {half_width!r}")
