"""The one preprocessing pipeline used by training, evaluation and prediction alike.

file -> grayscale uint8 square (:func:`cxrkit.data.decode.load_grayscale`) -> float in [0, 1]
-> (training only: augmentation) -> ``(x - mean) / std`` with the training split's mean and std.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxrkit.data.decode import MAX_PIXELS, load_grayscale
from cxrkit.data.spec import ImageSpec


@dataclass(frozen=True)
class Preprocessing(ImageSpec):
    """The run's :class:`~cxrkit.data.spec.ImageSpec` with the operations that apply it: decoding and tensor normalisation."""

    def load(self, source: str | Path | bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
        """Decode one file (path or bytes) to a uint8 ``image_size`` x ``image_size`` array, with the run's cropping and intensity
        normalisation; a blank or tiny image is an :class:`~cxrkit.data.errors.UnusableImageError`."""
        return load_grayscale(source, self.image_size, self.aspect, self.intensity, self.crop_border, max_pixels)

    @staticmethod
    def to_unit(batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W) -> float32 (B, 1, H, W) in [0, 1]."""
        # always a fresh float copy: the caller's array may be read-only (a memory map) and must never be scaled in place
        t = torch.from_numpy(np.array(batch, dtype=np.float32)) if isinstance(batch, np.ndarray) else batch.to(torch.float32, copy=True)
        return t.unsqueeze(1).div_(255.0)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Standardise a [0, 1] batch with the training mean and std."""
        return (x - self.mean) / self.std

    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        """uint8 (B, H, W) -> the normalised float tensor a model takes."""
        return self.normalize(self.to_unit(batch))


def intensity_stats(images: np.ndarray, index: np.ndarray, chunk: int = 512) -> tuple[float, float]:
    """Mean and standard deviation (in [0, 1] units) of the images at ``index``, read in chunks."""
    total = total_sq = 0.0
    count = 0
    for i in range(0, len(index), chunk):
        block = np.asarray(images[np.sort(index[i : i + chunk])], dtype=np.float64) / 255.0
        total += block.sum()
        total_sq += np.square(block).sum()
        count += block.size
    mean = total / count
    std = float(np.sqrt(max(total_sq / count - mean * mean, 1e-12)))
    return float(mean), max(std, 1e-3)
