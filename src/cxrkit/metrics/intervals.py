"""Confidence intervals: Wilson for proportions, DeLong for ROC-AUC, stratified bootstrap for the rest.

When a patient contributes several images, those images are not independent (one patient's follow-up films share their
disease and much of their appearance), and intervals computed as if they were come out too narrow. Each method has a form
that counts patients: Wilson with the effective sample size of the design effect, Obuchowski's clustered DeLong, and a
bootstrap that resamples patients with all their images.
"""

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
    # At 0% and 100% the bound is exact: rounding left 6.9e-18 where 0 belongs.
    return 0.0 if p <= 0 else float(max(0.0, centre - half)), 1.0 if p >= 1 else float(min(1.0, centre + half))


# Fewer patients than this among a proportion's cases, or one patient holding most of them, and the data cannot say how alike
# a patient's images are: the interval then assumes they are alike (one patient with 39 of 57 positives kept the image-level
# interval, labelled "by patient").
MIN_PATIENTS = 5


def clustered_wilson(hits: np.ndarray, clusters: np.ndarray, confidence: float = 0.95) -> tuple[tuple[float, float] | None, float]:
    """Wilson interval of the proportion of ``hits`` (0/1, one per case) when cases come in ``clusters``; also the effective n.

    The variance of the proportion is the ratio estimator's over the k clusters, k/(k-1) sum_i (x_i - p m_i)^2 / n^2 (x_i
    hits among the cluster's m_i cases); its ratio to the binomial p(1 - p)/n is the design effect (Rao & Scott 1992), and
    the Wilson interval is taken at n / design effect, never above n. Where that variance cannot be estimated (p = 0 or 1,
    fewer than MIN_PATIENTS clusters, or one cluster holding over half the cases) the effective n is n^2 / sum_i m_i^2, what
    it would be if a cluster's cases were all alike; the estimate is never taken below that. One case per cluster gives
    the plain Wilson interval.
    """
    hits = np.asarray(hits, dtype=np.float64)
    n = len(hits)
    if n == 0:
        return None, 0.0
    confidence = confidence_level(confidence)
    _, codes = np.unique(np.asarray(clusters), return_inverse=True)
    x, m = np.bincount(codes, weights=hits), np.bincount(codes).astype(np.float64)
    p, k = float(hits.mean()), len(m)
    if k == n:
        return wilson_bounds(p, n, confidence), float(n)
    alike = n * n / float(np.sum(m * m))
    binomial = p * (1 - p) / n
    if binomial <= 0 or k < MIN_PATIENTS or m.max() > n / 2:
        n_eff = alike
    else:
        clustered = k / (k - 1) * float(np.sum((x - p * m) ** 2)) / (n * n)
        n_eff = min(float(n), max(alike, n / max(1.0, clustered / binomial)))
    return wilson_bounds(p, n_eff, confidence), n_eff


def effective_cases_by_prefix(clusters: np.ndarray) -> np.ndarray:
    """The effective n of :func:`clustered_wilson` for every proportion "the first j cases are hits" (j = 0..n).

    ``clusters`` holds each case's cluster in the order cases become hits (for a sensitivity, the positives from the highest
    score down). Used to bound a threshold's sensitivity or specificity by patient at every candidate threshold at once:
    sum_i x_i^2 and sum_i x_i m_i grow by 2 x_c + 1 and m_c when a case of cluster c becomes a hit.
    """
    _, codes = np.unique(np.asarray(clusters), return_inverse=True)
    n = len(codes)
    m = np.bincount(codes).astype(np.float64)
    k = len(m)
    j = np.arange(n + 1, dtype=np.float64)
    if k == n:
        return j * 0 + n
    order = np.argsort(codes, kind="stable")
    before = np.empty(n, dtype=np.float64)  # how many earlier cases of the same cluster became hits first
    before[order] = np.arange(n) - np.repeat(np.cumsum(m) - m, m.astype(np.int64))
    sum_x2 = np.r_[0.0, np.cumsum(2 * before + 1)]
    sum_xm = np.r_[0.0, np.cumsum(m[codes])]
    p = j / n
    alike = n * n / float(np.sum(m * m))
    binomial = p * (1 - p) / n
    clustered = k / max(k - 1, 1) * (sum_x2 - 2 * p * sum_xm + p * p * np.sum(m * m)) / (n * n)
    with np.errstate(divide="ignore", invalid="ignore"):
        estimated = np.minimum(float(n), np.maximum(alike, n / np.maximum(1.0, clustered / binomial)))
    if k < MIN_PATIENTS or m.max() > n / 2:
        return np.full(n + 1, alike)
    return np.where(binomial <= 0, alike, estimated)


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


def delong_paired(y_true: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, clusters: np.ndarray | None = None) -> dict:
    """DeLong's test of two correlated ROC-AUCs measured on the same cases.

    Returns both AUCs, their difference (a - b), its standard error, the z statistic and the
    two-sided p-value. The covariance of the two AUC estimates comes from the structural components
    (DeLong, DeLong & Clarke-Pearson 1988), which is what makes the test paired: two models that err
    on the same cases have correlated AUCs and a smaller standard error of their difference. ``clusters`` (one patient
    code per case): Obuchowski's (1997) clustered form, never with a smaller standard error than DeLong's.
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
    if clusters is not None:
        # The difference's placement values are the two models' differences: its clustered variance is that of one "AUC"
        # whose components are v_a - v_b, centred on auc_a - auc_b.
        # With every positive (or negative) from one patient it cannot be estimated: DeLong's stands (a ValueError here
        # stopped a whole comparison after every model had trained).
        clustered = _clustered_variance(y, v10a - v10b, v01a - v01b, auc_a - auc_b, clusters)
        var = var if clustered is None else max(var, clustered)
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


def clustered_delong_auc(y_true: np.ndarray, scores: np.ndarray, clusters: np.ndarray) -> tuple[float, float | None]:
    """ROC-AUC and its variance when cases come in ``clusters`` (a patient's images), or None when it cannot be estimated.

    Obuchowski (1997), Biometrics 53:567-578: DeLong's placement values summed within each cluster, their spread taken over
    clusters, plus the covariance of a cluster's positive and negative cases. One case per cluster gives DeLong's variance.
    The variance needs positives in two clusters and negatives in two.
    """
    y, s = binary_pair(y_true, scores, probabilities=False)
    y = y.astype(bool)
    if not 0 < y.sum() < len(y):
        raise ValueError("AUC needs at least one positive and one negative case")
    auc, v10, v01 = _placements(s[y], s[~y])
    return auc, _clustered_variance(y, v10, v01, auc, clusters)


def _clustered_variance(y: np.ndarray, v10: np.ndarray, v01: np.ndarray, auc: float, clusters: np.ndarray) -> float | None:
    """Obuchowski's variance from the placement values of the positives (``v10``) and negatives (``v01``) of boolean
    labels ``y``; None unless positives come from two clusters and negatives from two."""
    _, codes = np.unique(np.asarray(clusters), return_inverse=True)
    if len(codes) != len(y):
        raise ValueError(f"{len(codes)} patient IDs for {len(y)} labels; give one per image, in the same order")
    m_total, n_total, k = len(v10), len(v01), int(codes.max()) + 1
    m = np.bincount(codes[y], minlength=k).astype(np.float64)
    n = np.bincount(codes[~y], minlength=k).astype(np.float64)
    x_comp = np.bincount(codes[y], weights=v10, minlength=k) - m * auc
    y_comp = np.bincount(codes[~y], weights=v01, minlength=k) - n * auc
    i10, i01, i = int((m > 0).sum()), int((n > 0).sum()), int(((m + n) > 0).sum())
    if i10 < 2 or i01 < 2:
        return None
    s10 = i10 / ((i10 - 1) * m_total) * float(np.sum(x_comp**2))
    s01 = i01 / ((i01 - 1) * n_total) * float(np.sum(y_comp**2))
    s11 = i / (i - 1) * float(np.sum(x_comp * y_comp))
    return max(0.0, s10 / m_total + s01 / n_total + 2 * s11 / (m_total * n_total))


def auc_variance(y_true: np.ndarray, scores: np.ndarray, clusters: np.ndarray | None = None) -> tuple[float, float | None]:
    """ROC-AUC and its DeLong variance; with ``clusters``, the larger of DeLong's and Obuchowski's (None when the positives
    or the negatives all come from one patient)."""
    auc, var = delong_auc(y_true, scores)
    if clusters is None:
        return auc, var
    _, clustered = clustered_delong_auc(y_true, scores, clusters)
    # Never narrower than counting images: the clustered estimate falls below DeLong's when a patient's positive and
    # negative images pull against each other, an estimate from few patients that a medical figure should not lean on.
    return auc, None if clustered is None else max(var, clustered)


def delong_interval(y_true: np.ndarray, scores: np.ndarray, confidence: float = 0.95,
                    clusters: np.ndarray | None = None) -> tuple[float, tuple[float, float] | None]:
    """ROC-AUC with a DeLong (normal-approximation) interval clipped to [0, 1]; Obuchowski's clustered form when
    ``clusters`` (one patient code per case) are given, never narrower than DeLong's, and None when the positives or the
    negatives all come from one patient."""
    confidence = confidence_level(confidence)
    auc, var = auc_variance(y_true, scores, clusters)
    if var is None:
        return auc, None
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
    clusters: np.ndarray | None = None,
) -> tuple[float, float] | None:
    """Percentile interval of ``statistic(y_true, y_score)`` over bootstrap resamples stratified by class.

    Stratifying keeps every resample's class counts equal to the original, so statistics that need
    both classes (AUCs) are always defined. ``stratified=False`` resamples images regardless of class: for
    statistics whose uncertainty lies in the class shares themselves (calibration: with the counts fixed, a model
    predicting 0.3 for every image would get a zero-width ECE interval). Resamples where the statistic is NaN are
    dropped; None if fewer than half are defined. ``clusters`` (one patient code per case): resample patients with all
    their images (stratified by the set of classes a patient's images hold), so a patient's images stay together; the
    wider of that interval and the images' one is returned.
    """
    y_true = np.asarray(y_true)
    if clusters is not None:
        # Never narrower than resampling images: with every positive from one patient the patients' resamples hold the
        # positives still, and F1 came out 0.857 (0.857-0.857) where images gave 0.729-0.962.
        by_patient = _percentiles(statistic, y_true, y_score, cluster_draw(y_true, np.asarray(clusters), stratified), n_resamples,
                                  confidence, seed)
        by_image = bootstrap_interval(statistic, y_true, y_score, n_resamples, confidence, seed, stratified)
        known = [c for c in (by_patient, by_image) if c is not None]
        return max(known, key=lambda c: c[1] - c[0]) if known else None
    groups = [np.flatnonzero(y_true == c) for c in np.unique(y_true)] if stratified else [np.arange(len(y_true))]

    def draw(rng: np.random.Generator) -> np.ndarray:
        return np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])

    return _percentiles(statistic, y_true, y_score, draw, n_resamples, confidence, seed)


def _percentiles(statistic: Callable[[np.ndarray, np.ndarray], float], y_true: np.ndarray, y_score: np.ndarray,
                 draw: Callable[[np.random.Generator], np.ndarray], n_resamples: int, confidence: float, seed: int) -> tuple[float, float] | None:
    """Percentile interval of ``statistic`` over ``n_resamples`` resamples from ``draw``; None if under half are defined."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        idx = draw(rng)
        v = statistic(y_true[idx], y_score[idx])
        if v is not None and np.isfinite(v):
            values.append(v)
    if len(values) < n_resamples / 2:
        return None
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


def cluster_draw(y_true: np.ndarray, clusters: np.ndarray, stratified: bool) -> Callable[[np.random.Generator], np.ndarray]:
    """A function drawing one bootstrap resample of case indices by whole clusters (stratified by the set of classes a
    cluster holds when ``stratified``). After a draw, the function's ``drawn`` attribute holds each drawn case's cluster
    instance (a cluster drawn twice is two clusters), for statistics that count clusters within the resample."""
    _, codes = np.unique(clusters, return_inverse=True)
    if len(codes) != len(y_true):
        raise ValueError(f"{len(codes)} patient IDs for {len(y_true)} labels; give one per image, in the same order")
    order = np.argsort(codes, kind="stable")
    members = np.split(order, np.flatnonzero(np.diff(codes[order])) + 1)
    if stratified:  # patients with only negatives, only positives, both (multi-class: each set of classes) drawn apart
        kinds: dict[tuple, list[int]] = {}
        for c, rows in enumerate(members):
            kinds.setdefault(tuple(np.unique(y_true[rows]).tolist()), []).append(c)
        strata = [np.array(v) for v in kinds.values()]
    else:
        strata = [np.arange(len(members))]

    sizes = np.array([len(m) for m in members])
    offsets = np.r_[0, np.cumsum(sizes)[:-1]]
    flat = np.concatenate(members)

    def draw(rng: np.random.Generator) -> np.ndarray:
        chosen = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in strata])
        lengths = sizes[chosen]
        # the chosen clusters' rows in one step (a Python loop over 1,000 patients per resample doubled the figures' time)
        shift = np.repeat(offsets[chosen] - np.r_[0, np.cumsum(lengths)[:-1]], lengths)
        draw.drawn = np.repeat(np.arange(len(chosen)), lengths)
        return flat[shift + np.arange(int(lengths.sum()))]

    return draw


def paired_bootstrap_difference(difference: Callable[[np.ndarray], float], n: int, n_resamples: int = 2000, seed: int = 0,
                                clusters: np.ndarray | None = None, confidence: float = 0.95) -> dict | None:
    """A paired bootstrap test of a difference between two models scored on the same ``n`` cases.

    ``difference(rows)`` is model A's figure minus model B's on the cases ``rows`` (with repeats). Resamples cases, or
    patients with all their images when ``clusters`` are given; resamples where the figure is undefined are dropped.
    Returns the difference, its percentile interval and the two-sided p-value (twice the share of resamples on the far
    side of zero, at least one resample's worth), or None if under half the resamples are defined.
    """
    confidence = confidence_level(confidence)
    rng = np.random.default_rng(seed)
    if clusters is not None:
        draw = cluster_draw(np.zeros(n), np.asarray(clusters), stratified=False)
    else:
        def draw(r: np.random.Generator) -> np.ndarray:
            return r.integers(0, n, n)
    values = []
    for _ in range(n_resamples):
        v = difference(draw(rng))
        if v is not None and np.isfinite(v):
            values.append(v)
    if len(values) < n_resamples / 2:
        return None
    values = np.asarray(values)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    far = min((values <= 0).mean(), (values >= 0).mean())
    return {"difference": float(difference(np.arange(n))), "ci": [float(lo), float(hi)],
            "p_value": float(min(1.0, max(2 * far, 1 / len(values)))), "resamples": len(values)}
