"""A labelled, split, decoded dataset ready for training or evaluation."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from cxrkit.data.cache import CachedImages, load_cached, load_cached_arrays
from cxrkit.data.medmnist import ArraySource, open_medmnist
from cxrkit.data.sources import NEGATIVE_NAMES, DatasetError, ImageFolderSource, absence_of, canonical_name, choose_positive_class, open_image_folder
from cxrkit.data.splits import OWN_ID_PREFIX, assign_splits, merge_groups, patient_ids
from cxrkit.data.tables import open_label_table


@dataclass
class LabelledImages:
    """Images of one dataset with integer labels, split names and decode status.

    For a binary task ``class_names`` is ``[negative, positive]`` and label 1 means positive; for a
    multi-class task class names are sorted and labels index them; for a multi-label task ``labels`` is
    an (N, K) 0/1 matrix over ``class_names`` (the findings; none means "no finding"). ``patients`` holds
    each image's patient ID where the source records one or ``--group-pattern`` extracts it.
    """

    source: ImageFolderSource
    relpaths: list[str]
    labels: np.ndarray
    splits: np.ndarray
    cache: CachedImages
    class_names: list[str]
    positive: str | None
    multilabel: bool = False
    patients: list[str] | None = None
    duplicate_groups: int = 0  # groups of identical or near-identical images kept in one split when cxrkit cut the splits
    notes: list[str] = field(default_factory=list)  # what loading changed that the user should hear (said by evaluate)

    @property
    def images(self) -> np.ndarray:
        """All decoded images, (N, S, S) uint8 (zeros where decoding failed)."""
        return self.cache.images

    @property
    def task(self) -> str:
        """``binary``, ``multiclass`` or ``multilabel``."""
        if self.multilabel:
            return "multilabel"
        return "binary" if self.positive is not None else "multiclass"

    def label_text(self, i: int) -> str:
        """Image ``i``'s label as text: its class, or its findings joined by ``|`` ("" for none)."""
        if self.multilabel:
            return "|".join(c for c, v in zip(self.class_names, self.labels[i]) if v)
        return self.class_names[self.labels[i]]

    def label_groups(self, idx: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """One class index per image and the class names, for per-class statistics: for multi-label
        data, "no finding" (0) versus "any finding" (1)."""
        if self.multilabel:
            return self.labels[idx].any(axis=1).astype(np.int64), ["no finding", "any finding"]
        return self.labels[idx], self.class_names

    def patients_of(self, idx: np.ndarray) -> list[str] | None:
        """The patient IDs of images ``idx`` (for intervals that count patients), or None when the data record none."""
        return None if self.patients is None else [self.patients[i] for i in idx]

    @property
    def sites(self) -> np.ndarray | None:
        """Each image's site when the data come from several sources (:mod:`cxrkit.data.multisite`), else None."""
        sites = [s.site for s in self.source.samples]
        return np.array(sites) if any(sites) else None

    def index(self, split: str) -> np.ndarray:
        """Indices of decodable images in ``split`` (``"all"``: every decodable image)."""
        if split == "all":
            return np.flatnonzero(self.cache.ok)
        return np.flatnonzero((self.splits == split) & self.cache.ok)

    def skipped(self) -> list[tuple[str, str, str]]:
        """(relative path, split, reason) for every file that failed to decode."""
        return [(self.relpaths[i], str(self.splits[i]), reason) for i, reason in sorted(self.cache.errors.items())]

    def counts(self) -> dict[str, dict[str, int]]:
        """Number of usable images per split and class."""
        out: dict[str, dict[str, int]] = {}
        for split in ("train", "val", "test"):
            idx = self.index(split)
            if len(idx) and self.multilabel:
                out[split] = {c: int(n) for c, n in zip(self.class_names, self.labels[idx].sum(axis=0))}
            elif len(idx):
                out[split] = {c: int((self.labels[idx] == i).sum()) for i, c in enumerate(self.class_names)}
        return out

    def image_counts(self) -> dict[str, int]:
        """Number of usable images per split (for multi-label data ``counts`` holds positives per finding)."""
        return {split: len(self.index(split)) for split in ("train", "val", "test") if len(self.index(split))}

    @cached_property
    def file_sizes(self) -> list[int]:
        """Content stamp of each image (a file's byte size), read once."""
        return [self.source.content_stamp(rel) for rel in self.relpaths]

    def fingerprint(self, split: str | None = None) -> str:
        """Short hash of (relative path, label, split, byte size) of the images, or of one split's."""
        h = hashlib.sha256()
        for i, rel in enumerate(self.relpaths):
            if split is None or self.splits[i] == split:
                h.update(f"{rel}|{self.labels[i]}|{self.splits[i]}|{self.file_sizes[i]}\n".encode())
        return h.hexdigest()[:16]


def match_classes(dataset_classes: list[str], model_classes: list[str], class_map: dict[str, str] | None = None) -> dict[str, str]:
    """Map each dataset class to a model class: ``class_map`` first, then the same name, the same name
    ignoring case, and for binary tasks any negative-sounding name (normal/healthy/negative, or "no X" of the
    model's positive class X) to the model's negative class. Raises :class:`DatasetError` listing what cannot be matched."""
    class_map = dict(class_map or {})
    bad_targets = sorted({v for v in class_map.values() if v not in model_classes})
    if bad_targets:
        raise DatasetError(f"--class-map targets {bad_targets} are not classes of the model ({model_classes})")
    unknown = sorted(set(class_map) - set(dataset_classes))
    if unknown:
        raise DatasetError(f"--class-map names {unknown}, which are not classes of the dataset ({dataset_classes})")
    lower = {m.lower(): m for m in model_classes}
    # A model trained on a 0/1 "tb" column has the classes "no tb" and "tb": a "normal" folder is its negative class, as is a
    # "no tb" folder for a model of "normal" and "tb" (but "Non-COVID" is not a TB model's "normal").
    negative = (model_classes[0] if len(model_classes) == 2 and (canonical_name(model_classes[0]) in NEGATIVE_NAMES
                                                                 or absence_of(model_classes[0], model_classes[1])) else None)
    mapping, unmatched = {}, []
    for c in dataset_classes:
        if c in class_map:
            mapping[c] = class_map[c]
        elif c in model_classes:
            mapping[c] = c
        elif c.lower() in lower:
            mapping[c] = lower[c.lower()]
        elif negative and (canonical_name(c) in NEGATIVE_NAMES or absence_of(c, model_classes[1])):
            mapping[c] = negative
        else:
            unmatched.append(c)
    if unmatched:
        # No guess in the example: "0=tb" or "normal=tb", built from the last model class, inverted the labels when copied.
        raise DatasetError(
            f"dataset classes {unmatched} cannot be matched to the model's classes {model_classes}; "
            f"say which is which with --class-map DATASET_CLASS=MODEL_CLASS, one pair per dataset class "
            f"(e.g. --class-map {unmatched[0]}=<{' or '.join(model_classes)}>)"
        )
    return mapping


TASKS = ("auto", "binary", "multiclass", "multilabel")


def open_source(data: str | Path, labels: str | Path | None = None, label_column: str | None = None, task: str = "auto",
                cache_dir: Path | None = None, min_classes: int = 2) -> ImageFolderSource:
    """The images and labels of DATA: a label table (``labels``, or DATA itself when it is a ``.csv``),
    a MedMNIST ``.npz`` file, or a folder/zip whose folder names are the classes."""
    from cxrkit.data.multisite import is_sources_file, open_sites

    data = Path(data).expanduser()
    if labels is not None:
        return open_label_table(labels, data, label_column, task, min_classes)
    if is_sources_file(data):
        return open_sites(data, match_classes, cache_dir)
    if data.suffix.lower() == ".csv" and data.is_file():
        return open_label_table(data, data.parent, label_column, task, min_classes)
    if data.suffix.lower() == ".npz":
        return open_medmnist(data)
    if label_column is not None:
        raise DatasetError("--label-column applies to label tables; give the table with --labels FILE.csv")
    return open_image_folder(data, cache_dir, min_classes)


def _multilabel_matrix(source: ImageFolderSource, names: list[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(names)}
    unknown = sorted({f for s in source.samples for f in (s.findings or ()) if f not in index})
    if unknown:
        raise DatasetError(f"findings {unknown} in this dataset are not labels of the model ({names})")
    y = np.zeros((len(source.samples), len(names)), dtype=np.uint8)
    for i, s in enumerate(source.samples):
        for f in s.findings or ():
            y[i, index[f]] = 1
    return y


@dataclass
class DatasetPlan:
    """A dataset's images, labels and splits before any decoding: what training and the audit both cut the same way."""

    source: ImageFolderSource
    samples: list
    labels: np.ndarray
    splits: np.ndarray
    class_names: list[str]
    positive: str | None
    patients: list[str] | None
    duplicate_groups: int


def plan_dataset(
    data: str | Path,
    positive: str | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    group_pattern: str | None = None,
    cache_dir: str | Path | None = None,
    class_names: list[str] | None = None,
    class_map: dict[str, str] | None = None,
    labels: str | Path | None = None,
    label_column: str | None = None,
    task: str = "auto",
    resplit: bool = False,
    duplicate_groups: Callable[[list[Path]], list[str | None]] | None = None,
) -> DatasetPlan:
    """Find, label and split every image of a dataset without decoding any (arguments as for :func:`load_dataset`)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}")
    cache = Path(cache_dir) if cache_dir else None
    # Evaluating a model (class_names given) accepts a one-class external set; training needs two classes.
    source = open_source(data, labels, label_column, task, cache, min_classes=1 if class_names is not None else 2)
    if task == "multilabel" and not source.multilabel:
        raise DatasetError("--task multilabel needs a label table (--labels FILE.csv) or a multi-label MedMNIST file; "
                           "class folders give one class per image")
    if source.multilabel and task in ("binary", "multiclass"):
        raise DatasetError(f"{data} has several findings per image; use --task multilabel (or --label-column for a single-label column)")
    if task == "binary" and len(source.classes) != 2 and not source.multilabel and class_names is None:
        raise DatasetError(f"--task binary needs 2 classes; found {len(source.classes)}: {source.classes}")
    samples = source.samples
    if resplit:
        samples = [replace(s, split=None) for s in samples]
    has_patients = group_pattern is not None or any(s.patient is not None for s in samples)
    groups = patient_ids(samples, group_pattern) if has_patients else None
    split_groups, n_dup = groups, 0
    with_val = {s.site for s in samples if s.split == "val"}
    cut_here = any(s.site not in with_val for s in samples)  # a source without a validation folder: cxrkit cuts it (and test, if absent)
    if duplicate_groups is not None and cut_here and not isinstance(source, ArraySource):
        pool = [i for i, s in enumerate(samples) if s.split in (None, "train")]
        dup = [None] * len(samples)
        for i, g in zip(pool, duplicate_groups([samples[i].path for i in pool])):
            dup[i] = g
        n_dup = len({g for g in dup if g is not None})
        if n_dup:
            base = groups if groups is not None else [f"{OWN_ID_PREFIX}{s.path}" for s in samples]
            split_groups = merge_groups(base, dup)
    if source.multilabel:
        if positive is not None:
            raise DatasetError("--positive applies to binary tasks; this is a multi-label dataset")
        names, pos = list(class_names) if class_names is not None else list(source.classes), None
        y = _multilabel_matrix(source, names)
        splits = np.array(assign_splits(samples, names, val_fraction, test_fraction, seed, split_groups, multilabel=y))
    else:
        mapping = {c: c for c in source.classes}
        if class_names is not None:
            mapping = match_classes(source.classes, list(class_names), class_map)
            names = list(class_names)
            pos = names[1] if len(names) == 2 else None
        elif len(source.classes) == 2:
            pos = choose_positive_class(source.classes, positive)
            names = [c for c in source.classes if c != pos] + [pos]
        else:
            if positive is not None:
                raise DatasetError(f"--positive applies to binary tasks; this dataset has {len(source.classes)} classes")
            pos, names = None, list(source.classes)
        strata, strata_names = samples, source.classes
        if any(s.site for s in samples):  # stratify by site and class: validation and test hold every site
            strata = [replace(s, label=f"{s.site}/{s.label}") for s in samples]
            strata_names = sorted({s.label for s in strata})
        splits = np.array(assign_splits(strata, strata_names, val_fraction, test_fraction, seed, split_groups))
        index = {c: i for i, c in enumerate(names)}
        y = np.array([index[mapping[s.label]] for s in samples], dtype=np.int64)
    return DatasetPlan(source, samples, y, splits, names, pos, groups, n_dup)


def load_dataset(
    data: str | Path,
    image_size: int,
    aspect: str = "pad",
    positive: str | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    group_pattern: str | None = None,
    cache_dir: str | Path | None = None,
    class_names: list[str] | None = None,
    progress: bool = True,
    class_map: dict[str, str] | None = None,
    intensity: str = "none",
    crop_border: bool = False,
    labels: str | Path | None = None,
    label_column: str | None = None,
    task: str = "auto",
    resplit: bool = False,
    cache_workers: int | None = None,
    duplicate_groups: Callable[[list[Path]], list[str | None]] | None = None,
) -> LabelledImages:
    """Find, label, split and decode (through the cache) every image of a dataset.

    ``class_names`` forces the class order of an existing run (evaluation); the dataset's classes are
    then matched to them by :func:`match_classes` (``class_map`` for names that differ). ``labels`` is a
    CSV label table (see :mod:`cxrkit.data.tables`); ``task`` forces binary, multiclass or multilabel;
    ``resplit`` ignores the splits the source gives and makes patient-level ones. ``duplicate_groups`` maps image
    files to a group ID for copies (or None): when cxrkit cuts the splits itself, each group is kept in one split like
    a patient's images, so the cut never puts a copy on both sides.
    """
    from cxrkit.data.spec import MAX_IMAGE_SIZE

    # Checked here: 0 was a ZeroDivisionError, -1 "negative dimensions", seed -1 scikit-learn's error. (Training asks for at
    # least 16 px; reading a dataset at a smaller size, for an audit or a test, is allowed.)
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or not 1 <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(f"image_size must be a whole number from 1 to {MAX_IMAGE_SIZE}, got {image_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be a whole number from 0 to 2**32 - 1, got {seed!r}")
    plan = plan_dataset(data, positive, val_fraction, test_fraction, seed, group_pattern, cache_dir, class_names, class_map, labels,
                        label_column, task, resplit, duplicate_groups)
    source, samples = plan.source, plan.samples
    cache = Path(cache_dir) if cache_dir else None
    if isinstance(source, ArraySource):
        cached = load_cached_arrays(source, image_size, aspect, cache, progress=progress, intensity=intensity, crop_border=crop_border)
    else:
        cached = load_cached([s.path for s in samples], image_size, aspect, cache, workers=cache_workers, progress=progress,
                             intensity=intensity, crop_border=crop_border)
    return LabelledImages(
        source=source,
        relpaths=[source.relpath(s.path) for s in samples],
        labels=plan.labels,
        splits=plan.splits,
        cache=cached,
        class_names=plan.class_names,
        positive=plan.positive,
        multilabel=source.multilabel,
        patients=plan.patients,
        duplicate_groups=plan.duplicate_groups,
    )


def native_image_size(data: str | Path, labels: str | Path | None = None, label_column: str | None = None, task: str = "auto",
                      cache_dir: str | Path | None = None, sample: int = 16) -> int | None:
    """The longer side of a typical image of the dataset (the median over a few), or None when none can be read."""
    from PIL import Image

    source = open_source(data, labels, label_column, task, Path(cache_dir) if cache_dir else None)
    if not source.samples:
        return None
    if isinstance(source, ArraySource):
        return int(max(source.read([0])[0].shape))
    step = max(1, len(source.samples) // sample)
    sides = []
    for smp in source.samples[::step][:sample]:
        try:
            with Image.open(smp.path) as im:  # reads the header only
                sides.append(max(im.size))
        except Exception:  # noqa: BLE001 - DICOM or a broken file: the others decide
            continue
    return int(np.median(sides)) if sides else None
