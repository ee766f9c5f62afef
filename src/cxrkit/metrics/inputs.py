"""Checks on what the metric functions are handed: labels, scores, thresholds and interval settings.

The metric functions are public (a notebook computes sensitivity on its own predictions), so what they are given is
validated like any other input: labels 1/2 were all counted positive (156 positives among 100 images), a NaN score
made the DeLong ranks loop forever, probabilities on a 0-100 scale gave sensitivity 1.0. A bad input is a one-line
ValueError naming what is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Averaged test-time views and float32 round-off leave probabilities a hair outside [0, 1].
_SLACK = 1e-6


def _array(values: object, what: str) -> np.ndarray:
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{what} must be an array of numbers, got a string")
    try:
        return np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} cannot be read as an array ({exc})") from None


def binary_labels(y: object, what: str = "labels") -> np.ndarray:
    """1-D 0/1 labels (bool accepted) as int; a one-line ValueError for anything else (1/2, -1/1, 0.7, text, NaN)."""
    a = _array(y, what)
    if a.ndim != 1:
        raise ValueError(f"{what} must be one label per image (1-D), got shape {a.shape}")
    if a.dtype == bool:
        return a.astype(int)
    if not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{what} must be 0 (negative) or 1 (positive), got values of type {a.dtype}")
    bad = a[~np.isin(a, (0, 1))]
    if bad.size:
        raise ValueError(f"{what} must be 0 (negative) or 1 (positive), got {bad[0].item()!r} ({bad.size} such); map your labels "
                         "to 0/1 first (e.g. y == positive_label)")
    return a.astype(int)


def checked_scores(s: object, n: int | None = None, what: str = "probabilities", probabilities: bool = True) -> np.ndarray:
    """1-D finite float scores (probabilities in [0, 1] unless ``probabilities`` is False), ``n`` of them when given."""
    a = _array(s, what)
    if a.ndim != 1:
        raise ValueError(f"{what} must be one score per image (1-D), got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise ValueError(f"{what} must be numbers, got values of type {a.dtype}")
    a = a.astype(np.float64)
    if n is not None and len(a) != n:
        raise ValueError(f"{what}: {len(a)} given for {n} labels; give one per image, in the same order")
    _finite(a, what)
    if probabilities and len(a) and (a.min() < -_SLACK or a.max() > 1 + _SLACK):
        raise ValueError(f"{what} must lie in [0, 1], got values from {a.min():g} to {a.max():g} (percentages? divide by 100)")
    return a


def _finite(a: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        raise ValueError(f"{what} must be finite; {int(bad.sum())} are NaN or infinite (images that could not be read? leave them out)")


def binary_pair(y: object, s: object, probabilities: bool = True, what: str = "") -> tuple[np.ndarray, np.ndarray]:
    """0/1 labels and finite scores of the same images, checked together."""
    prefix = f"{what} " if what else ""
    labels = binary_labels(y, f"{prefix}labels")
    return labels, checked_scores(s, len(labels), f"{prefix}{'probabilities' if probabilities else 'scores'}", probabilities)


def class_pair(y: object, probs: object, classes: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Class indices 0..K-1 and an (N, K) array of finite probabilities in [0, 1], ``classes`` naming the K columns."""
    p = _array(probs, "probabilities")
    if p.ndim != 2 or not np.issubdtype(p.dtype, np.number):
        raise ValueError(f"probabilities must be an (images, classes) array of numbers, got shape {p.shape}")
    p = p.astype(np.float64)
    k = p.shape[1]
    if classes is not None and len(classes) != k:
        raise ValueError(f"{len(classes)} class names for {k} probability columns; give one name per column, in order")
    _finite(p, "probabilities")
    if len(p) and (p.min() < -_SLACK or p.max() > 1 + _SLACK):
        raise ValueError(f"probabilities must lie in [0, 1], got values from {p.min():g} to {p.max():g}")
    y_arr = _array(y, "labels")
    if y_arr.ndim != 1 or len(y_arr) != len(p):
        raise ValueError(f"labels must be one class index per row of probabilities: got shape {y_arr.shape} for {len(p)} rows")
    if len(y_arr) and (not np.issubdtype(y_arr.dtype, np.number) or y_arr.dtype == bool or np.any(y_arr != np.round(y_arr))
                       or y_arr.min() < 0 or y_arr.max() >= k):
        raise ValueError(f"labels must be class indices 0..{k - 1} (the probability columns), got values from {y_arr.min().item()!r} to {y_arr.max().item()!r}")
    return y_arr.astype(int), p


def unit_number(value: object, what: str, low_open: bool = False, high_open: bool = False) -> float:
    """A finite number in [0, 1] (ends open where asked), e.g. a threshold or a prevalence."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok:
        v = float(value)
        ok = (v > 0 if low_open else v >= 0) and (v < 1 if high_open else v <= 1)
    if not ok:
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ValueError(f"{what} must be a number in {interval}, got {value!r}")
    return float(value)


def confidence_level(confidence: object) -> float:
    """A confidence level strictly between 0 and 1 (0.95, not 95)."""
    return unit_number(confidence, "confidence (e.g. 0.95, not 95)", low_open=True, high_open=True)


def resamples(n: object, what: str = "n_bootstrap") -> int:
    """A whole number of resamples, at least 1."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{what} must be a whole number of at least 1, got {n!r}")
    return int(n)


_MISSING_TEXT = {"", "nan", "none", "null", "na", "n/a", "<na>", "nat"}


def _patient_key(value: object) -> str | None:
    """One patient ID as text (1, 1.0 and "1" are one patient); None when it names nobody (None, NaN, NaT, NA, blank)."""
    if value is None or isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return (str(int(value)) if float(value).is_integer() else repr(float(value))) if math.isfinite(value) else None
    try:
        if value != value:  # NaN-like objects (pd.NA raises: it has no truth value)
            return None
    except (TypeError, ValueError):
        return None
    if isinstance(value, np.datetime64) and np.isnat(value):
        return None
    text = str(value).strip()
    return None if text.lower() in _MISSING_TEXT else text


def patient_clusters(patients: object, n: int) -> np.ndarray | None:
    """Each image's patient as an integer code 0..P-1, or None when no patient has two images (the images are independent).

    ``patients`` holds one ID per image (text or numbers), in the labels' order; None means the IDs are not known. A
    missing, blank or true/false ID is refused: counted as one patient, every image without an ID was merged into one.
    """
    if patients is None:
        return None
    if isinstance(patients, np.ndarray) and patients.dtype.kind in "iu" and patients.ndim == 1 and len(patients) == n:
        # Whole numbers name themselves: the bootstraps pass their resamples' patient codes a thousand times.
        _, codes = np.unique(patients, return_inverse=True)
        return codes.astype(np.int64) if codes.max(initial=-1) + 1 < n else None
    a = _array(patients, "patient IDs")
    if a.ndim != 1 or len(a) != n:
        raise ValueError(f"patient IDs must be one per image: got shape {a.shape} for {n} images")
    if a.dtype == bool:
        raise ValueError("patient IDs must name patients, got true/false values (the labels by mistake?)")
    # A list keeps its own values (numpy turned [1, 1.0, "1"] into the texts "1" and "1.0"); tolist gives Python values.
    keys = [_patient_key(v) for v in (patients if isinstance(patients, (list, tuple)) else a.tolist())]
    missing = sum(k is None for k in keys)
    if missing:
        raise ValueError(f"patient IDs must name a patient for every image; {missing} are missing (None, NaN or blank): give "
                         "those images an ID of their own, or leave patients out")
    _, codes = np.unique(np.array(keys, dtype=object).astype(str), return_inverse=True)
    return codes.astype(np.int64) if codes.max(initial=-1) + 1 < n else None
