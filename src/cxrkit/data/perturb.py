"""Controlled changes to decoded images for the stress test: exposure, contrast, gamma, masks, resampling.

Each perturbation maps uint8 images (N, S, S), as a run decodes them, to uint8 images of the same
shape. Some touch only what a radiologist would ignore (exposure, the film border, corner markers),
so a model reading anatomy should barely change under them; a large change means a shortcut.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def restandardise(images: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Give every image the same mean and standard deviation (0-1 units): exposure neutralised per image."""
    x = np.asarray(images, dtype=np.float32) / 255.0
    m = x.mean(axis=(1, 2), keepdims=True)
    s = np.maximum(x.std(axis=(1, 2), keepdims=True), 1e-3)
    return _to_uint8((x - m) / s * std + mean)


def brightness(images: np.ndarray, delta: float) -> np.ndarray:
    """Add ``delta`` (0-1 units) to every pixel."""
    return _to_uint8(np.asarray(images, dtype=np.float32) / 255.0 + delta)


def contrast(images: np.ndarray, factor: float) -> np.ndarray:
    """Scale each image's deviations from its own mean by ``factor``."""
    x = np.asarray(images, dtype=np.float32) / 255.0
    m = x.mean(axis=(1, 2), keepdims=True)
    return _to_uint8((x - m) * factor + m)


def gamma(images: np.ndarray, g: float) -> np.ndarray:
    """Apply the display curve x**g (g < 1 brightens mid-tones, g > 1 darkens them)."""
    return _to_uint8(np.power(np.asarray(images, dtype=np.float32) / 255.0, g))


def mask_border(images: np.ndarray, fraction: float = 0.08) -> np.ndarray:
    """Set an outer band of ``fraction`` of the side to black: collimation, film edge, burned-in text."""
    out = np.array(images, copy=True)
    b = max(1, int(round(out.shape[1] * fraction)))
    out[:, :b], out[:, -b:], out[:, :, :b], out[:, :, -b:] = 0, 0, 0, 0
    return out


def mask_corners(images: np.ndarray, fraction: float = 0.2) -> np.ndarray:
    """Set the four corner squares (side ``fraction`` of the image) to black: where markers and labels sit."""
    out = np.array(images, copy=True)
    c = max(1, int(round(out.shape[1] * fraction)))
    for rows in (slice(0, c), slice(-c, None)):
        for cols in (slice(0, c), slice(-c, None)):
            out[:, rows, cols] = 0
    return out


def resample(images: np.ndarray, factor: float) -> np.ndarray:
    """Resize by ``factor`` and back (bilinear, antialiased): < 1 loses detail, as a low-resolution scanner would."""
    x = torch.as_tensor(np.asarray(images, dtype=np.float32)).unsqueeze(1)
    size = x.shape[-1]
    small = max(4, int(round(size * factor)))
    y = F.interpolate(x, size=(small, small), mode="bilinear", antialias=factor < 1, align_corners=False)
    y = F.interpolate(y, size=(size, size), mode="bilinear", antialias=factor > 1, align_corners=False)
    return np.clip(np.rint(y[:, 0].numpy()), 0, 255).astype(np.uint8)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Perturbation:
    """One named change; ``anatomy`` says whether it alters the lungs' content (so a change in AUC is expected)."""

    name: str
    description: str
    apply: Callable[[np.ndarray], np.ndarray]
    anatomy: bool = False


def standard_perturbations(reference_mean: float, reference_std: float) -> list[Perturbation]:
    """The stress test's changes; ``reference_*`` are the training images' typical per-image mean and std."""
    return [
        Perturbation("restandardised", f"each image re-standardised to the training mean {reference_mean:.2f} / std {reference_std:.2f}",
                     lambda x: restandardise(x, reference_mean, reference_std)),
        Perturbation("brighter", "brightness +0.1", lambda x: brightness(x, 0.1)),
        Perturbation("darker", "brightness -0.1", lambda x: brightness(x, -0.1)),
        Perturbation("more contrast", "contrast x1.3", lambda x: contrast(x, 1.3)),
        Perturbation("less contrast", "contrast x0.7", lambda x: contrast(x, 0.7)),
        Perturbation("gamma 0.7", "display curve x^0.7", lambda x: gamma(x, 0.7)),
        Perturbation("gamma 1.4", "display curve x^1.4", lambda x: gamma(x, 1.4)),
        Perturbation("border masked", "outer 8% band set to black", mask_border),
        Perturbation("corners masked", "corner squares (20% of the side) set to black", mask_corners),
        Perturbation("down-sampled", "resized to half and back", lambda x: resample(x, 0.5), anatomy=True),
        Perturbation("up-sampled", "resized to double and back", lambda x: resample(x, 2.0)),
    ]
