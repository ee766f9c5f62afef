"""Confidence intervals: Wilson for proportions, DeLong for ROC-AUC, stratified bootstrap for the rest."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import norm


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval for a binomial proportion ``successes / n``; None when ``n == 0``.

    Reference: Wilson, E. B. (1927), JASA 22:209-212. Unlike the normal approximation it stays inside
    [0, 1] and behaves at 0% and 100%, which matter for small clinical test sets.
    """
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} outside [0, n={n}]")
    z = norm.ppf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def _midrank(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    n = len(x)
    ranks = np.empty(n)
    i = 0
    while i < n:
        j = i
        while j < n and xs[j] == xs[i]:
            j += 1
        ranks[i:j] = 0.5 * (i + j - 1) + 1
        i = j
    out = np.empty(n)
    out[order] = ranks
    return out


def delong_auc(y_true: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """ROC-AUC and its DeLong variance for binary labels (1 = positive).

    Uses the fast midrank algorithm of Sun & Xu (2014), IEEE Signal Processing Letters 21(11),
    for the structural components of DeLong, DeLong & Clarke-Pearson (1988), Biometrics 44:837-845.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = s[y], s[~y]
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        raise ValueError("AUC needs at least one positive and one negative case")
    tx, ty, tz = _midrank(pos), _midrank(neg), _midrank(np.concatenate([pos, neg]))
    auc = (tz[:m].sum() - m * (m + 1) / 2) / (m * n)
    v01 = (tz[:m] - tx) / n  # per-positive placement values
    v10 = 1.0 - (tz[m:] - ty) / m  # per-negative placement values
    sx = np.var(v01, ddof=1) if m > 1 else 0.0
    sy = np.var(v10, ddof=1) if n > 1 else 0.0
    return float(auc), float(sx / m + sy / n)


def delong_interval(y_true: np.ndarray, scores: np.ndarray, confidence: float = 0.95) -> tuple[float, tuple[float, float]]:
    """ROC-AUC with a DeLong (normal-approximation) interval clipped to [0, 1]."""
    auc, var = delong_auc(y_true, scores)
    half = norm.ppf(0.5 + confidence / 2) * np.sqrt(var)
    return auc, (max(0.0, auc - half), min(1.0, auc + half))


def bootstrap_interval(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    y_true: np.ndarray,
    y_score: np.ndarray,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile interval of ``statistic(y_true, y_score)`` over bootstrap resamples stratified by class.

    Stratifying keeps every resample's class counts equal to the original, so statistics that need
    both classes (AUCs) are always defined. Resamples where the statistic is NaN are dropped; None
    if fewer than half are defined.
    """
    y_true = np.asarray(y_true)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y_true == c) for c in np.unique(y_true)]
    values = []
    for _ in range(n_resamples):
        idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        v = statistic(y_true[idx], y_score[idx])
        if v is not None and np.isfinite(v):
            values.append(v)
    if len(values) < n_resamples / 2:
        return None
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)
