"""Operating points of a binary model: thresholds chosen on validation for target sensitivities and
specificities, their sensitivity, specificity, PPV and NPV on the evaluated split (Wilson intervals),
the WHO TB-triage target, and PPV/NPV at the prevalence of a screening population (Bayes' rule).
"""

from __future__ import annotations

import numpy as np

from cxrkit.metrics.classification import binary_confusion, proportion_of
from cxrkit.metrics.inputs import binary_pair, patient_clusters, unit_number
from cxrkit.metrics.thresholds import choose_threshold

TARGET_SENSITIVITIES = (0.85, 0.90, 0.95)
TARGET_SPECIFICITIES = (0.70, 0.90, 0.95)
# WHO high-priority target product profile for a community-based TB triage test (WHO 2014, WHO/HTM/TB/2014.18),
# minimal targets, also used for CAD software (WHO consolidated guidelines on TB screening, 2021).
WHO_TRIAGE = {"sensitivity": 0.90, "specificity": 0.70}


def operating_point(y: np.ndarray, prob: np.ndarray, threshold: float, patients: object = None) -> dict:
    """Confusion counts and sensitivity/specificity/PPV/NPV (Wilson 95% CIs, counting ``patients`` where one has several
    images) at ``threshold`` (positive if prob >= it)."""
    y, prob = binary_pair(y, prob)
    clusters = patient_clusters(patients, len(y))
    called, yb = prob >= unit_number(threshold, "threshold"), y.astype(bool)
    c = binary_confusion(y, called)
    return {"threshold": float(threshold), "confusion": c, "sensitivity": proportion_of(called, yb, clusters),
            "specificity": proportion_of(~called, ~yb, clusters), "ppv": proportion_of(yb, called, clusters), "npv": proportion_of(~yb, ~called, clusters)}


def operating_points(
    y_val: np.ndarray, p_val: np.ndarray, y_eval: np.ndarray, p_eval: np.ndarray,
    sensitivities: tuple[float, ...] = TARGET_SENSITIVITIES, specificities: tuple[float, ...] = TARGET_SPECIFICITIES, patients: object = None,
) -> list[dict]:
    """One row per target: the threshold chosen on validation (``sensitivity:x`` / ``specificity:x`` rules of
    :func:`cxrkit.metrics.thresholds.choose_threshold`) and what it achieves on the evaluated split."""
    rows = []
    for kind, targets in (("sensitivity", sensitivities), ("specificity", specificities)):
        for t in targets:
            choice = choose_threshold(y_val, p_val, f"{kind}:{t}", chosen_on="val")
            row = operating_point(y_eval, p_eval, choice.value, patients)
            row.update(target=f"{kind} ≥ {t:.0%}", rule=choice.rule, val_sensitivity=choice.sensitivity, val_specificity=choice.specificity)
            rows.append(row)
    return rows


def who_triage_check(y_val: np.ndarray, p_val: np.ndarray, y_eval: np.ndarray, p_eval: np.ndarray, patients: object = None) -> dict:
    """The WHO TB-triage target (sensitivity ≥ 90% with specificity ≥ 70%) at the threshold chosen on validation
    for 90% sensitivity. ``verdict``: ``pass`` when both lower 95% bounds meet the targets, ``pass (point estimates)``
    when only the estimates do, ``fail`` otherwise."""
    choice = choose_threshold(y_val, p_val, f"sensitivity:{WHO_TRIAGE['sensitivity']}", chosen_on="val")
    op = operating_point(y_eval, p_eval, choice.value, patients)
    sens, spec = op["sensitivity"], op["specificity"]
    ok = all(e["value"] is not None for e in (sens, spec))
    meets = ok and sens["value"] >= WHO_TRIAGE["sensitivity"] and spec["value"] >= WHO_TRIAGE["specificity"]
    sure = meets and sens["ci"][0] >= WHO_TRIAGE["sensitivity"] and spec["ci"][0] >= WHO_TRIAGE["specificity"]
    verdict = "pass" if sure else "pass (point estimates)" if meets else "fail"
    out = {**op, "targets": WHO_TRIAGE, "verdict": verdict}
    if verdict == "pass (point estimates)":
        out["cases_to_confirm"] = {
            "positive": cases_to_confirm(sens["value"], WHO_TRIAGE["sensitivity"]) if sens["ci"][0] < WHO_TRIAGE["sensitivity"] else None,
            "negative": cases_to_confirm(spec["value"], WHO_TRIAGE["specificity"]) if spec["ci"][0] < WHO_TRIAGE["specificity"] else None,
        }
    return out


def cases_to_confirm(rate: float, target: float, confidence: float = 0.95, limit: int = 100_000) -> int | None:
    """The fewest cases on which a measured ``rate`` would have a Wilson lower bound of at least ``target``.

    A point estimate above the target on a small test set does not prove it; this says how many cases an
    evaluation needs for the same rate to prove it. None when the rate does not exceed the target (no number
    of cases can) or more than ``limit`` would be needed.
    """
    from cxrkit.metrics.intervals import wilson_interval

    if not (0 <= rate <= 1 and 0 < target < 1):  # NaN fails both
        raise ValueError(f"rate must be in [0, 1] and target in (0, 1); got {rate} and {target}")
    if rate <= target:
        return None

    def proven(n: int) -> bool:
        # The measured rate itself, not round(rate * n): rounding gives another rate at each n (92.57% at 525 for 92.5%),
        # and a bound that jumps up and down with n misleads the bisection below away from the fewest cases.
        return wilson_interval(rate * n, n, confidence)[0] >= target

    hi = 1
    while not proven(hi):  # at a fixed rate above the target the bound rises with n
        hi *= 2
        if hi > limit:
            return None
    lo = hi // 2
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if proven(mid) else (mid, hi)
    return hi


def ppv_npv_at_prevalence(sensitivity: float, specificity: float, prevalence: float) -> tuple[float, float]:
    """PPV and NPV by Bayes' rule for a population where ``prevalence`` of people have the disease."""
    if not 0 < prevalence < 1:
        raise ValueError(f"prevalence must be between 0 and 1 (exclusive), got {prevalence}")
    sensitivity, specificity = unit_number(sensitivity, "sensitivity"), unit_number(specificity, "specificity")  # 90 for 90%: NaN NPV
    tp, fp = sensitivity * prevalence, (1 - specificity) * (1 - prevalence)
    tn, fn = specificity * (1 - prevalence), (1 - sensitivity) * prevalence
    ppv = tp / (tp + fp) if tp + fp > 0 else float("nan")
    npv = tn / (tn + fn) if tn + fn > 0 else float("nan")
    return float(ppv), float(npv)


def screening_outcomes(sens: dict, spec: dict, prevalence: float, screened: int = 1000) -> dict:
    """PPV/NPV at ``prevalence`` with intervals carried over from the Wilson intervals of sensitivity and
    specificity (both rise with each), and what happens per ``screened`` people: cases found and missed,
    false alarms and confirmatory tests (everyone flagged positive is tested again)."""
    se, sp = sens["value"], spec["value"]
    if se is None or sp is None:
        raise ValueError("sensitivity and specificity must be defined (both classes present) to adjust for prevalence")
    ppv, npv = ppv_npv_at_prevalence(se, sp, prevalence)
    (se_lo, se_hi), (sp_lo, sp_hi) = sens["ci"], spec["ci"]
    ppv_lo, npv_lo = ppv_npv_at_prevalence(se_lo, sp_lo, prevalence)
    ppv_hi, npv_hi = ppv_npv_at_prevalence(se_hi, sp_hi, prevalence)
    sick = screened * prevalence
    found, false_alarms = se * sick, (1 - sp) * (screened - sick)
    return {
        "prevalence": prevalence, "screened": screened, "ppv": {"value": ppv, "ci": [ppv_lo, ppv_hi]}, "npv": {"value": npv, "ci": [npv_lo, npv_hi]},
        "with_disease": sick, "found": found, "missed": sick - found, "false_alarms": false_alarms,
        "confirmatory_tests": found + false_alarms, "tests_per_case_found": (found + false_alarms) / found if found else None,
    }
