"""Read a DICOM radiograph into the 2-D uint8 array every other cxrkit reader produces.

The display pipeline of DICOM PS3.3 C.11, done with pydicom's own functions: stored values ->
modality LUT or rescale slope/intercept (:func:`pydicom.pixels.apply_modality_lut`) -> VOI LUT or
window centre/width when the file has one (:func:`pydicom.pixels.apply_voi_lut`) -> 0-255, with
MONOCHROME1 (bright = low values) inverted so bone is bright as in MONOCHROME2 and in PNG datasets.
Files without a window are stretched from their own minimum to maximum, as 16-bit PNGs are.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np

from cxrkit.data.errors import ImageDecodeError, ImageTooLargeError, UnsupportedImageError
from cxrkit.data.stretch import STRETCH_ROWS, stretch_to_uint8

# pydicom warns (UserWarning, printed to stderr, often with raw element bytes) about every odd value it reads;
# cxrkit reports a file that cannot be read with one line of its own, so these are not shown.
warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")


def read_dicom(source: str | Path | bytes | BinaryIO, max_pixels: int) -> np.ndarray:
    """Decode the first frame of a DICOM image as a 2-D uint8 array (display orientation, MONOCHROME2); see :func:`_read_dicom`."""
    import struct

    from pydicom.errors import BytesLengthException

    try:
        return _read_dicom(source, max_pixels)
    except ImageDecodeError:
        raise
    except (BytesLengthException, NotImplementedError, struct.error, KeyError, IndexError, TypeError, ValueError, OverflowError) as exc:
        # pydicom parses elements lazily, so a damaged header (an unknown value representation, a length past the end)
        # raises when an element is first read: one file's problem, which stopped a whole predict folder.
        raise ImageDecodeError(f"cannot read DICOM file: damaged header ({type(exc).__name__}: {' '.join(str(exc).split())[:150]})") from exc


def _read_dicom(source: str | Path | bytes | BinaryIO, max_pixels: int) -> np.ndarray:
    """Decode the first frame of a DICOM image as a 2-D uint8 array (display orientation, MONOCHROME2).

    Raises :class:`UnsupportedImageError` for DICOM files without pixel data or with a photometric
    interpretation other than MONOCHROME1/2 or RGB, :class:`ImageTooLargeError` above ``max_pixels``
    (checked from the header, before the pixel data is decoded), and :class:`ImageDecodeError` for
    compressed pixel data no installed decoder handles, or broken files.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    fp = io.BytesIO(source) if isinstance(source, bytes) else source if hasattr(source, "read") else str(source)
    try:
        ds = pydicom.dcmread(fp)
    except (InvalidDicomError, EOFError, OSError) as exc:
        raise ImageDecodeError(f"cannot read DICOM file: {exc}") from exc
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:  # pydicom's own text read as cxrkit's bug
        raise ImageDecodeError(f"cannot read DICOM file: damaged header (pydicom: {type(exc).__name__}: "
                               f"{' '.join(str(exc).split())[:150]})") from exc
    if "PixelData" not in ds:
        kind = getattr(ds, "Modality", None) or getattr(ds, "SOPClassUID", None) or "unknown"
        raise UnsupportedImageError(f"DICOM file has no image (no pixel data; modality/SOP class {kind})")
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB"):
        raise UnsupportedImageError(f"DICOM photometric interpretation {photometric or 'missing'} is not a grayscale radiograph")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * cols == 0:
        raise UnsupportedImageError("DICOM image has no rows or columns")
    if rows * cols > max_pixels:
        raise ImageTooLargeError(f"image too large ({cols}x{rows} pixels; the limit is {max_pixels:,})")
    _check_native_length(ds, rows, cols)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:  # its first frame was classified without a word; a series is not one radiograph
        raise UnsupportedImageError(f"DICOM file holds {frames} frames (a series or a cine, not one radiograph); export the frame to classify")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises RuntimeError/NotImplementedError/ValueError/... depending on the decoder
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax) or "unknown"
        raise ImageDecodeError(f"cannot decode DICOM pixel data (transfer syntax {name}): {exc}") from exc
    if photometric != "RGB" and arr.ndim != 2:
        raise UnsupportedImageError(f"DICOM pixel data has shape {arr.shape}, expected one 2-D frame")

    def blocks():
        # Row blocks keep the float64 display values of a 40 MP image to one block at a time.
        for y in range(0, arr.shape[0], STRETCH_ROWS):
            part = arr[y : y + STRETCH_ROWS]
            if photometric == "RGB":
                yield y, np.asarray(part, dtype=np.float64)[..., :3] @ np.array([0.299, 0.587, 0.114])
            else:
                yield y, np.asarray(apply_voi_lut(apply_modality_lut(part, ds), ds), dtype=np.float64)

    pad = _padding(ds, arr) if photometric != "RGB" else None
    if _display_values(ds, arr):
        # 8-bit values with no rescale and no window are display values already, as in an 8-bit PNG; stretched, the same
        # pixels saved as DICOM and as PNG were two images to the model.
        if photometric == "RGB":
            from PIL import Image

            out = np.asarray(Image.fromarray(np.ascontiguousarray(arr[..., :3]), "RGB").convert("L"))
        else:
            out = np.array(arr, dtype=np.uint8)
            if pad is not None:
                out[pad] = 0
    else:
        try:
            out = stretch_to_uint8(blocks, arr.shape[:2], pad)
        except ImageDecodeError as exc:
            raise ImageDecodeError(f"DICOM {exc}") from exc
    if out.min() == out.max() and arr.min() != arr.max():
        # A rescale slope of 0 or a window outside the stored values turns a real image into one grey level, which was
        # classified like any other image.
        raise ImageDecodeError(f"DICOM display settings (rescale slope {ds.get('RescaleSlope', 1)}, window centre/width "
                               f"{ds.get('WindowCenter', 'none')}/{ds.get('WindowWidth', 'none')}) turn the stored values "
                               f"{arr.min()}-{arr.max()} into one grey level: the header does not describe a viewable image")
    # MONOCHROME1 shows low values white; a Presentation LUT Shape INVERSE asks the same of a MONOCHROME2 image (and is the
    # usual companion of MONOCHROME1, not a second inversion). Ignored, such an image was read as its own negative.
    if photometric == "MONOCHROME1" or str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE":
        out = 255 - out
        if pad is not None:
            out[pad] = 0  # padding is outside the image: black, as viewers show it
    return out


def _display_values(ds, arr: np.ndarray) -> bool:
    """Whether the stored values are shown as they are: unsigned 8-bit, no modality rescale, no VOI window or LUT."""
    if arr.dtype != np.uint8 or int(ds.get("PixelRepresentation", 0) or 0):
        return False
    if float(ds.get("RescaleSlope", 1) or 1) != 1 or float(ds.get("RescaleIntercept", 0) or 0) != 0:
        return False
    return not any(k in ds for k in ("ModalityLUTSequence", "VOILUTSequence", "WindowCenter", "WindowWidth"))


def _padding(ds, arr: np.ndarray) -> np.ndarray | None:
    """Where the stored values are Pixel Padding Value (or within its range to Pixel Padding Range Limit): the area outside
    the exposed image. Stretched with the rest, a pad at 65535 squeezed the anatomy into the top 15 grey levels."""
    value = ds.get("PixelPaddingValue")
    if value is None or not isinstance(value, (int, float)):
        return None
    limit = ds.get("PixelPaddingRangeLimit")
    bits = int(ds.get("BitsStored", 0) or 0)
    if 0 < bits < 32 and not int(ds.get("PixelRepresentation", 0) or 0):  # pydicom keeps the stored bits only: 65535 reads 4095
        value, limit = value & ((1 << bits) - 1), (limit & ((1 << bits) - 1) if isinstance(limit, int) else limit)
    lo, hi = (min(value, limit), max(value, limit)) if isinstance(limit, (int, float)) else (value, value)
    pad = (arr >= lo) & (arr <= hi)
    return pad if pad.any() and not pad.all() else None


def _check_native_length(ds, rows: int, cols: int) -> None:
    """Uncompressed pixel data must be as long as the header says (plus one byte of padding): with more, pydicom read the
    first Rows x Columns values and dropped the rest without a word, so a header with the wrong Rows gave part of the image."""
    data = ds.get("PixelData")
    if not data:  # an empty element: len(None) in pydicom was the one-line error
        raise UnsupportedImageError("DICOM file has no image (its pixel data element is empty)")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        native = syntax is not None and syntax.is_transfer_syntax and not syntax.is_compressed
    except (ValueError, AttributeError):  # an unknown UID: its decoder decides
        native = False
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if not native or bits <= 0:
        return
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    expected = (rows * cols * frames * samples * bits + 7) // 8
    if len(data) > expected + 1:
        raise ImageDecodeError(f"DICOM pixel data holds {len(data):,} bytes, but {cols}x{rows} pixels x {frames} frame(s) x {samples} "
                               f"sample(s) at {bits} bits need {expected:,}: the header does not describe the image")
