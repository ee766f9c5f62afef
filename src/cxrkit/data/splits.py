"""Assign every image to train, val or test: stratified by class (iteratively, per label, for multi-label
data), seeded, and by patient when IDs exist."""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from cxrkit.data.sources import Sample

OWN_ID_PREFIX = "__file__:"  # the ID of an image whose patient is not known: its own path, so it is never grouped with another


def patient_ids(samples: Sequence[Sample], pattern: str | None) -> list[str]:
    """Each image's patient ID: the one its source records (a table's ``Patient ID``), else the first group
    (or whole match) of ``pattern`` in its file name.

    Images with neither keep their own path as ID, so they are never grouped by accident.
    """
    rx = re.compile(pattern) if pattern else None
    ids, named, matched = [], [], 0
    for s in samples:
        if s.patient is not None:
            ids.append(_same_number(s.patient))
            continue
        found = _match_id(rx, s.path.name) if rx else None
        named.append(s.path.name)
        matched += found is not None
        ids.append(_same_number(found) if found is not None else f"{OWN_ID_PREFIX}{s.path}")
    if rx is not None and named and not matched:
        # Every image kept its own ID: an image-level split, recorded as one by patient ('zzz(\d+)' on p00012_3.png).
        raise ValueError(f"--group-pattern '{pattern}' finds no patient ID in any of the {len(named)} file names (e.g. {named[0]}); "
                         "give a regular expression whose first group is the ID, e.g. '(p\\d+)_'")
    return ids


def _same_number(pid: str) -> str:
    """A patient ID of digits only without its leading zeros: spreadsheets write 00000013 as 13, and the two were split as
    two patients (9 of them in two splits of one NIH table)."""
    return pid.lstrip("0") or "0" if pid.isdigit() else pid


def _match_id(rx: re.Pattern, name: str) -> str | None:
    """The ID ``rx`` finds in a file name: its first group that took part in the match, else the whole match; None when
    there is none or it is empty (an optional group left out was None, one patient shared by every such file)."""
    m = rx.search(name)
    found = next((g for g in m.groups() if g is not None), m.group(0)) if m else None
    return found or None


# An ID-like token in a file name: letters then digits ("person1000", "IM-0115", "patient_07"), or the leading digits
# before an underscore as in NIH names ("00000001_000").
_ID_TOKEN = re.compile(r"(?<![A-Za-z0-9])([A-Za-z]+[-_]?)(\d+)(?=[-_. ])|^()(\d+)(?=_)")


def guess_patient_pattern(names: Sequence[str], labels: Sequence[str] | None = None) -> str | None:
    """A ``--group-pattern`` for file names that look like they carry patient IDs, or None.

    A name shape ("person" + digits) counts when it is in at least a fifth of the files, names many different IDs
    (at least a fifth as many as its files, so a constant prefix such as "aug0" is no patient) and at least one
    in twenty of its files shares its ID with another file. With ``labels`` (each file's class), a shape whose
    shared IDs are shared only across classes, never within one (``normal/img_7.png`` and ``tb/img_7.png``), is
    a counter that restarts in every class folder, not a patient.
    """
    seen: dict[str, dict[str, int]] = {}
    classes_of: dict[str, dict[str, list[str]]] = {}
    for i, name in enumerate(names):
        stem = Path(name).stem + "."
        shapes = set()
        for m in _ID_TOKEN.finditer(stem):
            prefix, digits = (m.group(1), m.group(2)) if m.group(2) is not None else ("", m.group(4))
            if prefix in shapes:
                continue  # the first ID of a shape in a name is the patient; later ones number its images
            shapes.add(prefix)
            ids = seen.setdefault(prefix, {})
            ids[digits] = ids.get(digits, 0) + 1
            if labels is not None:
                classes_of.setdefault(prefix, {}).setdefault(digits, []).append(labels[i])
    chosen = []
    for prefix, ids in seen.items():
        files = sum(ids.values())
        shared = sum(n for n in ids.values() if n > 1)
        if labels is not None and shared:
            # files of one ID that share a class: a patient's images do, a per-class counter's never
            within = sum(len(c) - len(set(c)) for c in classes_of[prefix].values())
            if within < 0.05 * shared:
                continue
        if files >= 0.2 * len(names) and len(ids) >= 0.2 * files and shared >= 0.05 * files:
            chosen.append(re.escape(prefix).replace("\\-", "-") + r"\d+" if prefix else r"^\d+(?=_)")
    return f"({'|'.join(sorted(chosen, key=len, reverse=True))})" if chosen else None


def ids_in_several_splits(names: Sequence[str], splits: Sequence[str], pattern: str) -> tuple[int, str | None]:
    """How many IDs that ``pattern`` finds in the file names have images in more than one split, and one of them."""
    rx = re.compile(pattern)
    where: dict[str, set[str]] = {}
    for name, split in zip(names, splits):
        found = _match_id(rx, Path(name).name)
        if found is not None:
            where.setdefault(found, set()).add(str(split))
    spread = sorted(k for k, v in where.items() if len(v) > 1)
    return len(spread), (spread[0] if spread else None)


def merge_groups(a: Sequence[str], b: Sequence[str | None]) -> list[str]:
    """Group IDs where two images share a group when they share it in ``a`` or in ``b`` (None: no group), transitively.

    Used to keep copies of an image (``b``) in one split together with each copy's patient (``a``).
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for x, y in zip(a, b):
        find(x)
        if y is not None:
            parent[find(x)] = find("\0dup:" + y)
    return [find(x) for x in a]


def iterative_stratification(y: np.ndarray, groups: np.ndarray, fractions: Sequence[float], seed: int = 0) -> np.ndarray:
    """Fold index (0..len(fractions)-1) of each row, keeping every group (patient) in one fold and each
    label's positives spread over the folds in proportion to ``fractions``.

    Iterative stratification (Sechidis, Tsoumakas & Vlahavas, ECML PKDD 2011, algorithm 1) applied to
    groups: a group carries the per-label count of its images' positives and its image count. The label
    with the fewest positives left is handled first; each group holding it goes to the fold that still
    wants most of that label (ties: most images wanted, then at random). Groups are placed largest first
    (first-fit decreasing, a change from the paper's random order that matters when one patient has
    dozens of images). Groups without any positive are spread by size at the end.
    """
    y = np.asarray(y, dtype=np.float64).reshape(len(groups), -1)
    rng = np.random.default_rng(seed)
    uniq, inv = np.unique(np.asarray(groups), return_inverse=True)
    gy = np.zeros((len(uniq), y.shape[1]))
    np.add.at(gy, inv, y)
    size = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
    frac = np.asarray(fractions, dtype=np.float64)
    want_label = frac[:, None] * gy.sum(0)[None, :]
    want_size = frac * len(y)
    fold = np.full(len(uniq), -1)
    while (fold < 0).any():
        left = gy[fold < 0].sum(0)
        if (left > 0).any():
            rarest = np.flatnonzero(left == left[left > 0].min())
            label = int(rng.choice(rarest))
            todo = np.flatnonzero((fold < 0) & (gy[:, label] > 0))
        else:
            label, todo = None, np.flatnonzero(fold < 0)
        # Largest groups first (random among equals): later, smaller ones then even out what they left.
        weight = gy[todo, label] if label is not None else size[todo]
        for g in todo[np.lexsort((rng.random(len(todo)), -weight))]:
            # lexsort's last key is primary: most of this label wanted, then most images wanted, then random.
            keys = [rng.random(len(frac)), -want_size] + ([-want_label[:, label]] if label is not None else [])
            # A fold this group would overflow, or make up more than a quarter of, is chosen only when no other
            # fold can take it: one patient with dozens of images would otherwise dominate a small test split.
            keys.append((want_size < size[g]) | (size[g] > 0.25 * frac * len(y)))
            f = int(np.lexsort(keys)[0])
            fold[g] = f
            want_label[f] -= gy[g]
            want_size[f] -= size[g]
    return fold[inv]


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
        if stratify is not None and n_held < (counts > 0).sum():  # was scikit-learn's "test_size = 1 should be greater or equal ..."
            raise ValueError(f"only {len(idx)} images: a held-out split of {n_held} cannot hold each of the {(counts > 0).sum()} classes; "
                             "add images, or give val/ and test/ folders")
        rest, held = train_test_split(idx, test_size=n_held, random_state=seed, stratify=stratify)
        return np.sort(rest), np.sort(held)
    # Group-aware: k folds with k ~ 1/fraction, keep one fold, so no patient straddles the cut.
    n_splits = max(2, round(1.0 / fraction))
    n_groups = len(np.unique(groups[idx]))
    if n_groups < n_splits:
        # Copies of one image are kept together like a patient's: 80 identical images were "only 1 patients".
        raise ValueError(f"only {n_groups} patient(s) or group(s) of identical copies among {len(idx)} images; too few for a "
                         f"{fraction:.0%} patient-level split (`cxrkit audit` lists the copies)")
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # "The least populated class in y has only 3 members" printed scikit-learn's source line above cxrkit's output; what it
        # means for training (a class missing from validation) is said by train itself.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        rest, held = next(iter(sgkf.split(idx, labels[idx], groups[idx])))
    return np.sort(idx[rest]), np.sort(idx[held])


def _multilabel_splits(
    splits: np.ndarray, y: np.ndarray, groups: np.ndarray | None, val_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """Fill the empty entries of ``splits`` by iterative stratification at group level (see :func:`assign_splits`)."""
    pool = np.flatnonzero((splits == "") | (splits == "train"))
    has_val, has_test = (splits == "val").any(), (splits == "test").any()
    names, fractions = ["train"], [1.0]
    if not has_val:
        names.append("val")
        fractions.append(val_fraction)
    if not has_test and not has_val:
        names.append("test")
        fractions.append(test_fraction)
    fractions[0] = 1.0 - sum(fractions[1:])
    g = groups[pool] if groups is not None else pool.astype(str)
    if len(np.unique(g)) < len(names):
        raise ValueError(f"only {len(np.unique(g))} patient(s) or group(s) of identical copies among {len(pool)} images; too few for a "
                         f"patient-level split into {', '.join(names)} (`cxrkit audit` lists the copies)")
    yp = y[pool]
    # "No finding" joins the labels being stratified, so images without findings are spread in proportion too.
    fold = iterative_stratification(np.hstack([yp, yp.sum(axis=1, keepdims=True) == 0]), g, fractions, seed)
    splits[pool] = np.array(names, dtype=object)[fold]
    return splits


def _keep_groups_across_sites(samples: Sequence[Sample], groups: Sequence[str], out: np.ndarray) -> None:
    """Move every cut image of a group (a patient, or copies of one image) that spans sites into one split.

    Each site is cut on its own, so the same image in two sites' folders (datasets re-packaged from one another)
    could land in train at one and in test at the other. The group follows a split given on disk (a member in a
    val/ or test/ folder) or else its first image's; only images cxrkit placed itself move.
    """
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    for idx in members.values():
        if len({out[i] for i in idx}) < 2:
            continue
        given = [samples[i].split for i in idx if samples[i].split in ("val", "test")]
        target = given[0] if given else out[idx[0]]
        for i in idx:
            if samples[i].split in (None, "train"):
                out[i] = target


def assign_splits(
    samples: Sequence[Sample],
    classes: Sequence[str],
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    groups: Sequence[str] | None = None,
    multilabel: np.ndarray | None = None,
) -> list[str]:
    """Return a split name ("train", "val" or "test") for each sample.

    Split folders on disk are honoured. With train/ and test/ only, ``val_fraction`` of train becomes
    validation. With train/ only or no split folders, ``val_fraction`` and ``test_fraction`` of all
    images are held out. With train/ and val/ only there is no test split. Cuts are stratified by class
    and, when ``groups`` (patient IDs) are given, keep each patient in one split. ``multilabel`` (an
    (N, K) 0/1 matrix) switches to :func:`iterative_stratification` over all labels at once.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum to less than 1")
    if multilabel is not None:
        splits = np.array([s.split or "" for s in samples], dtype=object)
        grp = np.asarray(groups) if groups is not None else None
        return list(_multilabel_splits(splits, np.asarray(multilabel), grp, val_fraction, test_fraction, seed))
    sites = np.array([s.site or "" for s in samples], dtype=object)
    if len(set(sites)) > 1:
        # Each source keeps its own layout: a site with test/ keeps it, a site without one gets a test cut of its own,
        # so mixing the two never leaves a site out of validation or test.
        out = np.empty(len(samples), dtype=object)
        for k, site in enumerate(sorted(set(sites))):
            idx = np.flatnonzero(sites == site)
            sub = [samples[i] for i in idx]
            sub_groups = [groups[i] for i in idx] if groups is not None else None
            out[idx] = assign_splits([replace(x, site=None) for x in sub], classes, val_fraction, test_fraction, seed + 101 * k, sub_groups)
        if groups is not None:
            _keep_groups_across_sites(samples, groups, out)
        return list(out)
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
