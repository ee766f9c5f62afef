"""MedMNIST ``.npz`` files (``pneumoniamnist.npz``, ``chestmnist_224.npz``, ...) as a dataset source.

A MedMNIST file holds ``{train,val,test}_images`` (N, H, W) or (N, H, W, 3) uint8 and
``{train,val,test}_labels`` (N, 1) class indices or (N, K) 0/1 multi-label rows; any size variant
(28, 64, 128, 224) has the same keys. Its own splits are the given splits. Class names follow
MedMNIST's ``INFO`` for the chest datasets (Yang et al., Scientific Data 2023); other files get
generic names. Images have no file of their own: each sample's path is virtual,
``<file.npz>/<split>/<row>``, so reports and prediction tables can still name it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxrkit.data.decode import fit_square
from cxrkit.data.intensity import crop_borders, normalize_intensity
from cxrkit.data.sources import DatasetError, ImageFolderSource, Sample

# Label names from medmnist.info.INFO (v2/v3) for the chest X-ray datasets.
MEDMNIST_LABELS = {
    "pneumoniamnist": ("binary", ["normal", "pneumonia"]),
    "chestmnist": ("multilabel", ["atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
                                  "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural", "hernia"]),
}
SPLITS = ("train", "val", "test")


@dataclass
class ArraySource(ImageFolderSource):
    """Images held in a MedMNIST ``.npz`` file, addressed by (split, row)."""

    npz: Path | None = None
    rows: list[tuple[str, int]] = field(default_factory=list)
    _stamps: dict[str, list[int]] = field(default_factory=dict, repr=False)

    def read(self, indices: list[int] | np.ndarray) -> np.ndarray:
        """Raw grayscale uint8 images of the samples at ``indices``, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        out: list[np.ndarray | None] = [None] * len(indices)
        with np.load(self.npz) as z:
            for split in SPLITS:
                sel = [j for j, i in enumerate(indices) if self.rows[i][0] == split]
                if not sel:
                    continue
                arr = z[f"{split}_images"]
                for j in sel:
                    img = arr[self.rows[indices[j]][1]]
                    out[j] = img if img.ndim == 2 else img[..., :3].mean(axis=2).round().astype(np.uint8)
        return np.stack(out) if out else np.zeros((0, 1, 1), np.uint8)

    def content_stamp(self, rel: str) -> int:
        """CRC-32 of an image's pixels: it changes when the image changes, like a file's byte size."""
        split, row = rel.split("/")
        if split not in self._stamps:
            with np.load(self.npz) as z:
                self._stamps[split] = [zlib.crc32(np.ascontiguousarray(img).tobytes()) for img in z[f"{split}_images"]]
        return self._stamps[split][int(row)]


def fit_array(gray: np.ndarray, size: int, aspect: str = "pad", intensity: str = "none", crop_border: bool = False) -> np.ndarray:
    """The decode pipeline of :func:`cxrkit.data.decode.load_grayscale` for an image already in memory."""
    if crop_border:
        gray = crop_borders(gray)
    return fit_square(normalize_intensity(gray, intensity), size, aspect)


def medmnist_kind(path: Path) -> tuple[str, list[str]] | None:
    """(task, class names) for a known MedMNIST file name (any size suffix), else None."""
    stem = path.stem.lower()
    return next((v for k, v in MEDMNIST_LABELS.items() if stem.startswith(k)), None)


def open_medmnist(path: str | Path) -> ArraySource:
    """Read the labels and splits of a MedMNIST ``.npz`` file (images are read later, by the cache)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"{path} does not exist")
    try:
        z = np.load(path)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path} is not a readable .npz file: {exc}") from exc
    with z:
        keys = set(z.files)
        if "train_images" not in keys or "train_labels" not in keys:
            raise DatasetError(f"{path} is not a MedMNIST file: it needs train_images and train_labels (has {sorted(keys)})")
        labels = {s: np.asarray(z[f"{s}_labels"]) for s in SPLITS if f"{s}_labels" in keys}
        shapes = {s: z[f"{s}_images"].shape for s in labels if f"{s}_images" in keys}
    for s, y in labels.items():
        if s not in shapes or shapes[s][0] != len(y):
            raise DatasetError(f"{path}: {s}_images and {s}_labels do not have the same number of rows")
    width = {y.shape[1] if y.ndim == 2 else 1 for y in labels.values()}
    if len(width) != 1:
        raise DatasetError(f"{path}: label arrays of the splits have different widths {sorted(width)}")
    k = width.pop()
    known = medmnist_kind(path)
    multilabel = k > 1
    if known and (known[0] == "multilabel") == multilabel and (k == len(known[1]) or not multilabel):
        names = known[1]
    elif multilabel:
        names = [f"label_{j}" for j in range(k)]
    else:
        n_classes = int(max(int(y.max()) for y in labels.values())) + 1
        names = [f"class_{j}" for j in range(n_classes)]
    path = path.resolve()
    samples, rows = [], []
    for s, y in labels.items():
        y2 = y.reshape(len(y), -1)
        for i, row in enumerate(y2):
            if multilabel:
                found = tuple(names[j] for j in np.flatnonzero(row))
                samples.append(Sample(path / s / f"{i:06d}", "|".join(found) or "No Finding", s, found, None))
            else:
                c = int(row[0])
                if not 0 <= c < len(names):
                    raise DatasetError(f"{path}: {s}_labels row {i} is {c}, outside the classes {names}")
                samples.append(Sample(path / s / f"{i:06d}", names[c], s, None, None))
            rows.append((s, i))
    classes = list(names)
    if not multilabel and len({smp.label for smp in samples}) < 2:
        raise DatasetError(f"{path}: only one class present")
    return ArraySource(root=path, samples=samples, classes=classes, layout="medmnist npz", npz=path, rows=rows)
