"""In-memory images (NumPy arrays, Pillow images) -> the same 2-D uint8 image a decoded file gives.

The Python API accepts arrays; each goes through Pillow's own conversions so that an array and the
file it came from give the same pixels (and so the same probability). Anything that cannot be an image
is a :class:`ValueError` naming what is wrong.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from cxrkit.data.decode import MAX_PIXELS, orientation, to_grayscale_array, upright


def array_to_grayscale(array: np.ndarray, scale: float | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A 2-D (H, W) or 3-D (H, W, 1|3|4) array -> 2-D uint8, as if the image had been saved and decoded.

    - uint8: used as is (colour becomes luminance, alpha is dropped).
    - uint16: a 16-bit radiograph, stretched from its minimum to its maximum like a 16-bit PNG.
    - float: needs ``scale``, the value that means white (1.0 for [0, 1] images, 255 for [0, 255]);
      values must lie in [0, scale]. Without it the meaning of 1.0 is unknown, so it is an error.
      A ``scale`` given with an integer array is refused unless it agrees (255 for uint8).
    """
    if not isinstance(array, np.ndarray):
        raise ValueError(f"expected a NumPy array, got {type(array).__name__}")
    if isinstance(array, np.ma.MaskedArray):  # its mask was ignored: the hidden pixels' values went to the model
        raise ValueError("a masked array's mask would be ignored; pass array.filled(VALUE) to say what the masked pixels are")
    if not array.dtype.isnative:  # big-endian '>u2' (from a raw or FITS reader) is the same image: was "must be ... uint16, got >u2"
        array = array.astype(array.dtype.newbyteorder("="))
    if scale is not None:
        # NumPy scalars (``a.max()``) are numbers too; a bool or text is not.
        if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, float, np.integer, np.floating)) \
                or not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        scale = float(scale)
        # Ignored, it read a uint8 array of 0/1 values with scale=1 as a black image.
        if (array.dtype == np.uint8 and scale != 255) or array.dtype == np.uint16:
            meaning = "0-255" if array.dtype == np.uint8 else "a 16-bit image, stretched from its minimum to its maximum"
            raise ValueError(f"scale={scale:g} applies to float arrays; a {array.dtype} array is read as {meaning}: leave scale "
                             "out, or pass array.astype(np.float32) with scale=")
    a = array
    if a.ndim == 3 and a.shape[2] in (1, 3, 4):
        a = a[..., 0] if a.shape[2] == 1 else a
    elif a.ndim != 2:
        raise ValueError(f"an image array must be (height, width) or (height, width, 1|3|4 channels), got shape {array.shape}")
    h, w = a.shape[:2]
    if h < 1 or w < 1:
        raise ValueError(f"the image array is empty (shape {array.shape})")
    if h * w > max_pixels:
        raise ValueError(f"image too large ({w}x{h} pixels; the limit is {max_pixels:,})")
    kind = a.dtype
    if kind == np.uint8:
        if a.ndim == 2:
            return np.ascontiguousarray(a)
        return to_grayscale_array(Image.fromarray(np.ascontiguousarray(a), "RGB" if a.shape[2] == 3 else "RGBA"))
    if kind == np.uint16:
        if a.ndim == 3:
            raise ValueError("a uint16 array must be single-channel (height, width)")
        return to_grayscale_array(Image.fromarray(np.ascontiguousarray(a)))
    if np.issubdtype(kind, np.floating):
        if scale is None:
            raise ValueError("a float image array needs scale=, the value that means white (1.0 for [0, 1] images, 255 for [0, 255])")
        if not np.isfinite(a).all():
            raise ValueError("the image array contains NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0 or hi > scale * (1 + 1e-6):
            raise ValueError(f"float values must lie in [0, scale={scale:g}], got {lo:g} to {hi:g}; pass the right scale")
        as_uint8 = np.clip(np.rint(a.astype(np.float64) * (255.0 / scale)), 0, 255).astype(np.uint8)
        return array_to_grayscale(as_uint8)
    if kind == np.bool_:  # .astype(np.uint8) of a mask is 0/1: an all but black image
        raise ValueError("image arrays must be uint8, uint16 or float, got bool; for a 0/1 image pass array.astype(np.float32) with scale=1")
    raise ValueError(f"image arrays must be uint8, uint16 or float, got {kind}; convert with .astype(np.uint8) if values are 0-255")


def pil_to_grayscale(image: Image.Image, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A Pillow image (any mode) -> 2-D uint8, by the same conversion decoded files get."""
    if image.width < 1 or image.height < 1:  # Image.new("L", (0, 0)) was classified like a black image
        raise ValueError(f"the image is empty ({image.width}x{image.height} pixels)")
    if image.width * image.height > max_pixels:
        raise ValueError(f"image too large ({image.width}x{image.height} pixels; the limit is {max_pixels:,})")
    try:
        return to_grayscale_array(upright(image, orientation(image)))  # Image.open(path) must give what the path gives
    except (OSError, SyntaxError, EOFError) as exc:  # Image.open of a damaged file loads here: as the same file's bytes are answered
        raise ValueError(f"cannot decode image: {exc}") from exc
