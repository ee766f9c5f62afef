"""How a file becomes a model input, as plain values (no torch): the run record stores it, and
:class:`cxrkit.data.preprocess.Preprocessing` adds the tensor operations on top."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from cxrkit.data.intensity import INTENSITY_MODES

ASPECTS = ("pad", "squash")
MIN_IMAGE_SIZE = 16
# A 1024-px single-channel model input is already far beyond chest X-ray practice (224-512); larger sizes
# are typing errors that would take tens of GB at prediction time.
MAX_IMAGE_SIZE = 1024


def is_finite_number(value: Any) -> bool:
    """A real, finite int or float (not a bool, not NaN or infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class ImageSpec:
    """How a file becomes the model's input: square size, aspect handling, per-image intensity mode,
    border cropping, and the training split's mean and std (in [0, 1] units) used to standardise."""

    image_size: int
    aspect: str
    mean: float
    std: float
    intensity: str = "none"
    crop_border: bool = False

    def problems(self) -> list[str]:
        """What is wrong with these values, as ``key: message`` strings (empty when valid)."""
        out = []
        if not isinstance(self.image_size, int) or isinstance(self.image_size, bool) or not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE:
            out.append(f"image_size must be a whole number from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}, got {self.image_size!r}")
        if self.aspect not in ASPECTS:
            out.append(f"aspect must be one of {', '.join(ASPECTS)}, got {self.aspect!r}")
        if self.intensity not in INTENSITY_MODES:
            out.append(f"intensity must be one of {', '.join(INTENSITY_MODES)}, got {self.intensity!r}")
        if not isinstance(self.crop_border, bool):
            out.append(f"crop_border must be true or false, got {self.crop_border!r}")
        if not is_finite_number(self.mean) or not 0 <= self.mean <= 1:
            out.append(f"mean must be a finite number in [0, 1], got {self.mean!r}")
        if not is_finite_number(self.std) or not 0 < self.std <= 1:
            out.append(f"std must be a finite number in (0, 1], got {self.std!r}")
        return out

    def to_dict(self) -> dict:
        """Plain-dict form for JSON."""
        return asdict(self)
