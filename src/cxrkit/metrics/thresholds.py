"""Choose the decision threshold of a binary model on validation data (never on test).

Rules: ``youden`` (maximise sensitivity + specificity - 1), ``sensitivity:0.90`` (the highest
threshold whose sensitivity is at least 0.90, i.e. the best specificity meeting the WHO triage
target for TB), ``specificity:0.95`` (the best sensitivity with specificity at least 0.95), or a
fixed probability such as ``0.5``. A case is called positive when its probability >= threshold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import roc_curve


@dataclass
class ThresholdChoice:
    """A chosen threshold, the rule that chose it and what it achieved on the data it was chosen on."""

    value: float
    rule: str
    chosen_on: str
    sensitivity: float
    specificity: float

    def to_dict(self) -> dict:
        """Plain-dict form for JSON."""
        return asdict(self)


def parse_rule(rule: str) -> tuple[str, float | None]:
    """Split a rule string into (kind, parameter) and validate it."""
    rule = rule.strip().lower()
    if rule == "youden":
        return "youden", None
    kind, _, arg = rule.partition(":")
    if kind in ("sensitivity", "specificity") and arg:
        target = float(arg)
        if not 0 < target <= 1:
            raise ValueError(f"{kind} target must be in (0, 1], got {target}")
        return kind, target
    if kind == "fixed" and arg:
        rule = arg
    try:
        value = float(rule)
    except ValueError:
        raise ValueError(
            f"unknown threshold rule {rule!r}; use youden, sensitivity:0.90, specificity:0.95 or a number in [0, 1]"
        ) from None
    if not 0 <= value <= 1:
        raise ValueError(f"a fixed threshold must be in [0, 1], got {value}")
    return "fixed", value


def choose_threshold(y_true: np.ndarray, prob: np.ndarray, rule: str = "youden", chosen_on: str = "val") -> ThresholdChoice:
    """Pick a threshold on ``prob`` (probability of the positive class) following ``rule``."""
    kind, target = parse_rule(rule)
    y = np.asarray(y_true).astype(int)
    prob = np.asarray(prob, dtype=np.float64)
    if kind == "fixed":
        value = float(target)
    else:
        if y.min() == y.max():
            raise ValueError(f"choosing a threshold by {rule!r} needs both classes in the {chosen_on} split")
        fpr, tpr, thr = roc_curve(y, prob, drop_intermediate=False)
        thr = np.minimum(thr, 1.0)  # roc_curve's first threshold is +inf (nobody positive)
        spec = 1 - fpr
        if kind == "youden":
            i = int(np.argmax(tpr - fpr))
        elif kind == "sensitivity":
            ok = np.flatnonzero(tpr >= target - 1e-12)
            i = int(ok[np.argmax(spec[ok])])
        else:
            ok = np.flatnonzero(spec >= target - 1e-12)
            i = int(ok[np.argmax(tpr[ok])])
        value = float(thr[i])
    pred = prob >= value
    pos, neg = y == 1, y == 0
    sens = float(pred[pos].mean()) if pos.any() else float("nan")
    spec_v = float((~pred[neg]).mean()) if neg.any() else float("nan")
    return ThresholdChoice(value=value, rule=rule, chosen_on=chosen_on, sensitivity=sens, specificity=spec_v)
