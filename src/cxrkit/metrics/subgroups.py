"""Does the model work equally well in every subgroup (sex, age band, view, site)? Per-group figures with
intervals, a heterogeneity test per metric, and the largest gap in words.

- Per group: n, prevalence, ROC-AUC (DeLong CI), sensitivity, specificity, PPV, NPV (Wilson CIs) at the run's
  threshold.
- Heterogeneity: chi-squared test of homogeneity across groups for sensitivity (detected/missed among
  positives) and specificity (cleared/flagged among negatives); for AUC a Wald test of equal AUCs from the
  groups' independent DeLong variances (two groups: the unpaired DeLong z-test).
- Groups with fewer than ``MIN_CASES`` cases of the class a metric is about are marked ``too_small`` and left
  out of that metric's test: their figures are shown, but they cannot say anything.
- The largest gap: the pair of testable groups furthest apart on sensitivity or specificity, with a Newcombe
  (hybrid Wilson score) interval for the difference of two independent proportions.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import chi2, chi2_contingency

from cxrkit.metrics.classification import binary_confusion, proportion
from cxrkit.metrics.inputs import binary_pair, unit_number
from cxrkit.metrics.intervals import delong_auc, delong_interval, wilson_interval

MIN_CASES = 5  # fewer positives (negatives) than this: no sensitivity (specificity, AUC) comparison for the group
AGE_BANDS = (18, 40, 60)  # 0-17, 18-39, 40-59, 60+


def band_labels(edges: tuple[float, ...]) -> list[str]:
    """Names of the bands cut at ``edges``: (18, 40, 60) -> 0-17, 18-39, 40-59, 60+ (whole-number edges)."""
    lows = [0, *edges]
    names = [f"{lo:g}-{hi - 1:g}" for lo, hi in zip(lows, edges)]
    return [*names, f"{edges[-1]:g}+"]


def bin_numeric(values: list[str], edges: tuple[float, ...]) -> list[str | None]:
    """Numeric text values -> band names (None for a missing or non-numeric value)."""
    names = band_labels(edges)
    out: list[str | None] = []
    for v in values:
        try:
            x = float(str(v).strip().rstrip("Yy"))  # NIH ages read "058Y" in some copies
        except ValueError:
            out.append(None)
            continue
        out.append(names[int(np.searchsorted(edges, x, side="right"))] if np.isfinite(x) else None)
    return out


def _newcombe(x1: int, n1: int, x2: int, n2: int, confidence: float = 0.95) -> tuple[float, tuple[float, float]]:
    """Difference p1 - p2 of two independent proportions with Newcombe's hybrid score interval (method 10)."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson_interval(x1, n1, confidence)
    l2, u2 = wilson_interval(x2, n2, confidence)
    d = p1 - p2
    lo = d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, (float(lo), float(hi))


def _chi2_homogeneity(successes: list[int], totals: list[int]) -> float | None:
    table = np.array([[s, t - s] for s, t in zip(successes, totals)], dtype=float)
    if len(table) < 2 or (table.sum(axis=0) == 0).any():
        return None  # every group all-detected (or all-missed): no variation to test
    return float(chi2_contingency(table, correction=False)[1])


def _auc_heterogeneity(aucs: list[float], variances: list[float]) -> float | None:
    if len(aucs) < 2 or min(variances) <= 0:
        return None
    w = 1 / np.asarray(variances)
    a = np.asarray(aucs)
    q = float((w * (a - (w * a).sum() / w.sum()) ** 2).sum())
    return float(chi2.sf(q, len(a) - 1))


def _group_values(groups: object, n: int) -> list[str | None]:
    """One group name (or None: no value) per image; a list of another length, or a string, is refused."""
    if isinstance(groups, (str, bytes)) or not hasattr(groups, "__len__"):  # "FMF" was three groups of one letter
        raise ValueError("groups must be a list with one group name (or None) per image")
    if len(groups) != n:  # shorter: the rest of the images were silently left out
        raise ValueError(f"{len(groups)} group values for {n} images; give one per image, in the same order")
    return [None if g is None or (isinstance(g, float) and np.isnan(g)) else str(g) for g in groups]


def binary_subgroups(y: np.ndarray, prob: np.ndarray, groups: list[str | None], threshold: float, column: str,
                     confidence: float = 0.95, seed: int = 0) -> dict:
    """Per-group figures of a binary model at ``threshold``, heterogeneity tests and the largest gap (images with
    no group value are counted as ``missing`` and left out)."""
    y, prob = binary_pair(y, prob)
    threshold = unit_number(threshold, "threshold")
    groups = _group_values(groups, len(y))
    names = sorted({g for g in groups if g is not None}, key=_natural)
    g_arr = np.array(["" if g is None else g for g in groups], dtype=object)
    rows = []
    for name in names:
        idx = np.flatnonzero(g_arr == name)
        yg, pg = y[idx], prob[idx]
        cm = binary_confusion(yg, (pg >= threshold).astype(int))
        tp, fp, tn, fn = cm["tp"], cm["fp"], cm["tn"], cm["fn"]
        pos, neg = tp + fn, tn + fp
        auc = {"value": None, "ci": None, "method": "delong"}
        if pos and neg:
            value, ci = delong_interval(yg, pg, confidence)
            auc = {"value": value, "ci": list(ci), "method": "delong"}
        row = {"group": name, "n": len(idx), "n_positive": pos, "n_negative": neg, "prevalence": pos / len(idx), "confusion": cm,
               "roc_auc": auc, "sensitivity": proportion(tp, pos, confidence), "specificity": proportion(tn, neg, confidence),
               "ppv": proportion(tp, tp + fp, confidence), "npv": proportion(tn, tn + fn, confidence),
               "too_small": {"sensitivity": pos < MIN_CASES, "specificity": neg < MIN_CASES, "roc_auc": min(pos, neg) < MIN_CASES}}
        if not row["too_small"]["roc_auc"]:
            row["auc_variance"] = delong_auc(yg, pg)[1]
        rows.append(row)
    tests = {}
    for metric, cell, total in (("sensitivity", "tp", ("tp", "fn")), ("specificity", "tn", ("tn", "fp"))):
        ok = [r for r in rows if not r["too_small"][metric]]
        p = _chi2_homogeneity([r["confusion"][cell] for r in ok], [sum(r["confusion"][k] for k in total) for r in ok])
        tests[metric] = {"test": "chi-squared homogeneity", "groups": [r["group"] for r in ok], "p_value": p}
    ok = [r for r in rows if not r["too_small"]["roc_auc"]]
    tests["roc_auc"] = {"test": "Wald test of equal AUCs (unpaired DeLong)", "groups": [r["group"] for r in ok],
                        "p_value": _auc_heterogeneity([r["roc_auc"]["value"] for r in ok], [r["auc_variance"] for r in ok])}
    return {"column": column, "groups": rows, "missing": int(sum(g is None for g in groups)), "tests": tests,
            "largest_gap": _largest_gap(rows, column, confidence), "min_cases": MIN_CASES}


def _largest_gap(rows: list[dict], column: str, confidence: float) -> dict | None:
    best = None
    for metric, cell, other in (("sensitivity", "tp", "fn"), ("specificity", "tn", "fp")):
        ok = [r for r in rows if not r["too_small"][metric]]
        if len(ok) < 2:
            continue
        hi = max(ok, key=lambda r: r[metric]["value"])
        lo = min(ok, key=lambda r: r[metric]["value"])
        if hi is lo:
            continue
        c_lo, c_hi = lo["confusion"], hi["confusion"]
        d, ci = _newcombe(c_hi[cell], c_hi[cell] + c_hi[other], c_lo[cell], c_lo[cell] + c_lo[other], confidence)
        if best is None or d > best["difference"]:
            best = {"metric": metric, "lower_group": lo["group"], "higher_group": hi["group"], "difference": d, "ci": list(ci),
                    "method": "Newcombe hybrid score"}
    if best is not None:
        # One decimal: a lower bound of 0.06 points printed as "0" read as an interval touching no difference, beside a claim
        # that it excludes it.
        best["sentence"] = (f"{best['metric']} in {column} {best['lower_group']} is {100 * best['difference']:.1f} points lower than in "
                            f"{best['higher_group']} (95% CI {100 * best['ci'][0]:.1f} to {100 * best['ci'][1]:.1f})"
                            + ("" if best["ci"][0] > 0 else "; the interval includes no difference"))
    return best


def multilabel_subgroups(y: np.ndarray, probs: np.ndarray, classes: list[str], thresholds: np.ndarray, groups: list[str | None],
                         column: str, confidence: float = 0.95, seed: int = 0) -> dict:
    """:func:`binary_subgroups` for each finding of a multi-label run, at that finding's threshold, and per group the
    mean of the per-finding AUCs over the findings the group can measure (at least one positive and one negative)."""
    per = {c: binary_subgroups(y[:, k], probs[:, k], groups, float(thresholds[k]), column, confidence, seed) for k, c in enumerate(classes)}
    names = [g["group"] for g in next(iter(per.values()))["groups"]] if per else []
    summary = []
    for i, name in enumerate(names):
        aucs = [r["groups"][i]["roc_auc"]["value"] for r in per.values() if r["groups"][i]["roc_auc"]["value"] is not None]
        n = next(iter(per.values()))["groups"][i]["n"]
        summary.append({"group": name, "n": n, "mean_auc": float(np.mean(aucs)) if aucs else None, "findings_measured": len(aucs)})
    flagged = {c: r["largest_gap"]["sentence"] for c, r in per.items()
               if r.get("largest_gap") and r["largest_gap"]["ci"][0] > 0}
    return {"column": column, "per_finding": per, "summary": summary, "gaps_excluding_zero": flagged,
            "missing": int(sum(g is None for g in groups)), "min_cases": MIN_CASES}


def _natural(name: str) -> tuple:
    head = name.split("-")[0].rstrip("+")
    try:
        return (0, float(head), name)
    except ValueError:
        return (1, 0.0, name)

