"""Stretch a wide (16-bit, 32-bit, float) image to uint8 from its own minimum to maximum, a block of rows at a time.

Shared by the Pillow and the DICOM readers. Working in row blocks means a 16-bit 6000 x 6000 image never
exists as one float64 array (288 MB, and as much again for each temporary of the formula).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from cxrkit.data.errors import ImageDecodeError

STRETCH_ROWS = 256


def stretch_to_uint8(blocks: Callable[[], Iterator[tuple[int, np.ndarray]]], shape: tuple[int, int],
                     ignore: np.ndarray | None = None) -> np.ndarray:
    """Stretch an image given as row blocks (a callable yielding ``(first_row, float block)``) from its minimum to maximum into uint8.

    Two passes over the blocks (minimum and maximum, then the mapping), so memory is one block of float64
    plus the uint8 result; the values are those of the whole-array formula. Pixels where ``ignore`` (a boolean array of
    ``shape``) is true take no part in the minimum and maximum, and come out 0.
    """
    lo, hi = np.inf, -np.inf
    for y, block in blocks():
        kept = block if ignore is None else block[~ignore[y : y + len(block)]]
        if kept.size == 0:
            continue
        # min/max, not nanmin/nanmax: one NaN pixel would otherwise pass, and the uint8 cast makes it 0 (black) without a word.
        b_lo, b_hi = float(np.min(kept)), float(np.max(kept))
        if not np.isfinite(b_lo) or not np.isfinite(b_hi):
            raise ImageDecodeError("image contains non-finite values (NaN or infinity)")
        lo, hi = min(lo, b_lo), max(hi, b_hi)
    out = np.zeros(shape, dtype=np.uint8)
    if hi <= lo:
        return out
    for y, block in blocks():
        part = np.round((block - lo) * (255.0 / (hi - lo)))
        if ignore is not None:
            part = np.where(ignore[y : y + len(block)], 0, part)
        out[y : y + len(block)] = part
    return out
