"""Binary evaluation on a set with one class only, e.g. normal images from a screening site to measure specificity.

Only the figures computed within the class that is present exist: specificity (and the false-alarm
count) on normal images, sensitivity on diseased ones. Sensitivity or specificity of the absent class,
ROC-AUC, PR-AUC, balanced accuracy, F1 and the prevalence-dependent PPV and NPV (which would read as
0% or 100% by construction) are set to None with the reason.
"""

from __future__ import annotations

NEEDS_BOTH = ("roc_auc", "pr_auc", "balanced_accuracy", "ppv", "npv", "f1")


def one_class_restriction(metrics: dict) -> str | None:
    """Blank the figures a one-class binary set cannot give (in place) and return the note that says so; None when both classes are present."""
    if metrics.get("task") != "binary" or (metrics["n_positive"] and metrics["n_negative"]):
        return None
    neg, pos = metrics["classes"]
    present, kept, absent = (neg, "specificity", "sensitivity") if metrics["n_negative"] else (pos, "sensitivity", "specificity")
    reason = f"undefined: the set has {present} images only"
    for name in (absent, *NEEDS_BOTH):
        if name in metrics["metrics"]:
            metrics["metrics"][name] = {**metrics["metrics"][name], "value": None, "ci": None, "note": reason}
    metrics["one_class"] = present
    return (f"one-class set ({present} only): {kept} and accuracy are reported; {absent}, ROC-AUC, PR-AUC, balanced accuracy, "
            "F1, PPV and NPV need both classes and are left out")
