"""Confidence intervals: Wilson for proportions, DeLong for ROC-AUC, stratified bootstrap for the rest."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import norm

from cxrkit.metrics.inputs import binary_pair, checked_scores, confidence_level


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval for a binomial proportion ``successes / n``; None when ``n == 0``.

    Reference: Wilson, E. B. (1927), JASA 22:209-212. Unlike the normal approximation it stays inside
    [0, 1] and behaves at 0% and 100%, which matter for small clinical test sets.
    """
    confidence = confidence_level(confidence)  # 95 gave (0.0, 1.0) without a word
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} outside [0, n={n}]")
    return wilson_bounds(successes / n, n, confidence)


def wilson_bounds(p: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson interval, clipped to [0, 1], when ``n`` cases show the proportion ``p`` (``n`` > 0; ``p`` need not be a count / n)."""
    z = norm.ppf(0.5 + confidence / 2)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def _midrank(x: np.ndarray) -> np.ndarray:
    # Tied scores share their mean rank. A hand-written loop here never advanced past a NaN (NaN != NaN): it spun forever.
    from scipy.stats import rankdata

    return rankdata(x, method="average")


def _placements(pos: np.ndarray, neg: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and the DeLong placement values of each positive (V10) and each negative (V01) case."""
    m, n = len(pos), len(neg)
    tx, ty, tz = _midrank(pos), _midrank(neg), _midrank(np.concatenate([pos, neg]))
    auc = (tz[:m].sum() - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:m] - tx) / n  # share of negatives each positive outranks (ties count half)
    v01 = 1.0 - (tz[m:] - ty) / m  # share of positives that outrank each negative
    return float(auc), v10, v01


def delong_paired(y_true: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> dict:
    """DeLong's test of two correlated ROC-AUCs measured on the same cases.

    Returns both AUCs, their difference (a - b), its standard error, the z statistic and the
    two-sided p-value. The covariance of the two AUC estimates comes from the structural components
    (DeLong, DeLong & Clarke-Pearson 1988), which is what makes the test paired: two models that err
    on the same cases have correlated AUCs and a smaller standard error of their difference.
    """
    y, a = binary_pair(y_true, scores_a, probabilities=False, what="first model's")
    b = checked_scores(scores_b, len(y), "second model's scores", probabilities=False)
    y = y.astype(bool)
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        raise ValueError("DeLong's test needs at least two positive and two negative cases")
    auc_a, v10a, v01a = _placements(a[y], a[~y])
    auc_b, v10b, v01b = _placements(b[y], b[~y])
    s10 = np.cov(np.vstack([v10a, v10b]))
    s01 = np.cov(np.vstack([v01a, v01b]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    diff = auc_a - auc_b
    se = float(np.sqrt(max(var, 0.0)))
    if se == 0.0:  # identical rankings (or both perfect): no evidence of a difference
        z, p = 0.0, 1.0
    else:
        z = diff / se
        p = float(2 * norm.sf(abs(z)))
    return {"auc_a": auc_a, "auc_b": auc_b, "difference": diff, "se": se, "z": float(z), "p_value": p}


def delong_auc(y_true: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """ROC-AUC and its DeLong variance for binary labels (1 = positive).

    Uses the fast midrank algorithm of Sun & Xu (2014), IEEE Signal Processing Letters 21(11),
    for the structural components of DeLong, DeLong & Clarke-Pearson (1988), Biometrics 44:837-845.
    """
    y, s = binary_pair(y_true, scores, probabilities=False)
    y = y.astype(bool)
    pos, neg = s[y], s[~y]
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        raise ValueError("AUC needs at least one positive and one negative case")
    auc, v10, v01 = _placements(pos, neg)
    sx = np.var(v10, ddof=1) if m > 1 else 0.0
    sy = np.var(v01, ddof=1) if n > 1 else 0.0
    return auc, float(sx / m + sy / n)


def delong_interval(y_true: np.ndarray, scores: np.ndarray, confidence: float = 0.95) -> tuple[float, tuple[float, float]]:
    """ROC-AUC with a DeLong (normal-approximation) interval clipped to [0, 1]."""
    confidence = confidence_level(confidence)
    auc, var = delong_auc(y_true, scores)
    half = norm.ppf(0.5 + confidence / 2) * np.sqrt(var)
    return auc, (float(max(0.0, auc - half)), float(min(1.0, auc + half)))  # plain floats: they are printed and compared


def bootstrap_interval(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    y_true: np.ndarray,
    y_score: np.ndarray,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    stratified: bool = True,
) -> tuple[float, float] | None:
    """Percentile interval of ``statistic(y_true, y_score)`` over bootstrap resamples stratified by class.

    Stratifying keeps every resample's class counts equal to the original, so statistics that need
    both classes (AUCs) are always defined. ``stratified=False`` resamples images regardless of class: for
    statistics whose uncertainty lies in the class shares themselves (calibration: with the counts fixed, a model
    predicting 0.3 for every image would get a zero-width ECE interval). Resamples where the statistic is NaN are
    dropped; None if fewer than half are defined.
    """
    y_true = np.asarray(y_true)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y_true == c) for c in np.unique(y_true)] if stratified else [np.arange(len(y_true))]
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
