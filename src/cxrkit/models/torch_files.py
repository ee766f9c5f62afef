"""Reading torch files safely: tensors and plain containers only, never arbitrary pickled code; and
telling weights that hold NaN or infinite values.

Its own module, below everything else in ``cxrkit.models``, so that the model definitions, pretrained
weights and checkpoints can all use it without importing each other."""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import torch


def load_weights_only(path: str | Path) -> object:
    """``torch.load(weights_only=True)`` on the CPU: tensors and plain containers only, arbitrary pickle refused."""
    with warnings.catch_warnings():  # a file pickled with another protocol is still read safely: no warning for the user
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return torch.load(path, map_location="cpu", weights_only=True)


def refusal_reason(exc: BaseException) -> str:
    """Why :func:`load_weights_only` could not read a file, in a few words: never torch's own advice to load it unsafely."""
    text = " ".join(str(exc).split())
    unsafe = re.search(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) ([\w.]+)", text)
    if unsafe:
        return f"it holds a pickled {unsafe.group(1)} object, which could run code when loaded, and only tensors are read"
    if isinstance(exc, pickle.UnpicklingError):
        return "it holds pickled objects other than tensors, which could run code when loaded, and only tensors are read"
    if isinstance(exc, EOFError) or not text:
        return "the file is empty or cut short"
    if "central directory" in text or "zip archive" in text:
        return "the file is damaged or cut short (not a complete torch archive)"
    return f"not a torch weights file ({type(exc).__name__}: {text[:100]})"


def nonfinite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors in a state dict that hold a NaN or an infinite value."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
