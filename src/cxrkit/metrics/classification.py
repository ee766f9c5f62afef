"""Diagnostic metrics with 95% confidence intervals for binary, multi-class and multi-label models.

Every entry is a dict ``{"value", "ci", "method"}`` plus ``numerator``/``denominator`` for
proportions. ``value`` and ``ci`` are None when undefined (e.g. PPV when the model never says
positive), never a made-up 0 or 1.

``patients`` (one ID per image) makes every interval count patients rather than images when a patient has several
images (:mod:`cxrkit.metrics.intervals`): NIH ChestX-ray14 has about three films per patient, and image-level intervals
on such a split covered a true AUC 76% of the time instead of 95% in simulation (94% counting patients).
"""

from __future__ import annotations

import numpy as np

from cxrkit.metrics.inputs import binary_labels, binary_pair, checked_scores, class_pair, confidence_level, patient_clusters, resamples, unit_number
from cxrkit.metrics.intervals import bootstrap_interval, clustered_wilson, delong_interval, wilson_interval

BY_PATIENT = "by patient"  # appended to a method's name when its interval resamples or sums patients, not images


def proportion(successes: int, n: int, confidence: float = 0.95) -> dict:
    """A proportion with its Wilson interval (value None when ``n == 0``)."""
    ci = wilson_interval(int(successes), int(n), confidence)
    return {
        "value": (successes / n) if n else None,
        "ci": list(ci) if ci else None,
        "numerator": int(successes),
        "denominator": int(n),
        "method": "wilson",
    }


def proportion_of(hits: np.ndarray, among: np.ndarray, clusters: np.ndarray | None = None, confidence: float = 0.95) -> dict:
    """The proportion of ``hits`` among the images ``among`` selects, its interval counting patients when ``clusters`` are known."""
    h = np.asarray(hits, dtype=bool)[among]
    if clusters is None:
        return proportion(int(h.sum()), len(h), confidence)
    ci, n_eff = clustered_wilson(h, clusters[among], confidence)
    return {"value": float(h.mean()) if len(h) else None, "ci": list(ci) if ci else None, "numerator": int(h.sum()),
            "denominator": len(h), "patients": len(np.unique(clusters[among])), "effective_n": round(n_eff, 1),
            "method": f"wilson {BY_PATIENT}"}


def _auc_entry(y: np.ndarray, s: np.ndarray, clusters: np.ndarray | None, confidence: float) -> dict:
    """ROC-AUC with its DeLong interval (Obuchowski's when patients are known)."""
    auc, ci = delong_interval(y, s, confidence, clusters)
    e = _entry(auc, ci, "delong" if clusters is None else f"delong {BY_PATIENT} (Obuchowski)")
    if ci is None:
        side = "positive" if len(np.unique(clusters[np.asarray(y) == 1])) < 2 else "negative"
        e["note"] = f"every {side} image comes from one patient: no interval"
    return e


def _patients_seen(patients: object, clusters: np.ndarray | None, n: int) -> dict:
    """The result's patient count and how its intervals were made."""
    if patients is None:
        return {}
    return {"n_patients": int(clusters.max()) + 1 if clusters is not None else n, "intervals_by": "patient" if clusters is not None else "image"}


DEGENERATE_NOTE = "zero-width interval: the sample is perfectly separated, so the method sees no variance; the true uncertainty is larger"
TIED_NOTE = "zero-width interval: every case got the same score, so the model does not rank these cases at all"
SAME_CALLS_NOTE = ("zero-width interval: every resample gave the same figure (the model made one call for every case, or every "
                   "call was right); the true uncertainty is larger")


def _entry(value: float | None, ci: tuple[float, float] | None, method: str, decisions: bool = False) -> dict:
    """A figure with its interval; ``decisions``: computed from the calls, not the scores (F1, balanced accuracy)."""
    e = {"value": None if value is None or not np.isfinite(value) else float(value), "ci": list(ci) if ci else None, "method": method}
    if ci and ci[1] - ci[0] < 1e-12 and decisions:
        # A model that called every image Covid got balanced accuracy 0.333 (0.333-0.333) "because every case got the same
        # score", beside per-class AUCs of 0.93: its scores differed, its calls did not.
        e["note"] = SAME_CALLS_NOTE
    elif ci and ci[1] - ci[0] < 1e-12:
        # DeLong's and the bootstrap's variance is zero for a perfect ranking (AUC 0 or 1) and for a constant score (0.5, all tied):
        # a diverged or collapsed model's 0.500 (0.500-0.500) was explained as "perfectly separated".
        separated = e["value"] is not None and (e["value"] <= 1e-9 or e["value"] >= 1 - 1e-9)
        e["note"] = DEGENERATE_NOTE if separated else TIED_NOTE
    return e


def binary_confusion(y_true: np.ndarray, pred: np.ndarray) -> dict[str, int]:
    """Counts of true/false positives/negatives for 0/1 labels and 0/1 predictions."""
    y = binary_labels(y_true).astype(bool)
    p = binary_labels(pred, "predictions").astype(bool)
    if len(p) != len(y):
        raise ValueError(f"{len(p)} predictions for {len(y)} labels; give one per image, in the same order")
    return {"tp": int((y & p).sum()), "fp": int((~y & p).sum()), "tn": int((~y & ~p).sum()), "fn": int((y & ~p).sum())}


def rank_auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC-AUC by the Mann-Whitney rank formula (ties count half); equals sklearn's, ~50x faster."""
    y = np.asarray(y).astype(bool)
    m, n = int(y.sum()), int(len(y) - y.sum())
    if m == 0 or n == 0:
        return float("nan")
    from scipy.stats import rankdata

    r = rankdata(s)
    return float((r[y].sum() - m * (m + 1) / 2) / (m * n))


def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """Average precision (step-wise PR-AUC, tied scores grouped) exactly as sklearn defines it."""
    y = np.asarray(y).astype(bool)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        return float("nan")
    order = np.argsort(-np.asarray(s, dtype=np.float64), kind="mergesort")
    ss, ys = np.asarray(s)[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(ss)), len(ss) - 1]  # last index of each tied score group
    tp = np.cumsum(ys)[last]
    precision = tp / (last + 1)
    recall_gain = np.diff(np.r_[0, tp]) / n_pos
    return float(np.sum(recall_gain * precision))


def _f1_from_pred(y: np.ndarray, p: np.ndarray) -> float:
    tp = int((y & p).sum())
    d = int(p.sum()) + int(y.sum())  # = 2TP + FP + FN
    return 2 * tp / d if d else float("nan")


def _balanced_accuracy_binary(y: np.ndarray, p: np.ndarray) -> float:
    pos = y.sum()
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    return 0.5 * ((y & p).sum() / pos + (~y & ~p).sum() / neg)


def binary_metrics(
    y_true: np.ndarray, prob: np.ndarray, threshold: float, n_bootstrap: int = 1000, seed: int = 0, confidence: float = 0.95,
    patients: object = None,
) -> dict:
    """Confusion matrix and diagnostic metrics of a binary model at ``threshold`` (positive if prob >= threshold).

    Sensitivity, specificity, PPV, NPV and accuracy get Wilson intervals; ROC-AUC a DeLong interval;
    PR-AUC (average precision), F1 and balanced accuracy a stratified bootstrap interval. ``patients``: one ID per
    image; where a patient has several images, every interval counts patients (see the module's note).
    """
    from sklearn.metrics import average_precision_score, balanced_accuracy_score  # imported here: predict and serve never need scikit-learn
    y, prob = binary_pair(y_true, prob)
    threshold = unit_number(threshold, "threshold")
    confidence, n_bootstrap = confidence_level(confidence), resamples(n_bootstrap)
    if not len(y):
        raise ValueError("no images: metrics need at least one labelled image")
    clusters = patient_clusters(patients, len(y))
    boot = "bootstrap" if clusters is None else f"bootstrap {BY_PATIENT}"
    pred = (prob >= threshold).astype(int)
    cm = binary_confusion(y, pred)
    tp, fp, fn = cm["tp"], cm["fp"], cm["fn"]
    both = 0 < y.sum() < len(y)
    yb, pb = y.astype(bool), pred.astype(bool)
    m: dict[str, dict] = {
        "sensitivity": proportion_of(pb, yb, clusters, confidence),
        "specificity": proportion_of(~pb, ~yb, clusters, confidence),
        "ppv": proportion_of(yb, pb, clusters, confidence),
        "npv": proportion_of(~yb, ~pb, clusters, confidence),
        "accuracy": proportion_of(yb == pb, np.ones(len(y), dtype=bool), clusters, confidence),
    }
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else float("nan")
    m["f1"] = _entry(f1, bootstrap_interval(_f1_from_pred, yb, pb, n_bootstrap, confidence, seed, clusters=clusters), boot, decisions=True)
    bacc = balanced_accuracy_score(y, pred) if both else float("nan")
    m["balanced_accuracy"] = _entry(
        bacc, bootstrap_interval(_balanced_accuracy_binary, yb, pb, n_bootstrap, confidence, seed, clusters=clusters) if both else None,
        boot, decisions=True,
    )
    if both:
        m["roc_auc"] = _auc_entry(y, prob, clusters, confidence)
        m["pr_auc"] = _entry(average_precision_score(y, prob),
                             bootstrap_interval(average_precision, y, prob, n_bootstrap, confidence, seed, clusters=clusters), boot)
    else:
        m["roc_auc"] = _entry(None, None, "delong")
        m["pr_auc"] = _entry(None, None, "bootstrap")
    return {
        "task": "binary",
        "threshold": float(threshold),
        "n": len(y),
        "n_positive": int(y.sum()),
        "n_negative": int(len(y) - y.sum()),
        **_patients_seen(patients, clusters, len(y)),
        "confusion": cm,
        "metrics": m,
    }


def multiclass_metrics(
    y_true: np.ndarray, probs: np.ndarray, classes: list[str], n_bootstrap: int = 1000, seed: int = 0, confidence: float = 0.95,
    patients: object = None,
) -> dict:
    """Metrics of a multi-class model deciding by the most probable class.

    Overall: accuracy (Wilson), balanced accuracy, macro F1 and macro one-vs-rest ROC-AUC (bootstrap).
    Per class, one-vs-rest: sensitivity, specificity, PPV, NPV (Wilson), F1 and ROC-AUC (DeLong).
    ``confusion[i][j]`` counts cases of true class i predicted as class j. ``patients``: as for :func:`binary_metrics`.
    """
    from sklearn.metrics import f1_score  # imported here: predict and serve never need scikit-learn
    y, probs = class_pair(y_true, probs, classes)
    confidence, n_bootstrap = confidence_level(confidence), resamples(n_bootstrap)
    if not len(y):
        raise ValueError("no images: metrics need at least one labelled image")
    k = len(classes)
    clusters = patient_clusters(patients, len(y))
    boot = "bootstrap" if clusters is None else f"bootstrap {BY_PATIENT}"
    pred = probs.argmax(axis=1)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (y, pred), 1)
    per_class = {}
    for c, name in enumerate(classes):
        yc, pc = y == c, pred == c
        b = binary_confusion(yc, pc)
        tp, fp, fn = b["tp"], b["fp"], b["fn"]
        entry = {
            "support": int(yc.sum()),
            "sensitivity": proportion_of(pc, yc, clusters, confidence),
            "specificity": proportion_of(~pc, ~yc, clusters, confidence),
            "ppv": proportion_of(yc, pc, clusters, confidence),
            "npv": proportion_of(~yc, ~pc, clusters, confidence),
            "f1": _entry(2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else float("nan"), None, "point"),
        }
        if 0 < yc.sum() < len(yc):
            entry["roc_auc"] = _auc_entry(yc.astype(int), probs[:, c], clusters, confidence)
        else:
            entry["roc_auc"] = _entry(None, None, "delong")
        per_class[name] = entry
    present = np.unique(y)

    def macro_auc(yt: np.ndarray, idx_scores: np.ndarray) -> float:
        ps = probs[idx_scores.astype(int)]
        aucs = [rank_auc(yt == c, ps[:, c]) for c in range(k)]
        return float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")

    def bacc(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean([(b[a == c] == c).mean() for c in np.unique(a)]))

    def macro_f1(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean([_f1_from_pred(a == c, b == c) for c in present]))

    index = np.arange(len(y), dtype=np.float64)
    overall = {
        "accuracy": proportion_of(pred == y, np.ones(len(y), dtype=bool), clusters, confidence),
        "balanced_accuracy": _entry(
            # Ours, not scikit-learn's: the same mean recall over the classes present, without its warning (printed into the
            # command's output) when the model predicts a class this split lacks.
            bacc(y, pred), bootstrap_interval(bacc, y, pred, n_bootstrap, confidence, seed, clusters=clusters), boot, decisions=True
        ),
        "macro_f1": _entry(
            f1_score(y, pred, average="macro", labels=present, zero_division=0.0),
            bootstrap_interval(macro_f1, y, pred, n_bootstrap, confidence, seed, clusters=clusters),
            boot,
            decisions=True,
        ),
        "macro_roc_auc": _entry(
            macro_auc(y, index) if len(present) > 1 else None,
            bootstrap_interval(macro_auc, y, index, n_bootstrap, confidence, seed, clusters=clusters) if len(present) > 1 else None,
            boot,
        ),
    }
    missing = [classes[c] for c in range(k) if c not in present]
    if missing:  # a macro figure over fewer classes than the model has reads as the model's; say which ones it leaves out
        for key in ("balanced_accuracy", "macro_f1", "macro_roc_auc"):
            said = overall[key].get("note")
            overall[key]["missing_classes"] = missing
            overall[key]["note"] = (f"averaged over the {len(present)} of {k} classes present: no {', '.join(missing)} images here"
                                    + (f"; {said}" if said else ""))
    return {"task": "multiclass", "classes": list(classes), "n": len(y), **_patients_seen(patients, clusters, len(y)),
            "confusion": cm.tolist(), "metrics": overall, "per_class": per_class}


def _multilabel_inputs(y_true: object, probs: object, classes: list[str], thresholds: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, K) 0/1 findings, (N, K) probabilities in [0, 1] and K thresholds, for the K ``classes``."""
    y = np.asarray(y_true)
    p = np.asarray(probs)
    k = len(classes)
    if y.ndim != 2 or p.shape != y.shape or y.shape[1] != k or not len(y):
        raise ValueError(f"multi-label labels and probabilities must both be (images, {k}) arrays, one column per finding; "
                         f"got {y.shape} and {p.shape}")
    flat_y = binary_labels(y.reshape(-1), "finding labels")
    flat_p = checked_scores(p.reshape(-1), what="probabilities")
    t = np.asarray(thresholds, dtype=np.float64) if not np.isscalar(thresholds) else np.array([])
    if t.shape != (k,):
        raise ValueError(f"thresholds must give one threshold per finding ({k}), got {np.shape(thresholds)}")
    for name, v in zip(classes, t):
        unit_number(float(v), f"threshold of {name}")
    return flat_y.reshape(y.shape), flat_p.reshape(y.shape), t


# A finding's ROC-AUC gets an interval, and counts in the mean over findings, from this many images with it (and without).
# DeLong's interval on 2-4 positives excluded chance where a rank test did not (Pneumonia, 2 positives: 0.263 (0.067-0.458),
# Mann-Whitney p 0.29), and a mean that took in three findings seen on one image each read 0.611 against 0.558 without them.
MIN_FINDING_CASES = 5


def multilabel_metrics(
    y_true: np.ndarray, probs: np.ndarray, classes: list[str], thresholds: np.ndarray, n_bootstrap: int = 1000, seed: int = 0,
    confidence: float = 0.95, patients: object = None,
) -> dict:
    """Metrics of a multi-label model: per finding, and the figures that summarise all findings.

    Per finding (finding ``k`` called present when ``probs[:, k] >= thresholds[k]``): ROC-AUC (DeLong),
    PR-AUC (stratified bootstrap), and sensitivity, specificity, PPV, NPV (Wilson). Sensitivity and
    specificity are the "detection rates": the shares of positive and of negative images the model
    identifies correctly. Overall: the mean ROC-AUC over findings with at least MIN_FINDING_CASES images with and
    without them (bootstrap over images; a resample missing a finding's positives is dropped, not averaged over fewer
    findings), pooled detection rates, and label-wise accuracy beside what predicting "no finding" everywhere would
    score, to show why accuracy says nothing here. ``patients``: as for :func:`binary_metrics`; then a finding needs
    MIN_FINDING_CASES patients with it and without it (seven images of one patient's pneumothorax are one case).
    """
    y, probs, thresholds = _multilabel_inputs(y_true, probs, classes, thresholds)
    confidence, n_bootstrap = confidence_level(confidence), resamples(n_bootstrap)
    clusters = patient_clusters(patients, len(y))
    boot = "bootstrap" if clusters is None else f"bootstrap {BY_PATIENT}"
    pred = (probs >= thresholds[None, :]).astype(int)
    n, k = y.shape
    unit = "image" if clusters is None else "patient"

    def cases(c: int) -> tuple[int, int]:  # images (or patients) with finding c, and without it
        if clusters is None:
            return int(y[:, c].sum()), int(n - y[:, c].sum())
        return len(np.unique(clusters[y[:, c] == 1])), len(np.unique(clusters[y[:, c] == 0]))

    per_label = {}
    for c, name in enumerate(classes):
        yc, pc = y[:, c].astype(bool), pred[:, c].astype(bool)
        b = binary_confusion(yc, pc)
        entry = {
            "support": int(yc.sum()), "n_negative": int(n - yc.sum()), "threshold": float(thresholds[c]), "confusion": b,
            "sensitivity": proportion_of(pc, yc, clusters, confidence), "specificity": proportion_of(~pc, ~yc, clusters, confidence),
            "ppv": proportion_of(yc, pc, clusters, confidence), "npv": proportion_of(~yc, ~pc, clusters, confidence),
        }
        if clusters is not None:
            entry["patients_with_it"] = cases(c)[0]
        if 0 < yc.sum() < n:
            with_it, without = cases(c)
            few = min(with_it, without) < MIN_FINDING_CASES
            entry["roc_auc"] = _auc_entry(yc.astype(int), probs[:, c], clusters, confidence)
            if few:  # DeLong's variance on so few cases gives a falsely narrow interval
                entry["roc_auc"]["ci"] = None
                side = "positive" if with_it <= without else "negative"
                who = f"{side} image(s)" if clusters is None else f"patient(s) {'with' if side == 'positive' else 'without'} it"
                entry["roc_auc"]["note"] = (f"{min(with_it, without)} {who} only (under {MIN_FINDING_CASES}): no interval, and not in the mean "
                                            "over findings; this AUC is little more than chance")
            # As for ROC-AUC: a bootstrap holding one positive image still resamples the negatives, and gave an interval that
            # reflected them alone.
            ap_ci = None if few else bootstrap_interval(average_precision, yc.astype(int), probs[:, c], n_bootstrap, confidence, seed,
                                                        clusters=clusters)
            entry["pr_auc"] = _entry(average_precision(yc, probs[:, c]), ap_ci, boot)
            if few:
                entry["pr_auc"]["note"] = entry["roc_auc"]["note"]
        else:
            entry["roc_auc"] = _entry(None, None, "delong")
            entry["pr_auc"] = _entry(None, None, "bootstrap")
        per_label[name] = entry
    defined = [c for c in range(k) if min(cases(c)) >= MIN_FINDING_CASES]

    def mean_auc(_: np.ndarray, rows: np.ndarray) -> float:
        r = rows.astype(int)
        aucs = [rank_auc(y[r, c], probs[r, c]) for c in defined]
        return float(np.mean(aucs)) if np.isfinite(aucs).all() else float("nan")  # NaN: the resample is dropped

    rows = np.arange(n, dtype=np.float64)
    point = mean_auc(rows, rows) if defined else None
    ci = bootstrap_interval(mean_auc, np.zeros(n), rows, n_bootstrap, confidence, seed, stratified=False,
                            clusters=clusters) if defined else None
    cells = None if clusters is None else np.repeat(clusters, k)  # every finding of an image belongs to its patient
    yf, pf = y.reshape(-1).astype(bool), pred.reshape(-1).astype(bool)
    everything, every_image = np.ones(n * k, dtype=bool), np.ones(n, dtype=bool)
    overall = {
        "mean_roc_auc": {**_entry(point, ci, f"bootstrap over {unit}s"),
                         **({} if defined else {"note": f"no finding has {MIN_FINDING_CASES} {unit}s with it and without it in this split"})},
        "detection_rate_positive": proportion_of(pf, yf, cells, confidence),
        "detection_rate_negative": proportion_of(~pf, ~yf, cells, confidence),
        "label_accuracy": proportion_of(pf == yf, everything, cells, confidence),
        "exact_match": proportion_of((pred == y).all(axis=1), every_image, clusters, confidence),
    }
    baseline = {
        "label_accuracy": proportion_of(~yf, everything, cells, confidence),
        "exact_match": proportion_of(y.sum(axis=1) == 0, every_image, clusters, confidence),
    }
    return {
        "task": "multilabel", "classes": list(classes), "n": n, **_patients_seen(patients, clusters, n),
        "n_with_finding": int((y.sum(axis=1) > 0).sum()),
        "labels_per_image": float(y.sum(axis=1).mean()) if n else None, "findings_in_mean_auc": [classes[c] for c in defined],
        "metrics": overall, "all_negative_baseline": baseline, "per_label": per_label,
    }
