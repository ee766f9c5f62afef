"""A labelled, split, decoded dataset ready for training or evaluation."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from cxrkit.data.cache import CachedImages, load_cached
from cxrkit.data.sources import NEGATIVE_NAMES, DatasetError, ImageFolderSource, canonical_name, choose_positive_class, open_image_folder
from cxrkit.data.splits import assign_splits, patient_ids


@dataclass
class LabelledImages:
    """Images of one dataset with integer labels, split names and decode status.

    For a binary task ``class_names`` is ``[negative, positive]`` and label 1 means positive; for a
    multi-class task class names are sorted and labels index them.
    """

    source: ImageFolderSource
    relpaths: list[str]
    labels: np.ndarray
    splits: np.ndarray
    cache: CachedImages
    class_names: list[str]
    positive: str | None

    @property
    def images(self) -> np.ndarray:
        """All decoded images, (N, S, S) uint8 (zeros where decoding failed)."""
        return self.cache.images

    @property
    def task(self) -> str:
        """``binary`` or ``multiclass``."""
        return "binary" if self.positive is not None else "multiclass"

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
            if len(idx):
                out[split] = {c: int((self.labels[idx] == i).sum()) for i, c in enumerate(self.class_names)}
        return out

    @cached_property
    def file_sizes(self) -> list[int]:
        """Byte size of each file, read from disk once."""
        return [(self.source.root / rel).stat().st_size for rel in self.relpaths]

    def fingerprint(self, split: str | None = None) -> str:
        """Short hash of (relative path, label, split, byte size) of the images, or of one split's."""
        h = hashlib.sha256()
        for i, rel in enumerate(self.relpaths):
            if split is None or self.splits[i] == split:
                h.update(f"{rel}|{self.labels[i]}|{self.splits[i]}|{self.file_sizes[i]}\n".encode())
        return h.hexdigest()[:16]


def match_classes(dataset_classes: list[str], model_classes: list[str], class_map: dict[str, str] | None = None) -> dict[str, str]:
    """Map each dataset class to a model class: ``class_map`` first, then the same name, the same name
    ignoring case, and for binary tasks any negative-sounding name (normal/healthy/negative) to the
    model's negative class. Raises :class:`DatasetError` listing what cannot be matched."""
    class_map = dict(class_map or {})
    bad_targets = sorted({v for v in class_map.values() if v not in model_classes})
    if bad_targets:
        raise DatasetError(f"--class-map targets {bad_targets} are not classes of the model ({model_classes})")
    unknown = sorted(set(class_map) - set(dataset_classes))
    if unknown:
        raise DatasetError(f"--class-map names {unknown}, which are not classes of the dataset ({dataset_classes})")
    lower = {m.lower(): m for m in model_classes}
    negative = model_classes[0] if len(model_classes) == 2 and canonical_name(model_classes[0]) in NEGATIVE_NAMES else None
    mapping, unmatched = {}, []
    for c in dataset_classes:
        if c in class_map:
            mapping[c] = class_map[c]
        elif c in model_classes:
            mapping[c] = c
        elif c.lower() in lower:
            mapping[c] = lower[c.lower()]
        elif negative and canonical_name(c) in NEGATIVE_NAMES:
            mapping[c] = negative
        else:
            unmatched.append(c)
    if unmatched:
        example = f"{unmatched[0]}={model_classes[-1]}"
        raise DatasetError(
            f"dataset classes {unmatched} cannot be matched to the model's classes {model_classes}; "
            f"say which is which with --class-map DATASET_CLASS=MODEL_CLASS (e.g. --class-map {example})"
        )
    return mapping


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
) -> LabelledImages:
    """Find, label, split and decode (through the cache) every image of a dataset.

    ``class_names`` forces the class order of an existing run (evaluation); the dataset's classes are
    then matched to them by :func:`match_classes` (``class_map`` for names that differ).
    """
    cache = Path(cache_dir) if cache_dir else None
    source = open_image_folder(data, cache)
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
    samples = source.samples
    groups = patient_ids(samples, group_pattern) if group_pattern else None
    splits = np.array(assign_splits(samples, source.classes, val_fraction, test_fraction, seed, groups))
    index = {c: i for i, c in enumerate(names)}
    labels = np.array([index[mapping[s.label]] for s in samples], dtype=np.int64)
    cached = load_cached([s.path for s in samples], image_size, aspect, cache, progress=progress, intensity=intensity, crop_border=crop_border)
    return LabelledImages(
        source=source,
        relpaths=[source.relpath(s.path) for s in samples],
        labels=labels,
        splits=splits,
        cache=cached,
        class_names=names,
        positive=pos,
    )
