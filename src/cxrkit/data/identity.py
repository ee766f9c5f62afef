"""Which images are the same picture: a short hash of the decoded pixels.

Hashed after decoding and resizing to a run's size, so a copy of a training image that was renamed, moved to
another folder or zipped is recognised; a copy re-encoded with loss (JPEG at another quality) is not. A run keeps
the hashes of its images in ``splits.csv``, and ``cxrkit evaluate`` on other data counts the images it already saw.
"""

from __future__ import annotations

import hashlib

import numpy as np

CHUNK = 512  # images read from a memory map at a time


def pixel_hash(image: np.ndarray) -> str:
    """16 hex digits that identify an image's decoded pixels (and its shape)."""
    image = np.ascontiguousarray(image)
    h = hashlib.blake2b(digest_size=8)
    h.update(str(image.shape).encode())
    h.update(image.tobytes())
    return h.hexdigest()


def pixel_hashes(images: np.ndarray, chunk: int = CHUNK) -> list[str]:
    """:func:`pixel_hash` of every image of an (N, H, W) array or memory map, reading ``chunk`` images at a time."""
    out: list[str] = []
    for start in range(0, len(images), chunk):
        out += [pixel_hash(im) for im in np.asarray(images[start : start + chunk])]
    return out
