"""Heat maps blended over the radiograph, as RGB arrays or PNG bytes (matplotlib colour map, Pillow encoding)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Perceptually uniform (not jet): equal steps of heat look like equal steps of colour, also to colour-blind readers.
DEFAULT_CMAP = "magma"


def overlay_rgb(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45, cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """Blend a heat map (S, S) in [0, 1] over a uint8 grey image (S, S); returns uint8 RGB (S, S, 3).

    Opacity grows with the heat (``alpha`` at the peak), so cold regions show the radiograph unchanged.
    """
    import matplotlib

    image, heat = np.asarray(image), np.asarray(heat, dtype=np.float32)
    if image.ndim != 2 or heat.shape != image.shape:
        raise ValueError(f"image must be (S, S) and heat the same shape; got {image.shape} and {heat.shape}")
    heat = np.nan_to_num(heat).clip(0, 1)
    colours = matplotlib.colormaps[cmap](heat)[..., :3]
    grey = np.repeat(image.astype(np.float32)[..., None] / 255.0, 3, axis=2)
    a = (alpha * heat)[..., None]
    return np.round(255 * ((1 - a) * grey + a * colours)).astype(np.uint8)


def overlay_png(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45, cmap: str = DEFAULT_CMAP) -> bytes:
    """PNG bytes of :func:`overlay_rgb`."""
    buf = io.BytesIO()
    Image.fromarray(overlay_rgb(image, heat, alpha, cmap), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()
