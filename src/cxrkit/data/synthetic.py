"""Procedurally generated, seedable chest-X-ray-like images for the demo and the tests.

Each image has a thorax, two dark lung fields, a heart shadow on the patient's left, a spine, faint
ribs, random exposure and noise. Positive images add patchy opacities in the upper lung zones (the
pattern of post-primary tuberculosis) or, as a second disease, a lower-zone haze; all classes get occasional small benign blobs so that "any
bright spot" is not enough to tell them apart.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) <= 1.0


def synthetic_cxr(rng: np.random.Generator, size: int = 128, pattern: int | tuple[int, ...] = 0, signal: float = 1.0) -> np.ndarray:
    """Draw one synthetic radiograph as a ``size`` x ``size`` uint8 array.

    ``pattern`` 0 is normal, 1 adds patchy upper-zone opacities, 2 a diffuse lower-zone haze (a second
    disease for multi-class tasks). A tuple draws several findings on one image (multi-label), where 3
    is an enlarged heart shadow. ``signal`` scales their contrast (1.0 = clearly visible at 64 px).
    """
    found = set(pattern) if isinstance(pattern, tuple) else ({2} if pattern == 2 else {1} if pattern else set())
    yy, xx = np.mgrid[-1:1:complex(size), -1:1:complex(size)]
    jy, jx, js = rng.normal(0, 0.03), rng.normal(0, 0.03), rng.uniform(0.92, 1.05)
    yy, xx = (yy - jy) / js, (xx - jx) / js
    img = np.full((size, size), 0.08)
    thorax = _ellipse(yy, xx, 0.05, 0.0, 0.95, 0.85)
    img[thorax] = 0.55
    lung_r = rng.uniform(0.26, 0.31)
    lungs = _ellipse(yy, xx, -0.05, -0.38, 0.6, lung_r) | _ellipse(yy, xx, -0.05, 0.38, 0.6, lung_r)
    img[lungs] = 0.22
    ribs = 0.05 * (np.sin((yy + 0.15 * xx**2) * rng.uniform(16, 19)) > 0.6)
    img += ribs * lungs
    img[_ellipse(yy, xx, 0.3, 0.12, rng.uniform(0.2, 0.26), rng.uniform(0.22, 0.3))] = 0.62
    spine = (np.abs(xx) < 0.06) & thorax
    img[spine] = np.maximum(img[spine], 0.7)

    def blob(cy: float, cx: float, sigma: float, amp: float) -> np.ndarray:
        return amp * np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)))

    for _ in range(rng.integers(0, 3)):
        side = rng.choice([-0.38, 0.38])
        img += blob(rng.uniform(-0.5, 0.4), side + rng.normal(0, 0.1), rng.uniform(0.02, 0.04), rng.uniform(0.1, 0.2)) * lungs
    if 3 in found:
        img += blob(0.32, 0.15, 0.28, 0.12 * signal) * thorax
    if 2 in found:
        for side in (-0.38, 0.38):
            img += blob(rng.uniform(0.25, 0.45), side + rng.normal(0, 0.05), rng.uniform(0.12, 0.18), rng.uniform(0.08, 0.15) * signal) * lungs
    if 1 in found:
        for _ in range(rng.integers(2, 6)):
            side = rng.choice([-0.38, 0.38])
            img += (
                blob(rng.uniform(-0.55, -0.15), side + rng.normal(0, 0.1), rng.uniform(0.05, 0.11), rng.uniform(0.12, 0.25) * signal)
                * lungs
            )
    img = gaussian_filter(img, sigma=size / 128)
    img = img ** rng.uniform(0.85, 1.15) * rng.uniform(0.9, 1.1)
    img += rng.normal(0, 0.025, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_synthetic_dataset(
    root: str | Path,
    n_per_class: int = 60,
    size: int = 128,
    seed: int = 0,
    classes: tuple[str, str] = ("healthy", "tb"),
    splits: dict[str, float] | None = None,
    signal: float = 1.0,
) -> Path:
    """Write a synthetic dataset as PNG files and return its root.

    ``splits`` maps split folder names to fractions, e.g. ``{"train": 0.8, "test": 0.2}`` for the
    ``<root>/<split>/<class>/`` layout; ``None`` writes ``<root>/<class>/`` with no split folders.
    The first class is normal; the second gets upper-zone opacities, the third lower-zone haze, and so on.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for ci, cls in enumerate(classes):
        if splits:
            counts = {s: round(n_per_class * f) for s, f in splits.items()}
            folders = [(root / s / cls, n) for s, n in counts.items()]
        else:
            folders = [(root / cls, n_per_class)]
        k = 0
        for folder, n in folders:
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(n):
                Image.fromarray(synthetic_cxr(rng, size, pattern=0 if ci == 0 else 1 + (ci - 1) % 2, signal=signal)).save(folder / f"{cls}_{k:04d}.png")
                k += 1
    return root


MULTILABEL_FINDINGS = ("opacity", "haze", "cardiomegaly")


def make_synthetic_multilabel(
    root: str | Path, n_patients: int = 60, size: int = 64, seed: int = 0, prevalence: tuple[float, ...] = (0.3, 0.2, 0.12),
    max_images: int = 3, signal: float = 1.0,
) -> Path:
    """Write a multi-label dataset: ``images/<patient>_<k>.png`` and ``labels.csv`` (path, findings, patient_id).

    Findings are :data:`MULTILABEL_FINDINGS`; a patient has each one with its ``prevalence`` and each of
    the patient's 1..``max_images`` images shows it with probability 0.85, so images of one patient are
    correlated as in real follow-up series. Returns the path of ``labels.csv``.
    """
    import csv

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        has = rng.random(len(prevalence)) < np.asarray(prevalence)
        for k in range(int(rng.integers(1, max_images + 1))):
            shown = tuple(i for i in range(len(prevalence)) if has[i] and rng.random() < 0.85)
            name = f"images/p{p:05d}_{k:03d}.png"
            Image.fromarray(synthetic_cxr(rng, size, pattern=tuple(i + 1 for i in shown), signal=signal)).save(root / name)
            rows.append({"path": name, "findings": "|".join(MULTILABEL_FINDINGS[i] for i in shown) or "No Finding", "patient_id": f"p{p:05d}"})
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "findings", "patient_id"])
        w.writeheader()
        w.writerows(rows)
    return root / "labels.csv"


def make_synthetic_site(
    root: str | Path, n_per_class: int = 40, size: int = 64, seed: int = 0, classes: tuple[str, str] = ("healthy", "tb"),
    exposure: tuple[float, float] = (0.0, 0.0), signal: float = 1.0,
) -> Path:
    """One hospital's images as ``<root>/<class>/``: ``exposure`` adds a brightness offset (0-1 units) per class,
    the way a site's scanner or a class's referral pathway can differ, so shortcut tests can plant one."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for ci, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for k in range(n_per_class):
            img = synthetic_cxr(rng, size, pattern=min(ci, 1), signal=signal).astype(np.float32) + 255 * exposure[ci]
            Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8)).save(root / cls / f"{root.name}_{cls}_{k:04d}.png")
    return root


_DEMO_FILE = re.compile(r"(train|test)/(healthy|tb)/\2_\d{4,}\.png")


def is_demo_dataset(root: str | Path) -> bool:
    """Whether ``root`` holds only what ``cxrkit demo`` writes there (``{train,test}/{healthy,tb}/<class>_NNNN.png``), so
    that a later demo may replace it: a user's own images in that folder are never deleted."""
    root = Path(root)
    if root.is_symlink() or not root.is_dir():
        return False
    for path in root.rglob("*"):
        if path.is_symlink():
            return False
        rel = path.relative_to(root).as_posix()
        if path.is_dir():
            if not re.fullmatch(r"(train|test)(/(healthy|tb))?", rel):
                return False
        elif not _DEMO_FILE.fullmatch(rel):
            return False
    return True

