"""A referral band: two thresholds chosen on validation data. Below the lower one the model rules the disease
out, at or above the upper one it rules it in, in between it says "refer to a reader".

Targets (``--referral npv:0.98,ppv:0.90`` or ``sensitivity:0.99,specificity:0.99``):

- ``npv:X`` - the highest lower threshold whose ruled-out validation cases have NPV >= X;
  ``sensitivity:X`` - the highest lower threshold that still passes (does not rule out) a share X of the positives.
- ``ppv:X`` - the lowest upper threshold whose ruled-in validation cases have PPV >= X;
  ``specificity:X`` - the lowest upper threshold that rules in at most a share 1 - X of the negatives.

Both are point targets met on the validation split; the evaluated split reports what they achieve there, with
Wilson intervals, and how many images were decided without a reader.
"""

from __future__ import annotations

import numpy as np

from cxrkit.metrics.classification import proportion
from cxrkit.metrics.inputs import binary_pair, unit_number

LOWER_RULES = ("npv", "sensitivity")
UPPER_RULES = ("ppv", "specificity")


def parse_referral(spec: str) -> dict[str, tuple[str, float]]:
    """``"npv:0.98,ppv:0.90"`` -> {"lower": ("npv", 0.98), "upper": ("ppv", 0.90)}; one lower and one upper rule."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("a referral band needs two targets, e.g. npv:0.98,ppv:0.90 or sensitivity:0.99,specificity:0.99")
    out: dict[str, tuple[str, float]] = {}
    for part in spec.split(","):
        kind, sep, value = part.strip().lower().partition(":")
        side = "lower" if kind in LOWER_RULES else "upper" if kind in UPPER_RULES else None
        if side is None or not sep:
            raise ValueError(f"referral target {part.strip()!r}: use npv:X or sensitivity:X (rule out) and ppv:X or specificity:X (rule in)")
        try:
            target = float(value)
        except ValueError:
            raise ValueError(f"referral target {part.strip()!r}: {value!r} is not a number") from None
        if not 0 < target < 1:
            raise ValueError(f"referral target {part.strip()!r} must be between 0 and 1")
        if side in out:
            raise ValueError(f"referral band {spec!r} has two {side} targets; give one rule-out and one rule-in target")
        out[side] = (kind, target)
    if set(out) != {"lower", "upper"}:
        raise ValueError(f"referral band {spec!r} needs one rule-out target (npv or sensitivity) and one rule-in target (ppv or specificity)")
    return out


def choose_referral(y: np.ndarray, prob: np.ndarray, spec: str, threshold: float | None = None, patients: object = None) -> dict:
    """The two thresholds of ``spec`` chosen on (validation) labels ``y`` and P(positive) ``prob``; with the run's decision
    ``threshold``, the band is widened to contain it, so that outside the band the run's own decision is the band's.
    ``patients`` (one ID per image): the lower bounds that say whether a target is established count patients."""
    rules = parse_referral(spec)
    y, prob = binary_pair(y, prob)
    if threshold is not None:
        threshold = unit_number(threshold, "threshold")
    if not len(y) or y.min() == y.max():
        raise ValueError("choosing a referral band needs both classes in the validation split")
    cand = np.unique(np.r_[prob, 1.0, 0.0])
    kind, target = rules["lower"]
    lower_ok = []
    for t in cand:
        out = prob < t
        if kind == "npv":
            ok = out.any() and (y[out] == 0).mean() >= target - 1e-12
        else:
            ok = (prob[y == 1] >= t).mean() >= target - 1e-12
        if ok:
            lower_ok.append(t)
    lower = float(max(lower_ok)) if lower_ok else 0.0  # nothing can be ruled out at this target
    kind, target = rules["upper"]
    upper_ok = []
    for t in cand:
        inn = prob >= t
        if kind == "ppv":
            ok = inn.any() and (y[inn] == 1).mean() >= target - 1e-12
        else:
            ok = (prob[y == 0] < t).mean() >= target - 1e-12
        if ok:
            upper_ok.append(t)
    upper = float(min(upper_ok)) if upper_ok else 1.0 + 1e-9  # nothing can be ruled in at this target
    note = None
    if lower > upper:  # the two regions overlap: every case is decided; split at the midpoint of the overlap
        lower = upper = (lower + upper) / 2
        note = "the rule-out and rule-in regions overlap on validation data: no case needs a reader at these targets"
    if threshold is not None and not lower <= threshold <= upper:
        # Outside the band predict, evaluate and serve decide by the threshold: a band beside it (0.175 against 0.188) counted
        # an image at 0.183 as ruled in while every command called it negative.
        lower, upper = min(lower, threshold), max(upper, threshold)
        note = (f"{note}; " if note else "") + f"the band was widened to contain the decision threshold {threshold:.3f}"
    achieved = referral_outcomes(y, prob, lower, upper, patients)
    c = achieved["confusion_decided"]
    npos, nneg = int((y == 1).sum()), int((y == 0).sum())
    reached = {"npv": achieved["npv_ruled_out"], "ppv": achieved["ppv_ruled_in"],
               "sensitivity": proportion(npos - c["fn"], npos), "specificity": proportion(nneg - c["fp"], nneg)}
    unsupported = []
    for side in ("lower", "upper"):
        kind, target = rules[side]
        e = reached[kind]
        # Met on the point estimate only: "NPV 100% (86.2-100%)" for a 0.99 target printed as if it were established.
        if e["value"] is not None and e["ci"][0] < target:
            held = f" (from {e['patients']} patients)" if e.get("patients") else ""
            unsupported.append(f"{kind} {target:g} is met on validation ({100 * e['value']:.1f}%) but its 95% lower bound is "
                               f"{100 * e['ci'][0]:.1f}%: {e['denominator']} validation images{held} cannot establish it")
    return {"spec": spec, "lower": lower, "upper": min(upper, 1.0 + 1e-9), "chosen_on": "val", "note": note, "unsupported": unsupported,
            "validation": {k: achieved[k] for k in ("decided_share", "npv_ruled_out", "ppv_ruled_in", "referred")}}


def referral_outcomes(y: np.ndarray, prob: np.ndarray, lower: float, upper: float, patients: object = None) -> dict:
    """What a band does on labelled data: shares ruled out, referred and ruled in, and the accuracy of the decided ones
    (intervals counting ``patients`` where one has several images)."""
    from cxrkit.metrics.classification import proportion_of
    from cxrkit.metrics.inputs import patient_clusters

    y, prob = binary_pair(y, prob)
    clusters = patient_clusters(patients, len(y))
    lower = unit_number(lower, "lower threshold")
    # An upper threshold just above 1 (1 + 1e-9) is how choose_referral says "nothing is ruled in", and runs store it.
    unit_number(min(upper, 1.0) if isinstance(upper, (int, float)) and 1 < upper <= 1 + 1e-6 else upper, "upper threshold")
    if lower > upper:
        raise ValueError(f"the lower threshold {lower:g} is above the upper one {upper:g}")
    out, inn = prob < lower, prob >= upper
    refer = ~out & ~inn
    n = len(y)
    decided = out | inn
    tp, fp = int((inn & (y == 1)).sum()), int((inn & (y == 0)).sum())
    tn, fn = int((out & (y == 0)).sum()), int((out & (y == 1)).sum())
    pos, every = y == 1, np.ones(n, dtype=bool)

    def share(hits: np.ndarray, among: np.ndarray) -> dict:
        return proportion_of(hits, among, clusters)

    return {
        "n": n, "ruled_out": int(out.sum()), "ruled_in": int(inn.sum()), "referred": int(refer.sum()),
        "decided_share": share(decided, every),
        "npv_ruled_out": share(~pos, out), "ppv_ruled_in": share(pos, inn),
        # Of all positives: how many the model itself ruled in, and how many it wrongly ruled out (missed without a reader).
        "positives_ruled_in": share(inn, pos), "positives_missed": share(out, pos),
        "negatives_ruled_out": share(out, ~pos),
        "error_rate_decided": share((inn & ~pos) | (out & pos), decided),
        "confusion_decided": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
    }


def risk_coverage(y: np.ndarray, prob: np.ndarray, threshold: float, points: int = 50) -> dict:
    """Selective-classification curve: deciding only the share ``coverage`` of cases farthest from ``threshold``
    (the most confident), the error rate among them."""
    y, prob = binary_pair(y, prob)
    threshold = unit_number(threshold, "threshold")
    order = np.argsort(-np.abs(prob - threshold), kind="stable")
    wrong = ((prob >= threshold).astype(int) != y)[order]
    cum = np.cumsum(wrong)
    ks = np.unique(np.linspace(1, len(y), min(points, len(y))).round().astype(int))
    return {"coverage": (ks / len(y)).tolist(), "risk": (cum[ks - 1] / ks).tolist(), "threshold": float(threshold)}


def per_thousand(outcomes: dict) -> dict:
    """The band's shares as people per 1,000 screened (at the evaluated set's prevalence)."""
    n = outcomes["n"]
    f = 1000 / n if n else 0.0
    c = outcomes["confusion_decided"]
    return {"ruled_out": round(outcomes["ruled_out"] * f), "ruled_in": round(outcomes["ruled_in"] * f),
            "referred": round(outcomes["referred"] * f), "missed": round(c["fn"] * f), "false_alarms": round(c["fp"] * f)}
