"""Reading torch files safely: tensors and plain containers only, never arbitrary pickled code; and
telling weights that hold NaN or infinite values.

Its own module, below everything else in ``cxrkit.models``, so that the model definitions, pretrained
weights and checkpoints can all use it without importing each other."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch


def load_weights_only(path: str | Path) -> object:
    """``torch.load(weights_only=True)`` on the CPU: tensors and plain containers only, arbitrary pickle refused."""
    with warnings.catch_warnings():  # a file pickled with another protocol is still read safely: no warning for the user
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return torch.load(path, map_location="cpu", weights_only=True)


def nonfinite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors in a state dict that hold a NaN or an infinite value."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
