"""Decode any supported image file into one square single-channel uint8 array.

Every path in cxrkit (training cache, evaluation, prediction) goes through :func:`load_grayscale`,
so a radiograph is preprocessed the same way wherever it is read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from cxrkit.data.intensity import crop_borders, normalize_intensity

# Truncated files must fail loudly so they can be skipped and listed, not half-decoded into grey bars.
ImageFile.LOAD_TRUNCATED_IMAGES = False

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
ASPECT_MODES = ("pad", "squash")
# Larger than any radiograph (a 4k x 5k detector is 20 MP); guards against decompression bombs.
MAX_PIXELS = 80_000_000


class ImageDecodeError(ValueError):
    """Raised when a file cannot be decoded as an image."""


def is_image_file(path: Path) -> bool:
    """Tell whether a path has a supported image extension and is not a hidden/metadata file."""
    name = path.name
    return not name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def to_grayscale_array(img: Image.Image) -> np.ndarray:
    """Convert a Pillow image of any mode (L, RGB, RGBA, P, I;16, I, F, 1) to a 2-D uint8 array.

    8-bit images keep their values. 16-bit, 32-bit and float images are stretched from their own
    minimum to maximum, because the bit depth actually used (10, 12, 14 or 16 bits) is not recorded
    reliably in PNG/TIFF and dividing by 65535 would leave most such radiographs nearly black.
    Colour images become luminance (ITU-R 601-2); alpha is dropped.
    """
    mode = img.mode
    if mode in ("L", "1", "P", "RGB", "RGBA", "LA", "CMYK", "YCbCr", "PA", "RGBX", "LAB", "HSV"):
        return np.asarray(img.convert("L"), dtype=np.uint8)
    # Wide modes: I;16, I;16B, I;16L, I, F and friends.
    arr = np.asarray(img, dtype=np.float64)
    if arr.ndim == 3:
        arr = arr[..., :3].mean(axis=2)
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ImageDecodeError("image contains non-finite values")
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def fit_square(gray: np.ndarray, size: int, aspect: str = "pad") -> np.ndarray:
    """Resize a 2-D uint8 image to ``size`` x ``size``.

    ``pad`` (default) keeps the aspect ratio and centres the image on a black square (letterbox), so
    anatomy keeps its proportions (the cardiothoracic ratio is a finding). ``squash`` stretches the
    image to fill the square, which is what most published datasets already did before release.
    """
    if aspect not in ASPECT_MODES:
        raise ValueError(f"aspect must be one of {ASPECT_MODES}, got {aspect!r}")
    img = Image.fromarray(gray, mode="L")
    h, w = gray.shape
    if aspect == "squash" or h == w:
        return np.array(img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0), dtype=np.uint8)
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    small = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=3.0)
    canvas = Image.new("L", (size, size), 0)
    canvas.paste(small, ((size - nw) // 2, (size - nh) // 2))
    return np.array(canvas, dtype=np.uint8)


def load_grayscale(path: str | Path, size: int, aspect: str = "pad", intensity: str = "none", crop_border: bool = False) -> np.ndarray:
    """Read one image file and return it as a ``size`` x ``size`` uint8 grayscale array.

    ``crop_border`` removes uniform outer bands and ``intensity`` normalises the image
    (:mod:`cxrkit.data.intensity`), both at full resolution before resizing.

    Raises :class:`ImageDecodeError` with a readable reason for missing, empty, truncated,
    oversized or non-image files.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ImageDecodeError(f"image too large ({img.width}x{img.height} pixels)")
            img.load()
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            gray = to_grayscale_array(img)
    except ImageDecodeError:
        raise
    except FileNotFoundError as exc:
        raise ImageDecodeError("file not found") from exc
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError("image too large (decompression bomb guard)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"cannot decode image: {exc}") from exc
    if crop_border:
        gray = crop_borders(gray)
    return fit_square(normalize_intensity(gray, intensity), size, aspect)
