"""A binary model against human readers on the same images: each one's sensitivity and specificity, the paired
difference with Newcombe's interval and McNemar's exact test, and where the reader's point lies against the
model's ROC curve (the model's sensitivity at the reader's specificity, and its specificity at the reader's
sensitivity, with stratified bootstrap intervals of the difference).

References: Newcombe, R. G. (1998), Statistics in Medicine 17:2635-2650 (method 10, the interval for a
difference of paired proportions); McNemar, Q. (1947), Psychometrika 12:153-157. Where a patient has several images
(``patients``), the proportions count patients (:func:`cxrkit.metrics.classification.proportion_of`), the difference
gets the wider of Newcombe's interval and a bootstrap of whole patients, and the p-value the larger of McNemar's and
Durkalski et al.'s clustered McNemar test (Statistics in Medicine 2003, 22:2417-2428).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest, chi2

from cxrkit.metrics.classification import proportion_of
from cxrkit.metrics.inputs import binary_labels, binary_pair, patient_clusters
from cxrkit.metrics.intervals import paired_bootstrap_difference, wilson_interval

BOOTSTRAP_REPLICATES = 2000


def paired_difference(both: int, first_only: int, second_only: int, neither: int, confidence: float = 0.95) -> dict:
    """The difference of two proportions measured on the same cases, (first − second) = (first_only − second_only) / n,
    with Newcombe's (1998, method 10) interval and McNemar's exact two-sided p-value on the discordant cases."""
    counts = (both, first_only, second_only, neither)
    if any(int(c) != c or c < 0 for c in counts):
        raise ValueError(f"paired counts must be whole numbers >= 0, got {counts}")
    n = both + first_only + second_only + neither
    if n == 0:
        return {"value": None, "ci": None, "method": "newcombe", "p_value": None, "discordant": [0, 0]}
    p1, p2 = (both + first_only) / n, (both + second_only) / n
    l1, u1 = wilson_interval(both + first_only, n, confidence)
    l2, u2 = wilson_interval(both + second_only, n, confidence)
    # The correlation of the two proportions, with Newcombe's continuity correction of the cross product.
    margins = (both + first_only) * (second_only + neither) * (both + second_only) * (first_only + neither)
    cross = both * neither - first_only * second_only
    cross = cross - n / 2 if cross > n / 2 else (0.0 if cross >= 0 else cross)
    phi = cross / np.sqrt(margins) if margins > 0 else 0.0
    d = p1 - p2
    lower = d - np.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    upper = d + np.sqrt(max((p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2, 0.0))
    discordant = first_only + second_only
    p = 1.0 if discordant == 0 else float(binomtest(min(first_only, second_only), discordant, 0.5).pvalue)
    return {"value": float(d), "ci": [float(max(-1.0, lower)), float(min(1.0, upper))], "method": "newcombe",
            "p_value": p, "discordant": [int(first_only), int(second_only)]}


def clustered_paired_difference(first: np.ndarray, second: np.ndarray, clusters: np.ndarray, confidence: float = 0.95,
                                seed: int = 0) -> dict:
    """:func:`paired_difference` when the cases come in ``clusters``: never a narrower interval nor a smaller p-value.

    The interval is the wider of Newcombe's and a percentile bootstrap of whole clusters; the p-value the larger of
    McNemar's exact one and Durkalski's clustered McNemar statistic, (sum_i (b_i - c_i))^2 / sum_i (b_i - c_i)^2 on 1 degree
    of freedom, where b_i and c_i count the cluster's cases only the first or only the second got right.
    """
    first, second = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    plain = paired_difference(*_paired_table(first, second), confidence=confidence)
    if plain["value"] is None:
        return plain
    _, codes = np.unique(np.asarray(clusters), return_inverse=True)
    gap = np.bincount(codes, weights=(first & ~second).astype(float)) - np.bincount(codes, weights=(~first & second).astype(float))
    spread = float(np.sum(gap ** 2))
    p_clustered = 1.0 if spread == 0 else float(chi2.sf(float(np.sum(gap)) ** 2 / spread, 1))
    boot = paired_bootstrap_difference(lambda rows: float(first[rows].mean() - second[rows].mean()), len(first), 2000, seed, codes, confidence)
    ci = plain["ci"]
    if boot is not None and boot["ci"][1] - boot["ci"][0] > ci[1] - ci[0]:
        ci = boot["ci"]
    return {**plain, "ci": ci, "p_value": max(plain["p_value"], p_clustered), "method": "newcombe or patient bootstrap, the wider",
            "test": "McNemar exact or Durkalski's clustered McNemar, the larger p"}


def _paired_table(first: np.ndarray, second: np.ndarray) -> tuple[int, int, int, int]:
    return (int(np.sum(first & second)), int(np.sum(first & ~second)), int(np.sum(~first & second)), int(np.sum(~first & ~second)))


def sensitivity_at_false_positives(pos: np.ndarray, neg_sorted_desc: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """The model's highest sensitivity with at most ``allowed`` false positives (positive if score >= threshold):
    every threshold above the ``allowed + 1``-th highest negative score; ties stay on the safe side."""
    allowed = np.asarray(allowed)
    n_neg = neg_sorted_desc.shape[-1]
    k = np.minimum(allowed, n_neg - 1)
    bar = np.take_along_axis(neg_sorted_desc, k[..., None], axis=-1) if neg_sorted_desc.ndim > 1 else neg_sorted_desc[k][..., None]
    sens = np.mean(pos > bar, axis=-1)
    return np.where(allowed >= n_neg, 1.0, sens)


def _matched(y: np.ndarray, score: np.ndarray, reader: np.ndarray, seed: int, replicates: int, confidence: float,
             clusters: np.ndarray | None = None) -> dict:
    """The model's sensitivity at the reader's specificity and its specificity at the reader's sensitivity on these images,
    and the bootstrap intervals (positives and negatives resampled apart, the reader's calls with their images; with
    ``clusters``, each interval the wider of that and a bootstrap of whole patients)."""
    pos, neg = score[y == 1], score[y == 0]
    r_pos, r_neg = reader[y == 1], reader[y == 0]

    def figures(pos, neg, r_pos, r_neg):
        # At the reader's specificity: no more false positives than the reader. At its sensitivity: no fewer true
        # positives, i.e. the mirror problem with the classes and the score's sign swapped.
        sens = sensitivity_at_false_positives(pos, -np.sort(-neg, axis=-1), r_neg.sum(axis=-1))
        spec = sensitivity_at_false_positives(-neg, -np.sort(pos, axis=-1), (~r_pos).sum(axis=-1))
        return sens - r_pos.mean(axis=-1), spec - (~r_neg).mean(axis=-1), sens, spec

    d_sens, d_spec, sens, spec = figures(pos, neg, r_pos, r_neg)
    rng = np.random.default_rng(seed)
    boot_sens, boot_spec = [], []
    chunk = max(1, 4_000_000 // max(len(score), 1))
    for start in range(0, replicates, chunk):
        b = min(chunk, replicates - start)
        ip = rng.integers(0, len(pos), size=(b, len(pos)))
        ineg = rng.integers(0, len(neg), size=(b, len(neg)))
        ds, dp, _, _ = figures(pos[ip], neg[ineg], r_pos[ip], r_neg[ineg])
        boot_sens.append(ds)
        boot_spec.append(dp)
    alpha = (1 - confidence) / 2
    by_patient: tuple[list, list] = ([], [])
    if clusters is not None:
        from cxrkit.metrics.intervals import cluster_draw

        draw = cluster_draw(y, clusters, stratified=True)
        for _ in range(replicates):  # a patient's positive and negative films drawn together: sizes vary, so one at a time
            rows = draw(rng)
            yr = y[rows]
            ds, dp, _, _ = figures(score[rows][yr == 1], score[rows][yr == 0], reader[rows][yr == 1], reader[rows][yr == 0])
            by_patient[0].append(ds)
            by_patient[1].append(dp)
    out = {}
    for name, value, diff, boot, clustered in (("sensitivity_at_reader_specificity", sens, d_sens, boot_sens, by_patient[0]),
                                               ("specificity_at_reader_sensitivity", spec, d_spec, boot_spec, by_patient[1])):
        lo, hi = np.quantile(np.concatenate(boot), [alpha, 1 - alpha])
        method = f"stratified bootstrap ({replicates})"
        if clustered:
            plo, phi = np.quantile(clustered, [alpha, 1 - alpha])
            if phi - plo > hi - lo:
                lo, hi, method = plo, phi, f"bootstrap of patients ({replicates})"
        out[name] = {"value": float(value), "difference": {"value": float(diff), "ci": [float(lo), float(hi)], "method": method}}
    return out


def compare_with_reader(y: np.ndarray, score: np.ndarray, threshold: float, reader: np.ndarray, seed: int = 0,
                        replicates: int = BOOTSTRAP_REPLICATES, confidence: float = 0.95, patients: object = None) -> dict:
    """The model (positive if ``score`` >= ``threshold``) against one reader's calls (True = positive) on the same images:
    both sensitivities and specificities (Wilson), the paired differences model − reader (Newcombe, McNemar), their
    agreement, and the model at the reader's own sensitivity and specificity (descriptive: those thresholds are
    chosen on these images)."""
    y, score = binary_pair(y, score, probabilities=False)
    # Calls as text ("yes"/"no"), 1/2 or NaN for an unread image were all read as positive: the reader's specificity 0.
    reader = binary_labels(reader, "the reader's calls (True/1 = positive, False/0 = negative)").astype(bool)
    if len(reader) != len(y):
        raise ValueError(f"labels, scores and the reader's calls differ in length ({len(y)}, {len(score)}, {len(reader)})")
    threshold = float(threshold)
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    model = score >= threshold
    clusters = patient_clusters(patients, len(y))
    out: dict = {"n": int(len(y)), "positives": int(y.sum()), "negatives": int((y == 0).sum())}
    if clusters is not None:
        out["n_patients"] = int(clusters.max()) + 1
    for name, rows, called in (("sensitivity", y == 1, True), ("specificity", y == 0, False)):
        m, r = model[rows] == called, reader[rows] == called
        every = np.ones(int(rows.sum()), dtype=bool)
        cl = None if clusters is None else clusters[rows]
        out[name] = {"model": proportion_of(m, every, cl, confidence), "reader": proportion_of(r, every, cl, confidence),
                     "difference": paired_difference(*_paired_table(m, r), confidence=confidence) if cl is None
                     else clustered_paired_difference(m, r, cl, confidence, seed)}
    out["agreement"] = proportion_of(model == reader, np.ones(len(y), dtype=bool), clusters, confidence)
    if out["positives"] and out["negatives"]:
        out.update(_matched(y, score, reader, seed, replicates, confidence, clusters))
    return out
