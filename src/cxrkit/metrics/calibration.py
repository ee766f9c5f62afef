"""Calibration: how far predicted probabilities are from observed frequencies, and recalibrating them.

Measures: expected calibration error (ECE, Naeini et al. 2015; Guo et al. 2017) with equal-width bins and
the Brier score. Binary runs are measured on P(positive) (a predicted risk of 30% should come true 30% of
the time); multi-class runs on the top-label confidence.

Recalibration maps, fitted on the VALIDATION split only and stored in the run as ``calibration.json``:
``temperature`` (one scalar dividing the logits, Guo et al. 2017; keeps the ranking and, for multi-class,
every argmax), ``platt`` (logistic regression on the logit, Platt 1999; binary) and ``isotonic``
(monotone step function, Zadrozny & Elkan 2002; binary, needs a few hundred validation images).

Multi-label runs get one Platt map per finding (:func:`fit_multilabel_calibration`): training weights each finding's
positives up by its negatives:positives ratio, so a finding seen on 3% of images came out at a mean probability of
0.5. A finding with too few validation images for a slope gets its intercept only, which moves its mean probability
to its validation share (with half a case added each side, so a finding with no validation positive is not set to 0).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np

from cxrkit.data.spec import is_finite_number
from cxrkit.metrics.inputs import class_pair

CALIBRATION_METHODS = ("temperature", "platt", "isotonic")
_EPS = 1e-7


def _as_2d(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probabilities must be (N, K) with K >= 2 classes; got shape {probs.shape}")
    return probs


def _probabilities(probs: np.ndarray) -> np.ndarray:
    """(N, K) probabilities that are finite, in [0, 1] and sum to 1 per row: logits or NaNs would give a plausible ECE."""
    probs = _as_2d(probs)
    if not np.isfinite(probs).all():
        raise ValueError(f"probabilities must be finite; {int((~np.isfinite(probs)).any(axis=1).sum())} row(s) are not")
    if probs.size and (probs.min() < -1e-6 or probs.max() > 1 + 1e-6 or np.abs(probs.sum(axis=1) - 1).max() > 1e-3):
        raise ValueError("probabilities must lie in [0, 1] and each row sum to 1 (softmax outputs, not logits)")
    return probs


def _labelled(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated class indices and probabilities of the same images (False/True are classes 0 and 1)."""
    probs = _probabilities(probs)
    y = np.asarray(y)
    return class_pair(y.astype(int) if y.dtype == bool else y, probs)


def reliability_bins(y: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> dict:
    """Per equal-width bin: mean predicted probability, observed frequency and count.

    Binary (K = 2): P(positive) against the share of positives. Multi-class: the top-label confidence
    against the share of correct top labels.
    """
    y, probs = _labelled(y, probs)
    if probs.shape[1] == 2:
        conf, hit = probs[:, 1], (y == 1).astype(float)
    else:
        conf, hit = probs.max(1), (probs.argmax(1) == y).astype(float)
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(which, conf, n_bins) / count
        freq = np.bincount(which, hit, n_bins) / count
    return {"edges": edges.tolist(), "mean_predicted": mean_p.tolist(), "observed": freq.tolist(), "count": count.tolist(),
            "kind": "positive class" if probs.shape[1] == 2 else "top label"}


def expected_calibration_error(y: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> float:
    """ECE: the count-weighted mean |observed frequency - mean predicted probability| over equal-width bins."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a whole number of bins, at least 1, got {n_bins!r}")
    y, probs = _labelled(y, probs)
    conf, hit = _confidence_and_hit(y, probs)
    return _binned_ece(_bin_of(conf, n_bins), hit - conf, n_bins)


def _confidence_and_hit(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What ECE compares, per image: P(positive) and a positive (binary), or the top label's probability and a correct top label."""
    if probs.shape[1] == 2:
        return probs[:, 1], (y == 1).astype(float)
    return probs.max(1), (probs.argmax(1) == y).astype(float)


def _bin_of(conf: np.ndarray, n_bins: int) -> np.ndarray:
    return np.clip(np.digitize(conf, np.linspace(0, 1, n_bins + 1)[1:-1], right=True), 0, n_bins - 1)


def _binned_ece(which: np.ndarray, miss: np.ndarray, n_bins: int) -> float:
    """ECE of images already put in bins (``which``), from each one's outcome minus its probability (``miss``); unchecked:
    the intervals and the chance level compute it thousands of times.

    A bin's count times |observed - mean predicted| is |the sum of its images' outcome - probability|.
    """
    if len(which) == 0:
        return float("nan")
    return float(np.abs(np.bincount(which, miss, n_bins)).sum() / len(which))


def brier_score(y: np.ndarray, probs: np.ndarray) -> float:
    """Brier score: mean squared error of the probabilities against the outcome (binary: P(positive) vs 0/1;
    multi-class: summed over classes, as Brier 1950 defined it). 0 is perfect."""
    y, probs = _labelled(y, probs)
    if probs.shape[1] == 2:
        return float(np.mean((probs[:, 1] - (y == 1)) ** 2))
    onehot = np.eye(probs.shape[1])[y]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def ece_if_calibrated(probs: np.ndarray, n_bins: int = 10, n_draws: int = 1000, seed: int = 0) -> dict:
    """The ECE a perfectly calibrated model with these probabilities would score by chance on this many images.

    ECE is biased upwards on small sets: each image's outcome is drawn from its own predicted probabilities
    (consistency resampling, Bröcker & Smith 2007), so a true calibration error of zero still scores about 0.13
    on 60 images and 0.04 on 600. Returns ``{"median", "p95"}`` over ``n_draws`` such draws; an observed ECE above
    ``p95`` is miscalibration that chance alone rarely produces.
    """
    probs = _probabilities(probs)
    rng = np.random.default_rng(seed)
    cum = np.cumsum(probs / probs.sum(1, keepdims=True), axis=1)
    which = _bin_of(probs[:, 1] if probs.shape[1] == 2 else probs.max(1), n_bins)  # the bins do not depend on the outcomes
    values = []
    for _ in range(n_draws):
        y = np.minimum((rng.random((len(probs), 1)) > cum).sum(1), probs.shape[1] - 1)
        conf, hit = _confidence_and_hit(y, probs)
        values.append(_binned_ece(which, hit - conf, n_bins))
    return {"median": float(np.median(values)), "p95": float(np.percentile(values, 95))}


def calibration_summary(
    y: np.ndarray, probs: np.ndarray, n_bins: int = 10, n_bootstrap: int = 1000, seed: int = 0, confidence: float = 0.95,
    patients: object = None,
) -> dict:
    """ECE and Brier score with bootstrap intervals, the ECE chance alone gives, and the reliability bins.

    The intervals matter because ECE on a few dozen images swings widely: a 0.03 against a 0.08 on a small
    test split is often no difference at all; and ``ece_if_calibrated`` because ECE is biased upwards on small
    sets (:func:`ece_if_calibrated`). ``n_bootstrap=0`` leaves all three out (``None``). ``patients`` (one ID per image):
    the intervals resample patients with all their images where one has several (never narrower than by image).
    """
    from cxrkit.metrics.inputs import patient_clusters
    from cxrkit.metrics.intervals import bootstrap_interval

    y, probs = _labelled(y, probs)
    clusters = patient_clusters(patients, len(y))
    ece_ci = brier_ci = chance = None
    if n_bootstrap > 0 and len(y) >= 2:
        # Each image's bin, outcome and squared error are computed once; a resample (its row numbers) only picks them:
        # checking and binning 100,000 images again in each of 1,000 resamples took a minute per summary.
        conf, hit = _confidence_and_hit(y, probs)
        which, miss = _bin_of(conf, n_bins), hit - conf
        error = (probs[:, 1] - hit) ** 2 if probs.shape[1] == 2 else np.sum((probs - np.eye(probs.shape[1])[y]) ** 2, axis=1)
        rows = np.arange(len(y))
        # Not stratified: a calibration error lies in how often each class occurs at a predicted probability, which
        # fixed class counts would hold still (a model predicting 0.3 for every image got a zero-width interval).
        ece_ci = bootstrap_interval(lambda _, r: _binned_ece(which[r], miss[r], n_bins), y, rows, n_bootstrap, confidence, seed,
                                    stratified=False, clusters=clusters)
        brier_ci = bootstrap_interval(lambda _, r: float(error[r].mean()), y, rows, n_bootstrap, confidence, seed, stratified=False,
                                      clusters=clusters)
        chance = ece_if_calibrated(probs, n_bins, n_bootstrap, seed)
    return {"ece": expected_calibration_error(y, probs, n_bins), "ece_ci": None if ece_ci is None else list(ece_ci),
            "ece_if_calibrated": chance, "brier": brier_score(y, probs), "brier_ci": None if brier_ci is None else list(brier_ci),
            "bins": reliability_bins(y, probs, n_bins)}


# A map is FITTED on logits clipped at _EPS (a probability of 1e-30 would pull a fit about), but APPLIED to logits clipped
# only where float64 ends: clipped at 1e-7, 298 of 400 probabilities of a confident model's rare finding became one value,
# its AUC fell from 0.962 to 0.918, and 286 decisions at the moved threshold flipped.
_APPLY_LOW, _APPLY_HIGH = float(np.finfo(np.float64).tiny), 1.0 - float(np.finfo(np.float64).epsneg)


def _logit(p: np.ndarray, exact: bool = False) -> np.ndarray:
    """log(p / (1 - p)), clipped at _EPS for fitting; ``exact``: clipped only at the ends of float64, for applying a map."""
    p = np.clip(p, _APPLY_LOW, _APPLY_HIGH) if exact else np.clip(p, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    from scipy.special import expit  # no overflow warning at the logits of probabilities near 0

    return expit(z)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class Calibration:
    """A fitted probability map: ``apply(probs)`` turns the model's probabilities (N, K) into calibrated ones."""

    method: str
    params: dict
    fitted_on: str = "val"
    n: int = 0
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    threshold: dict | None = None  # binary runs: the threshold before and after, re-chosen on calibrated validation probabilities

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (N, K), rows summing to 1 (multi-label: one independent probability per finding)."""
        if self.per_finding:
            probs = np.asarray(probs, dtype=np.float64)
            slope, intercept = np.asarray(self.params["slope"]), np.asarray(self.params["intercept"])
            if probs.ndim != 2 or probs.shape[1] != len(slope):
                raise ValueError(f"this calibration maps {len(slope)} findings; got probabilities of shape {probs.shape}")
            return _sigmoid(slope[None, :] * _logit(probs, exact=True) + intercept[None, :])
        probs = _as_2d(probs)
        if self.method == "temperature":
            t = self.params["temperature"]
            if probs.shape[1] == 2:
                p = _sigmoid(_logit(probs[:, 1], exact=True) / t)
                return np.stack([1 - p, p], axis=1)
            return _softmax(np.log(np.clip(probs, _APPLY_LOW, 1)) / t)
        if probs.shape[1] != 2:
            raise ValueError(f"{self.method} calibration applies to binary runs only")
        if self.method == "platt":
            p = _sigmoid(self.params["slope"] * _logit(probs[:, 1], exact=True) + self.params["intercept"])
        elif self.method == "isotonic":
            p = np.interp(probs[:, 1], self.params["x"], self.params["y"])
        else:
            raise ValueError(f"unknown calibration method {self.method!r}")
        return np.stack([1 - p, p], axis=1)

    @property
    def per_finding(self) -> bool:
        """A multi-label map: one slope and intercept per finding."""
        return isinstance(self.params.get("slope"), list)

    def to_dict(self) -> dict:
        """Plain-dict form for ``calibration.json``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        """Read back :meth:`to_dict`, validated: a damaged map is a ValueError, not a silently changed probability."""
        if not isinstance(d, dict) or not isinstance(d.get("params"), dict):
            raise ValueError("must hold an object with method and params")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in d if k not in known)
        if unknown:
            raise ValueError(f"unknown keys {', '.join(unknown)}")
        method, params = d.get("method"), d["params"]
        if method not in CALIBRATION_METHODS:
            raise ValueError(f"unknown calibration method {method!r}; known: {', '.join(CALIBRATION_METHODS)}")
        # A negative temperature or a decreasing isotonic map inverts every decision; zero makes them all certain.
        if method == "temperature" and not (is_finite_number(params.get("temperature")) and params["temperature"] > 0):
            raise ValueError(f"temperature must be a positive finite number, got {params.get('temperature')!r}")
        if method == "platt" and isinstance(params.get("slope"), list):  # multi-label: one map per finding
            slope, intercept, how = params.get("slope"), params.get("intercept"), params.get("how")
            ok = (isinstance(intercept, list) and isinstance(how, list) and 0 < len(slope) == len(intercept) == len(how)
                  and all(map(is_finite_number, slope + intercept)) and all(v > 0 for v in slope)
                  and all(h in ("platt", "intercept") for h in how))
            if not ok:
                raise ValueError("a per-finding platt map needs lists slope (each above 0), intercept and how, one entry per finding")
        elif method == "platt" and not (is_finite_number(params.get("slope")) and is_finite_number(params.get("intercept"))):
            raise ValueError(f"platt needs finite numbers slope and intercept, got {params!r}")
        if method == "isotonic":
            x, y = params.get("x"), params.get("y")
            ok = isinstance(x, list) and isinstance(y, list) and 0 < len(x) == len(y) and all(map(is_finite_number, x + y))
            if not ok or np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0) or min(y) < 0 or max(y) > 1:
                raise ValueError("isotonic needs lists x and y of equal length, both non-decreasing, y from 0 to 1")
        return cls(**d)


def separated(y: np.ndarray, probs: np.ndarray, method: str) -> str | None:
    """Why ``method`` cannot be fitted on these labelled predictions (the model never gets them wrong), or None."""
    # With no overlap between the classes' probabilities (Platt, isotonic) or no wrong top label (temperature) the best
    # fit is a step: Platt's slope and 1/T grow without bound, isotonic jumps from 0 to 1. On 48 separated validation
    # images Platt set 65 of 208 test probabilities to exactly 1.0, which tied them and lowered the test AUC 0.984 -> 0.938.
    y, probs = np.asarray(y), np.asarray(probs)
    if method == "temperature":
        return "the model's top class is right for every one of them" if np.all(probs.argmax(axis=1) == y) else None
    if not (y == 0).any() or not (y == 1).any():
        return None
    return "every positive image has a higher probability than every negative one" if probs[y == 0, 1].max() < probs[y == 1, 1].min() else None


def _refuse_separated(y: np.ndarray, probs: np.ndarray, method: str, fitted_on: str) -> None:
    """Refuse a fit that images the model never gets wrong cannot pin down: it would make the model certain."""
    why = separated(y, probs, method)
    if why:
        raise ValueError(f"{method} calibration cannot be fitted on the {len(y)} images of the {fitted_on}: {why}, so they cannot "
                         "say how sure the model should be, and the fitted map would make it certain (probabilities of 0 and 1); "
                         "nothing was changed. Calibrate on a larger validation set that holds images the model gets wrong")


# A finding's slope is fitted from this many validation images with it and without it; with fewer, its intercept only.
MIN_SLOPE_CASES = 10


def _platt(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Slope and intercept of a logistic regression of ``y`` on the logit ``z``."""
    from sklearn.linear_model import LogisticRegression

    # Fitted on the standardised logit and mapped back: on probabilities that differ only in the fourth decimal (a
    # barely trained model) L-BFGS stopped at its starting point, slope 0, and every calibrated probability was 0.5.
    mu, sd = float(z.mean()), float(z.std())
    lr = LogisticRegression(C=1e6).fit(((z - mu) / (sd or 1.0))[:, None], y)  # (almost) unpenalised, as Platt fitted it
    slope = float(lr.coef_[0, 0]) / (sd or 1.0)
    return slope, float(lr.intercept_[0]) - slope * mu


def _intercept_only(z: np.ndarray, y: np.ndarray) -> float:
    """The shift of the logit that makes the mean probability the share with the finding, half a case added each side."""
    from scipy.optimize import brentq

    target = (y.sum() + 0.5) / (len(y) + 1)
    return float(brentq(lambda b: float(_sigmoid(z + b).mean()) - target, -60.0, 60.0))


def calibration_in_the_large(y: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """Per finding of a multi-label split: the mean probability beside the share of images with the finding, and the
    finding's ECE and Brier score; ``overall`` their means over the findings present."""
    y, probs = np.asarray(y, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    per = {}
    for k, name in enumerate(classes):
        two = np.stack([1 - probs[:, k], probs[:, k]], axis=1)
        per[name] = {"mean_probability": float(probs[:, k].mean()), "share_with_it": float(y[:, k].mean()),
                     "ece": expected_calibration_error(y[:, k].astype(int), two), "brier": brier_score(y[:, k].astype(int), two)}
    present = [e for e in per.values() if e["share_with_it"] > 0]
    overall = {key: float(np.mean([e[key] for e in present])) if present else None for key in ("ece", "brier")}
    overall.update(mean_probability=float(probs.mean()), share_with_it=float(y.mean()))
    return {"per_finding": per, "overall": overall}


def fit_multilabel_calibration(y: np.ndarray, probs: np.ndarray, classes: list[str], fitted_on: str = "val") -> Calibration:
    """One Platt map per finding of a multi-label run, fitted on its (validation) images.

    A finding with MIN_SLOPE_CASES images with it and without it, whose images the model does not separate perfectly and
    ranks the right way, gets slope and intercept; any other its intercept only (slope 1), which keeps its ranking and
    moves its mean probability to its share of the images. ``params["how"]`` says which, per finding.
    """
    y, probs = np.asarray(y), np.asarray(probs, dtype=np.float64)
    if y.ndim != 2 or probs.shape != y.shape or y.shape[1] != len(classes) or not len(y):
        raise ValueError(f"multi-label calibration needs (images, {len(classes)}) labels and probabilities; got {y.shape} and {probs.shape}")
    if not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1 or not np.isin(y, (0, 1)).all():
        raise ValueError("multi-label calibration needs 0/1 labels and probabilities from 0 to 1")
    slopes, intercepts, how = [], [], []
    for k in range(len(classes)):
        yk, z = y[:, k].astype(int), _logit(probs[:, k])
        pos = int(yk.sum())
        enough = min(pos, len(yk) - pos) >= MIN_SLOPE_CASES and probs[yk == 0, k].max() >= probs[yk == 1, k].min()
        slope, intercept = _platt(z, yk) if enough else (0.0, 0.0)
        fitted = slope > 0
        if not fitted:  # too few cases, perfectly separated, or ranked backwards on validation: shift only, never reorder
            slope, intercept = 1.0, _intercept_only(z, yk)
        slopes.append(slope)
        intercepts.append(intercept)
        how.append("platt" if fitted else "intercept")
    cal = Calibration("platt", {"slope": slopes, "intercept": intercepts, "how": how, "findings": list(classes)}, fitted_on, len(y))
    cal.before = calibration_in_the_large(y, probs, classes)["overall"]
    cal.after = calibration_in_the_large(y, cal.apply(probs), classes)["overall"]
    return cal


def fit_calibration(y: np.ndarray, probs: np.ndarray, method: str = "temperature", fitted_on: str = "val") -> Calibration:
    """Fit ``method`` on labelled (validation) predictions; raises ValueError for a method the task does not allow."""
    y, probs = _labelled(y, probs)
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIBRATION_METHODS)}")
    binary = probs.shape[1] == 2
    if method != "temperature" and not binary:
        raise ValueError(f"{method} calibration applies to binary runs; use temperature for multi-class runs")
    if len(np.unique(y)) < 2:
        raise ValueError(f"calibration needs both outcomes in the {fitted_on} split")
    _refuse_separated(y, probs, method, fitted_on)
    if method == "temperature":
        from scipy.optimize import minimize_scalar

        logp = np.log(np.clip(probs, _EPS, 1))
        z = _logit(probs[:, 1]) if binary else None

        def nll(log_t: float) -> float:
            t = np.exp(log_t)
            if binary:
                p = np.clip(_sigmoid(z / t), _EPS, 1 - _EPS)
                return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))
            q = _softmax(logp / t)
            return float(-np.mean(np.log(np.clip(q[np.arange(len(y)), y], _EPS, 1))))

        res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
        params = {"temperature": float(np.exp(res.x))}
    elif method == "platt":
        slope, intercept = _platt(_logit(probs[:, 1]), y)
        params = {"slope": slope, "intercept": intercept}
    else:
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(probs[:, 1], y)
        params = {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}
    cal = Calibration(method, params, fitted_on, len(y))
    cal.before = {k: v for k, v in calibration_summary(y, probs, n_bootstrap=0).items() if k in ("ece", "brier")}
    cal.after = {k: v for k, v in calibration_summary(y, cal.apply(probs), n_bootstrap=0).items() if k in ("ece", "brier")}
    return cal
