"""Choose the decision threshold of a binary model on validation data (never on test).

Rules: ``youden`` (maximise sensitivity + specificity - 1), ``sensitivity:0.90`` (the highest
threshold whose sensitivity is at least 0.90, i.e. the best specificity meeting the WHO triage
target for TB), ``specificity:0.95`` (the best sensitivity with specificity at least 0.95), or a
fixed probability such as ``0.5``. A case is called positive when its probability >= threshold.

A target met on one validation split is a point estimate: about half the time the same threshold misses it
on new data. ``sensitivity:0.90@0.95`` asks for a guarantee instead: the highest threshold whose validation
sensitivity has a one-sided 95% Clopper-Pearson lower bound of at least 0.90 (``specificity:X@C`` likewise,
the lowest threshold). With too few validation cases no threshold can give the guarantee; the error says how
many would be needed, and ``allow_point_estimate`` falls back to the plain rule, saying so.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import roc_curve

from cxrkit.metrics.inputs import binary_pair, patient_clusters


@dataclass
class ThresholdChoice:
    """A chosen threshold, the rule that chose it and what it achieved on the data it was chosen on."""

    value: float
    rule: str
    chosen_on: str
    sensitivity: float
    specificity: float
    kind: str = "point"  # "guaranteed" (a confidence bound met the target) or "point" (the estimate did)
    guarantee: dict | None = None  # metric, target, confidence, lower bound, cases: for a guaranteed rule
    requested_rule: str | None = None  # set when a guaranteed rule was impossible and fell back to the point rule

    def to_dict(self) -> dict:
        """Plain-dict form for JSON."""
        return asdict(self)


def parse_rule(rule: str) -> tuple[str, float | None]:
    """Split a rule string into (kind, parameter) and validate it; a ``@confidence`` suffix is checked and dropped
    (see :func:`rule_confidence`)."""
    if not isinstance(rule, str):
        raise ValueError(f"a threshold rule is text such as youden or sensitivity:0.90, got {rule!r}")
    rule = rule.strip().lower()
    rule, _, conf = rule.partition("@")
    if rule == "youden":
        if conf:
            raise ValueError("youden has no confidence level; use sensitivity:X@C or specificity:X@C")
        return "youden", None
    kind, _, arg = rule.partition(":")
    if kind in ("sensitivity", "specificity") and arg:
        target = _number(arg, f"{kind} target")
        if not 0 < target <= 1:
            raise ValueError(f"{kind} target must be in (0, 1], got {target}")
        if conf:
            c = _number(conf, "confidence")
            if not 0.5 <= c < 1:
                raise ValueError(f"the confidence after @ must be in [0.5, 1), e.g. {kind}:{arg}@0.95; got {c}")
            if target >= 1:
                raise ValueError(f"a {kind} of 1 cannot be guaranteed from a sample; ask for less, e.g. {kind}:0.95@0.95")
        return kind, target
    if conf:
        raise ValueError(f"only sensitivity:X and specificity:X take a confidence (@C), not {rule!r}")
    if kind == "fixed" and arg:
        rule = arg
    try:
        value = float(rule)
    except ValueError:
        raise ValueError(
            f"unknown threshold rule {rule!r}; use youden, sensitivity:0.90, specificity:0.95, sensitivity:0.90@0.95 "
            "(guaranteed at 95% confidence) or a number in [0, 1]"
        ) from None
    if not 0 <= value <= 1:
        raise ValueError(f"a fixed threshold must be in [0, 1], got {value}")
    return "fixed", value


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} must be a number, got {text!r}") from None
    if not np.isfinite(value):
        raise ValueError(f"{what} must be finite, got {text!r}")
    return value


def rule_confidence(rule: str) -> float | None:
    """The confidence of a guaranteed rule (``sensitivity:0.90@0.95`` -> 0.95), None for a point rule."""
    parse_rule(rule)
    _, _, conf = rule.strip().partition("@")
    return float(conf) if conf else None


def clopper_pearson_lower(successes: np.ndarray | int, n: int, confidence: float) -> np.ndarray:
    """One-sided exact (Clopper-Pearson) lower confidence bound of a proportion: P(true < bound) <= 1 - confidence."""
    from scipy.stats import beta

    x = np.asarray(successes, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        lower = beta.ppf(1 - confidence, x, n - x + 1)
    return np.where(x > 0, lower, 0.0)


@functools.lru_cache(maxsize=8)
def _lower_bounds(n: int, confidence: float) -> np.ndarray:
    """:func:`clopper_pearson_lower` of 0..n successes out of n, computed once per (n, confidence): the bootstrap
    of :func:`threshold_spread` asks for the same n a thousand times (38 s for 20,000 validation images, uncached)."""
    table = clopper_pearson_lower(np.arange(n + 1), n, confidence)
    table.flags.writeable = False
    return table


def cases_needed(target: float, confidence: float) -> int:
    """The fewest cases that can guarantee ``target`` at ``confidence`` (all of them correct): (1 - c)^(1/n) >= target."""
    return int(np.ceil(np.log(1 - confidence) / np.log(target)))


class GuaranteeImpossible(ValueError):
    """No threshold meets a guaranteed rule on this validation split (too few cases of the class it is about)."""


def _patient_lower_bounds(rate: np.ndarray, scores: np.ndarray, clusters: np.ndarray, descending: bool,
                          confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided Clopper-Pearson bound of ``rate`` at each candidate threshold, at the patients' effective number of cases
    (the design effect of :func:`~cxrkit.metrics.intervals.clustered_wilson`), and that effective number."""
    from scipy.stats import beta

    from cxrkit.metrics.intervals import effective_cases_by_prefix

    order = np.argsort(-scores if descending else scores, kind="stable")
    n = len(scores)
    hits = np.rint(rate * n).astype(int)
    n_eff = effective_cases_by_prefix(clusters[order])[hits]
    x = rate * n_eff
    with np.errstate(invalid="ignore"):
        lower = beta.ppf(1 - confidence, x, n_eff - x + 1)
    return np.where(x > 0, lower, 0.0), n_eff


def choose_threshold(
    y_true: np.ndarray, prob: np.ndarray, rule: str = "youden", chosen_on: str = "val", allow_point_estimate: bool = False,
    patients: object = None,
) -> ThresholdChoice:
    """Pick a threshold on ``prob`` (probability of the positive class) following ``rule``.

    A guaranteed rule (``sensitivity:0.90@0.95``) that no threshold can meet raises :class:`GuaranteeImpossible`
    with the number of cases it would need, unless ``allow_point_estimate``: then the point rule is used and the
    choice records ``requested_rule``. ``patients`` (one ID per case): where a patient has several cases of the class a
    guarantee is about, the bound counts patients (Clopper-Pearson at the design effect's effective n; never above the
    image-level bound), since ten films of one patient missed together are not ten chances to miss.
    """
    kind, target = parse_rule(rule)
    confidence = rule_confidence(rule)
    y, prob = binary_pair(y_true, prob)  # probabilities on a 0-100 scale were cut to a threshold of 1.0
    guarantee = None
    if kind == "fixed":
        value = float(target)
    else:
        if not len(y) or y.min() == y.max():
            raise ValueError(f"choosing a threshold by {rule!r} needs both classes in the {chosen_on} split")
        fpr, tpr, thr = roc_curve(y, prob, drop_intermediate=False)
        thr = np.minimum(thr, 1.0)  # roc_curve's first threshold is +inf (nobody positive)
        spec = 1 - fpr
        if kind == "youden":
            i = int(np.argmax(tpr - fpr))
        elif confidence is not None:
            n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
            n = n_pos if kind == "sensitivity" else n_neg
            rate = tpr if kind == "sensitivity" else spec
            lower = _lower_bounds(n, confidence)[np.rint(rate * n).astype(int)]
            of_class = y == (1 if kind == "sensitivity" else 0)
            clusters = patient_clusters(patients, len(y))
            clusters = patient_clusters(clusters[of_class], n) if clusters is not None and n else None
            n_eff = None
            if clusters is not None:
                by_patient, n_eff = _patient_lower_bounds(rate, prob[of_class], clusters, kind == "sensitivity", confidence)
                lower = np.minimum(lower, by_patient)
            ok = np.flatnonzero(lower >= target - 1e-12)
            if len(ok) == 0:
                point = rule.split("@")[0]
                need = cases_needed(target, confidence)
                what = "positive" if kind == "sensitivity" else "negative"
                held = "" if clusters is None else (f" from {int(clusters.max()) + 1} patients (worth {n_eff[-1]:.1f} independent cases, "
                                                      "as a patient's images are not independent)")
                if not allow_point_estimate:
                    raise GuaranteeImpossible(
                        f"no threshold gives {kind} >= {target:g} with {confidence:.0%} confidence on the {chosen_on} split: "
                        f"it has {n} {what} case(s){held}, and even calling every one {what} proves that only with at least {need} "
                        f"(more when some are missed); add {what} validation images, lower the target or the confidence, or "
                        f"pass --allow-point-estimate to use {point} (a point estimate, not a guarantee)"
                    )
                choice = choose_threshold(y, prob, point, chosen_on)
                choice.requested_rule = rule
                return choice
            # Highest threshold meeting a sensitivity bound (best specificity); lowest meeting a specificity bound.
            i = int(ok[np.argmax(spec[ok])]) if kind == "sensitivity" else int(ok[np.argmax(tpr[ok])])
            guarantee = {"metric": kind, "target": target, "confidence": confidence, "lower_bound": float(lower[i]), "cases": n,
                         "method": "one-sided Clopper-Pearson"}
            if clusters is not None:
                guarantee.update(method="one-sided Clopper-Pearson at the patients' effective number of cases (design effect)",
                                 patients=int(clusters.max()) + 1, effective_cases=round(float(n_eff[i]), 1))
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
    return ThresholdChoice(value=value, rule=rule, chosen_on=chosen_on, sensitivity=sens, specificity=spec_v,
                           kind="guaranteed" if guarantee else "point", guarantee=guarantee)


def threshold_spread(
    y_val: np.ndarray, p_val: np.ndarray, rule: str, y_eval: np.ndarray, p_eval: np.ndarray,
    n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0, val_patients: object = None,
) -> dict | None:
    """How much the operating point owes to which validation images there happened to be.

    ``rule`` is re-applied to stratified bootstrap resamples of the validation split (same size, same class counts);
    returns the central ``confidence`` range of the thresholds it picks and of the evaluated split's sensitivity and
    specificity at those thresholds, beside the validation class counts. On a few dozen validation images a Youden
    threshold can move from 0.1 to 0.6 between equally likely samples, and sensitivity on test with it: the Wilson
    interval of the test sensitivity does not show this, because it holds the threshold fixed. None for a fixed
    threshold (nothing is chosen) or when the validation split lacks a class. ``val_patients`` (one ID per validation
    image): resample the validation patients with all their images where one has several, and keep each range the wider
    of that and the images' one.
    """
    from cxrkit.metrics.inputs import patient_clusters
    from cxrkit.metrics.intervals import cluster_draw

    kind, _ = parse_rule(rule)
    y_val, p_val = binary_pair(y_val, p_val, what="validation")
    y_eval, p_eval = binary_pair(y_eval, p_eval, what="evaluated")
    if kind == "fixed" or len(np.unique(y_val)) < 2:
        return None
    groups = [np.flatnonzero(y_val == c) for c in (0, 1)]

    def by_image(rng: np.random.Generator) -> np.ndarray:
        return np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])

    clusters = patient_clusters(val_patients, len(y_val))
    # A guaranteed rule counts patients when choosing (choose_threshold): so must its resamples, or the ranges describe
    # another, less cautious rule. Images drawn alone keep their patient; a patient drawn twice is two patients.
    guaranteed = clusters is not None and rule_confidence(rule) is not None
    out = _spread(by_image, y_val, p_val, rule, y_eval, p_eval, n_resamples, confidence, seed,
                  (lambda idx: clusters[idx]) if guaranteed else None)
    if out is not None and clusters is not None:
        draw = cluster_draw(y_val, clusters, True)
        patients = _spread(draw, y_val, p_val, rule, y_eval, p_eval, n_resamples, confidence, seed,
                           (lambda idx: draw.drawn) if guaranteed else None)
        if patients is not None:
            for key in ("threshold", "sensitivity", "specificity"):
                a, b = out[key], patients[key]
                if a is None or (b is not None and b[1] - b[0] > a[1] - a[0]):
                    out[key] = b
            out["by_patient"] = True
            out["failed_resamples_by_patient"] = patients["failed_resamples"]
    if out is not None:
        out["n_val"] = {"positive": len(groups[1]), "negative": len(groups[0])}
    return out


def _spread(draw, y_val: np.ndarray, p_val: np.ndarray, rule: str, y_eval: np.ndarray, p_eval: np.ndarray, n_resamples: int,
            confidence: float, seed: int, patients_of: Callable[[np.ndarray], np.ndarray] | None = None) -> dict | None:
    """The ranges of :func:`threshold_spread` over resamples of the validation split drawn by ``draw`` (``patients_of``: the
    patient of each drawn case, for a rule that counts them)."""
    rng = np.random.default_rng(seed)
    pos, neg = y_eval == 1, y_eval == 0
    values, sens, spec, failed = [], [], [], 0
    for _ in range(n_resamples):
        idx = draw(rng)
        try:
            t = choose_threshold(y_val[idx], p_val[idx], rule, patients=patients_of(idx) if patients_of else None).value
        except GuaranteeImpossible:  # a resample with more misses cannot prove the target: counted, not hidden
            failed += 1
            continue
        values.append(t)
        pred = p_eval >= t
        sens.append(pred[pos].mean() if pos.any() else np.nan)
        spec.append((~pred[neg]).mean() if neg.any() else np.nan)
    if len(values) < n_resamples / 2:
        return None
    q = [100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2]

    def span(v: list) -> list[float] | None:
        v = np.asarray(v, dtype=float)
        return None if np.isnan(v).all() else [float(x) for x in np.nanpercentile(v, q)]

    return {"rule": rule, "resamples": n_resamples, "failed_resamples": failed, "confidence": confidence, "threshold": span(values),
            "sensitivity": span(sens), "specificity": span(spec)}
