"""Assign every image to train, val or test: stratified by class, seeded, and by patient when IDs exist."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from cxrkit.data.sources import Sample


def patient_ids(samples: Sequence[Sample], pattern: str) -> list[str]:
    """Extract a patient ID from each file name with a regular expression (first group, or whole match).

    Files whose name does not match keep their own name as ID, so they are never grouped by accident.
    """
    rx = re.compile(pattern)
    ids = []
    for s in samples:
        m = rx.search(s.path.name)
        ids.append((m.group(1) if m and m.groups() else m.group(0)) if m else f"__file__:{s.path}")
    return ids


def _cut(
    idx: np.ndarray, labels: np.ndarray, groups: np.ndarray | None, n_held: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (rest, held) with about ``n_held`` images held out, stratified by label."""
    if n_held <= 0:
        return idx, idx[:0]
    fraction = n_held / len(idx)
    if groups is None:
        counts = np.bincount(labels[idx])
        stratify = labels[idx] if counts[counts > 0].min() >= 2 else None
        rest, held = train_test_split(idx, test_size=n_held, random_state=seed, stratify=stratify)
        return np.sort(rest), np.sort(held)
    # Group-aware: k folds with k ~ 1/fraction, keep one fold, so no patient straddles the cut.
    n_splits = max(2, round(1.0 / fraction))
    n_groups = len(np.unique(groups[idx]))
    if n_groups < n_splits:
        raise ValueError(f"only {n_groups} patients; too few for a {fraction:.0%} patient-level split")
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    rest, held = next(iter(sgkf.split(idx, labels[idx], groups[idx])))
    return np.sort(idx[rest]), np.sort(idx[held])


def assign_splits(
    samples: Sequence[Sample],
    classes: Sequence[str],
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    groups: Sequence[str] | None = None,
) -> list[str]:
    """Return a split name ("train", "val" or "test") for each sample.

    Split folders on disk are honoured. With train/ and test/ only, ``val_fraction`` of train becomes
    validation. With train/ only or no split folders, ``val_fraction`` and ``test_fraction`` of all
    images are held out. With train/ and val/ only there is no test split. Cuts are stratified by class
    and, when ``groups`` (patient IDs) are given, keep each patient in one split.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum to less than 1")
    class_index = {c: i for i, c in enumerate(classes)}
    labels = np.array([class_index[s.label] for s in samples])
    grp = np.asarray(groups) if groups is not None else None
    splits = np.array([s.split or "" for s in samples], dtype=object)
    pool = np.flatnonzero((splits == "") | (splits == "train"))
    has_val, has_test = (splits == "val").any(), (splits == "test").any()
    n_pool = len(pool)
    if not has_test and not has_val:
        pool, test_idx = _cut(pool, labels, grp, round(test_fraction * n_pool), seed)
        splits[test_idx] = "test"
    if not has_val:
        pool, val_idx = _cut(pool, labels, grp, round(val_fraction * n_pool), seed + 1)
        splits[val_idx] = "val"
    splits[pool] = "train"
    return list(splits)
