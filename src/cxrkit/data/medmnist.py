"""MedMNIST ``.npz`` files (``pneumoniamnist.npz``, ``chestmnist_224.npz``, ...) as a dataset source.

A MedMNIST file holds ``{train,val,test}_images`` (N, H, W) or (N, H, W, 3) uint8 and
``{train,val,test}_labels`` (N, 1) class indices or (N, K) 0/1 multi-label rows; any size variant
(28, 64, 128, 224) has the same keys. Its own splits are the given splits. Class names follow
MedMNIST's ``INFO`` for the chest datasets (Yang et al., Scientific Data 2023); other files get
generic names. Images have no file of their own: each sample's path is virtual,
``<file.npz>/<split>/<row>``, so reports and prediction tables can still name it.
"""

from __future__ import annotations

import itertools
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cxrkit.data.sources import DatasetError, ImageFolderSource, Sample, check_utf8

# Label names from medmnist.info.INFO (v2/v3) for the chest X-ray datasets.
MEDMNIST_LABELS = {
    "pneumoniamnist": ("binary", ["normal", "pneumonia"]),
    "chestmnist": ("multilabel", ["atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
                                  "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural", "hernia"]),
}
SPLITS = ("train", "val", "test")


def array_grey(img: np.ndarray) -> np.ndarray:
    """One MedMNIST image (H, W) or (H, W, 1|3|4) as 2-D uint8, with the luminance a PNG of it is read with (ITU-R 601-2,
    alpha dropped): the channel mean differed by up to 7 grey levels, so `predict` on exported PNGs saw other pixels."""
    if img.ndim == 2:
        return img
    if img.shape[2] == 1:
        return img[..., 0]
    return np.asarray(Image.fromarray(np.ascontiguousarray(img[..., :3]), "RGB").convert("L"))


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
                    out[j] = array_grey(img)
        return np.stack(out) if out else np.zeros((0, 1, 1), np.uint8)

    def content_stamp(self, rel: str) -> int:
        """CRC-32 of an image's pixels: it changes when the image changes, like a file's byte size."""
        split, row = rel.split("/")
        if split not in self._stamps:
            with np.load(self.npz) as z:
                self._stamps[split] = [zlib.crc32(np.ascontiguousarray(img).tobytes()) for img in z[f"{split}_images"]]
        return self._stamps[split][int(row)]


def medmnist_kind(path: Path) -> tuple[str, list[str]] | None:
    """(task, class names) for a known MedMNIST file name (any size suffix), else None."""
    stem = path.stem.lower()
    return next((v for k, v in MEDMNIST_LABELS.items() if stem.startswith(k)), None)


def _array_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of each array of a ``.npz``, from the headers alone: the images are not decompressed to be checked."""
    out = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
            out[info.filename[:-4]] = (tuple(shape), dtype)
    return out


def _check_images(path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse images the cache would scramble or fail on half-way: MedMNIST's are uint8, (N, H, W) or (N, H, W, C)."""
    if dtype != np.uint8:  # a float array of 0-1 values became black images, an int64 one wrapped around at 256
        raise DatasetError(f"{path}: {key} holds {dtype} values; MedMNIST images are uint8 (0-255): convert them first "
                           "(e.g. (x * 255).round().astype(np.uint8) for values from 0 to 1)")
    if not (len(shape) == 3 or len(shape) == 4 and shape[3] in (1, 3, 4)) or 0 in shape[1:]:
        raise DatasetError(f"{path}: {key} has the shape {shape}; expected (N, H, W) grey images or (N, H, W, 1|3|4) colour ones")


def _check_labels(path: Path, key: str, y: np.ndarray) -> np.ndarray:
    """``y`` as an (N, K) int64 array, or a one-line error: a float 0.5 was read as class 0 and a NaN, a string or a
    value of 2**63 (a class list of that length) failed inside numpy."""
    if y.ndim not in (1, 2):
        raise DatasetError(f"{path}: {key} has the shape {y.shape}; expected (N,) or (N, 1) class indices or (N, K) 0/1 rows")
    if y.dtype == bool:
        y = y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.integer) and not np.issubdtype(y.dtype, np.floating):
        raise DatasetError(f"{path}: {key} holds {y.dtype} values; labels are integer class indices or 0/1 rows")
    whole = np.isfinite(y) & (y == np.round(y)) & (y >= 0) & (y < 2**31) if np.issubdtype(y.dtype, np.floating) else (y >= 0) & (y < 2**31)
    if not whole.all():
        at = tuple(int(i) for i in np.argwhere(~whole)[0])
        raise DatasetError(f"{path}: {key}{list(at)} is {y[at].item()!r}; labels are class indices 0, 1, 2 ... (or 0/1 for multi-label rows)")
    return y.astype(np.int64).reshape(len(y), y.shape[1] if y.ndim == 2 else 1)


def open_medmnist(path: str | Path) -> ArraySource:
    """Read the labels and splits of a MedMNIST ``.npz`` file (images are read later, by the cache)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"{path} does not exist")
    check_utf8(path.resolve())
    try:
        headers = _array_headers(path)
        with np.load(path) as z:
            keys = set(z.files)
            if "train_images" not in keys or "train_labels" not in keys:
                raise DatasetError(f"{path} is not a MedMNIST file: it needs train_images and train_labels (has {sorted(keys)})")
            for s in SPLITS:
                if (f"{s}_images" in keys) != (f"{s}_labels" in keys):  # val_images without val_labels: the given split was dropped
                    have, lack = (f"{s}_images", f"{s}_labels") if f"{s}_images" in keys else (f"{s}_labels", f"{s}_images")
                    raise DatasetError(f"{path} has {have} but no {lack}")
            for s in SPLITS:
                for kind in ("images", "labels"):
                    if f"{s}_{kind}" in keys and headers[f"{s}_{kind}"][1].hasobject:
                        raise DatasetError(f"{path}: {s}_{kind} holds Python objects, which could run code when loaded; save plain arrays")
            labels = {s: _check_labels(path, f"{s}_labels", np.asarray(z[f"{s}_labels"])) for s in SPLITS if f"{s}_labels" in keys}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"{path} is not a readable .npz file: {exc}") from exc
    for s, y in labels.items():
        shape, dtype = headers[f"{s}_images"]
        _check_images(path, f"{s}_images", shape, dtype)
        if shape[0] != len(y):
            raise DatasetError(f"{path}: {s}_images has {shape[0]} images but {s}_labels has {len(y)} rows")
    labels = {s: y for s, y in labels.items() if len(y)}  # a split without images is no given split, as an empty folder is none
    if "train" not in labels:
        raise DatasetError(f"{path}: train_images holds no images")
    width = {y.shape[1] for y in labels.values()}
    if len(width) != 1:
        raise DatasetError(f"{path}: label arrays of the splits have different widths {sorted(width)}")
    k = width.pop()
    known = medmnist_kind(path)
    multilabel = k > 1
    if multilabel:
        bad = next(((s, y) for s, y in labels.items() if y.max() > 1), None)
        if bad:  # a 2 was read as a finding present, like a 1
            raise DatasetError(f"{path}: {bad[0]}_labels holds {int(bad[1].max())}; multi-label rows hold 0 or 1 per finding")
    if multilabel and not (known and known[0] == "multilabel") and all((y.sum(axis=1) == 1).all() for y in labels.values()):
        # One 1 in every row is one class per image written one-hot (Keras' to_categorical): it was read as K findings named
        # label_0 ... with a multi-label model, not as the classes they are.
        labels = {s: y.argmax(axis=1).reshape(-1, 1) for s, y in labels.items()}
        k, multilabel = 1, False
    if known and (known[0] == "multilabel") == multilabel and (k == len(known[1]) or not multilabel):
        names = known[1]
    elif multilabel:
        names = [f"label_{j}" for j in range(k)]
    else:
        # Every class from 0 to the largest label needs training images: a 7 in val_labels made eight classes, five of them empty.
        present = set(np.unique(labels["train"]).tolist())
        top = max(int(y.max()) for y in labels.values())
        absent = list(itertools.islice((c for c in range(top + 1) if c not in present), 5))
        if absent:
            raise DatasetError(f"{path}: the labels run from 0 to {top} but train_labels has no image of class {', '.join(map(str, absent))}; "
                               "labels must be class indices 0, 1, 2 ..., each with training images")
        names = [f"class_{j}" for j in range(top + 1)]
    path = path.resolve()
    samples, rows = [], []
    for s, y2 in labels.items():
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
