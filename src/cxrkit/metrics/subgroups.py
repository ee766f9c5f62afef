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
- ``patients``: where a patient has several images, every interval counts patients (as in
  :mod:`cxrkit.metrics.classification`), the AUC test uses the clustered variances, and the chi-squared statistic is
  divided by the groups' mean design effect (Rao & Scott 1981, first order): a patient's films all fall in one age band
  or sex, so counted as independent they made a gap between groups look significant.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import chi2, chi2_contingency

from cxrkit.metrics.classification import binary_confusion, proportion_of
from cxrkit.metrics.inputs import binary_pair, patient_clusters, unit_number
from cxrkit.metrics.intervals import auc_variance, delong_interval

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


def _newcombe(first: dict, second: dict) -> tuple[float, tuple[float, float]]:
    """Difference p1 - p2 of two independent proportions (entries with their Wilson intervals) with Newcombe's hybrid
    score interval (method 10)."""
    p1, (l1, u1) = first["value"], first["ci"]
    p2, (l2, u2) = second["value"], second["ci"]
    d = p1 - p2
    lo = d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, (float(lo), float(hi))


def _chi2_homogeneity(successes: list[int], totals: list[int], design_effect: float = 1.0) -> float | None:
    table = np.array([[s, t - s] for s, t in zip(successes, totals)], dtype=float)
    if len(table) < 2 or (table.sum(axis=0) == 0).any():
        return None  # every group all-detected (or all-missed): no variation to test
    statistic, _, dof, _ = chi2_contingency(table, correction=False)
    return float(chi2.sf(statistic / design_effect, dof))


def _design_effect(entries: list[dict]) -> float:
    """The mean design effect of groups' proportions (1 when their intervals count images), weighted by their cases."""
    n = sum(e["denominator"] for e in entries)
    if not n:
        return 1.0
    return sum(e["denominator"] ** 2 / e["effective_n"] if e.get("effective_n") else e["denominator"] for e in entries) / n


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
                     confidence: float = 0.95, seed: int = 0, patients: object = None) -> dict:
    """Per-group figures of a binary model at ``threshold``, heterogeneity tests and the largest gap (images with
    no group value are counted as ``missing`` and left out); ``patients`` (one ID per image): see the module's note."""
    y, prob = binary_pair(y, prob)
    threshold = unit_number(threshold, "threshold")
    groups = _group_values(groups, len(y))
    clusters = patient_clusters(patients, len(y))
    names = sorted({g for g in groups if g is not None}, key=_natural)
    g_arr = np.array(["" if g is None else g for g in groups], dtype=object)
    rows = []
    for name in names:
        idx = np.flatnonzero(g_arr == name)
        yg, pg = y[idx].astype(bool), prob[idx]
        cg = None if clusters is None else clusters[idx]
        called = pg >= threshold
        cm = binary_confusion(yg, called)
        tp, fp, tn, fn = cm["tp"], cm["fp"], cm["tn"], cm["fn"]
        pos, neg = tp + fn, tn + fp
        units_pos, units_neg = (pos, neg) if cg is None else (len(np.unique(cg[yg])), len(np.unique(cg[~yg])))
        auc = {"value": None, "ci": None, "method": "delong"}
        if pos and neg:
            value, ci = delong_interval(yg, pg, confidence, cg)
            auc = {"value": value, "ci": list(ci) if ci else None, "method": "delong" if cg is None else "delong by patient (Obuchowski)"}
        row = {"group": name, "n": len(idx), "n_positive": pos, "n_negative": neg, "prevalence": pos / len(idx), "confusion": cm,
               "roc_auc": auc, "sensitivity": proportion_of(called, yg, cg, confidence), "specificity": proportion_of(~called, ~yg, cg, confidence),
               "ppv": proportion_of(yg, called, cg, confidence), "npv": proportion_of(~yg, ~called, cg, confidence),
               # with patients known, a group needs MIN_CASES patients (not films) of the class a metric is about
               "too_small": {"sensitivity": units_pos < MIN_CASES, "specificity": units_neg < MIN_CASES,
                             "roc_auc": min(units_pos, units_neg) < MIN_CASES or auc["ci"] is None}}
        if cg is not None:
            row["n_patients"] = len(np.unique(cg))
        if not row["too_small"]["roc_auc"]:
            row["auc_variance"] = auc_variance(yg, pg, cg)[1]
        rows.append(row)
    tests = {}
    for metric, cell, total in (("sensitivity", "tp", ("tp", "fn")), ("specificity", "tn", ("tn", "fp"))):
        ok = [r for r in rows if not r["too_small"][metric]]
        p = _chi2_homogeneity([r["confusion"][cell] for r in ok], [sum(r["confusion"][k] for k in total) for r in ok],
                              _design_effect([r[metric] for r in ok]))
        tests[metric] = {"test": "chi-squared homogeneity" + ("" if clusters is None else ", Rao-Scott corrected for patients"),
                         "groups": [r["group"] for r in ok], "p_value": p}
    ok = [r for r in rows if not r["too_small"]["roc_auc"]]
    tests["roc_auc"] = {"test": "Wald test of equal AUCs (unpaired DeLong" + (")" if clusters is None else ", clustered by patient)"),
                        "groups": [r["group"] for r in ok],
                        "p_value": _auc_heterogeneity([r["roc_auc"]["value"] for r in ok], [r["auc_variance"] for r in ok])}
    return {"column": column, "groups": rows, "missing": int(sum(g is None for g in groups)), "tests": tests,
            "largest_gap": _largest_gap(rows, column), "min_cases": MIN_CASES,
            **({} if clusters is None else {"intervals_by": "patient"})}


def _largest_gap(rows: list[dict], column: str) -> dict | None:
    best = None
    for metric in ("sensitivity", "specificity"):
        ok = [r for r in rows if not r["too_small"][metric]]
        if len(ok) < 2:
            continue
        hi = max(ok, key=lambda r: r[metric]["value"])
        lo = min(ok, key=lambda r: r[metric]["value"])
        if hi is lo:
            continue
        d, ci = _newcombe(hi[metric], lo[metric])
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
                         column: str, confidence: float = 0.95, seed: int = 0, patients: object = None) -> dict:
    """:func:`binary_subgroups` for each finding of a multi-label run, at that finding's threshold, and per group the
    mean of the per-finding AUCs over the findings EVERY group can measure (MIN_CASES cases with and without it): each
    group's mean over the findings it alone could measure compared a mean of easy findings with one of hard ones."""
    per = {c: binary_subgroups(y[:, k], probs[:, k], groups, float(thresholds[k]), column, confidence, seed, patients)
           for k, c in enumerate(classes)}
    names = [g["group"] for g in next(iter(per.values()))["groups"]] if per else []
    common = [c for c, r in per.items() if r["groups"] and not any(g["too_small"]["roc_auc"] for g in r["groups"])]
    summary = []
    for i, name in enumerate(names):
        aucs = [per[c]["groups"][i]["roc_auc"]["value"] for c in common]
        n = next(iter(per.values()))["groups"][i]["n"]
        summary.append({"group": name, "n": n, "mean_auc": float(np.mean(aucs)) if aucs else None, "findings_measured": len(aucs),
                        "over": common})
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

