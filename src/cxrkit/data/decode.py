"""Decode any supported image file into one square single-channel uint8 array.

Every path in cxrkit (training cache, evaluation, prediction) goes through :func:`load_grayscale`,
so a radiograph is preprocessed the same way wherever it is read.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile

from cxrkit.data.dicom import read_dicom
from cxrkit.data.errors import ImageDecodeError, ImageTooLargeError, UnsupportedImageError, UnusableImageError
from cxrkit.data.intensity import crop_borders, normalize_intensity
from cxrkit.data.magic import is_dicom_bytes, sniff_format
from cxrkit.data.stretch import STRETCH_ROWS, stretch_to_uint8

# A damaged EXIF block is the file's problem, reported in its one line of error (or ignored where the pixels are fine).
warnings.filterwarnings("ignore", message="Corrupt EXIF data", category=UserWarning)
# Truncated files must fail loudly so they can be skipped and listed, not half-decoded into grey bars.
ImageFile.LOAD_TRUNCATED_IMAGES = False

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jfif", ".jpe", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")  # .jfif: Windows saves JPEGs so
# Pillow is asked for these formats only: the file's content decides, and formats with risky or
# external decoders (EPS through Ghostscript, for one) are never tried.
PIL_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")
ASPECT_MODES = ("pad", "squash")
# Larger than any radiograph (a 4k x 5k detector is 20 MP); guards against decompression bombs.
MAX_PIXELS = 80_000_000
# JPEGs above this are decoded at a reduced DCT scale when the caller's target size allows (a 40 MP colour
# JPEG is 160 MB decoded in full); below it every JPEG decodes in full, so the usual datasets are unaffected.
DRAFT_MIN_PIXELS = 16_000_000
# Drafted images keep a long side of at least this many times the target size, more than fit_square's
# reducing_gap (3) needs, so the resized result is a faithful downsample.
DRAFT_MARGIN = 4


# Magic numbers of the formats decoded; DICOM's "DICM" sits at byte 128.
def is_image_file(path: Path) -> bool:
    """Tell whether a path is a supported image by extension, or by content when it has no extension, and not hidden."""
    name = path.name
    if name.startswith("."):
        return False
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return True
    # PACS exports name DICOM files without an extension ("IM0001") or by their UID ("1.2.840.113619.2.55.3"),
    # which would otherwise be skipped without a word; the content decides, as it does for a single file.
    if path.suffix and not path.suffix[1:].isdigit():
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return sniff_format(head) is not None


# EXIF orientation -> the transpose that shows the image as viewers do (TIFF/EXIF tag 274).
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def orientation(img: Image.Image) -> int:
    """The turn :func:`upright` still has to make to an opened (not yet loaded) image: its EXIF orientation, 1 for none.
    Loads a PNG (its EXIF may follow the pixels); other formats' EXIF is read from the header, before any ``draft``."""
    if img.format == "PNG":
        # Reading a PNG's EXIF loads its pixels. A damaged pixel stream failed inside getexif, was taken below for a bad EXIF
        # block, and the next load() returned the part-filled image: a half-black radiograph classified without a word.
        # (A TIFF must not be loaded first: loading drops the orientation tag the check below needs.)
        img.load()
    try:
        with warnings.catch_warnings():  # "Corrupt EXIF data" would print above the one line the file gets
            warnings.simplefilter("ignore")
            value = img.getexif().get(0x0112, 1)
    except Exception:  # a malformed EXIF block: the pixels as stored, as before
        return 1
    if value not in _ORIENTATION:
        return 1
    if img.format == "TIFF":
        # Pillow's TIFF reader turns colour images itself, but returns scrambled pixels for a grayscale one with the tag
        # (Pillow 13: rows of the RGBA-oriented read laid out as one channel), which would be a plausible-looking wrong image.
        if img.mode not in ("RGB", "RGBA"):
            raise UnsupportedImageError(f"a grayscale TIFF with an orientation tag ({value}) cannot be decoded faithfully; "
                                        "save it without the tag, or as PNG")
        return 1
    return value


def upright(img: Image.Image, turn: int) -> Image.Image:
    """The image as every viewer shows it, given its :func:`orientation`: phone photos of films and some exports are stored
    on their side with a tag saying how to turn them (read as stored, the model saw a portrait film sideways)."""
    return img if turn not in _ORIENTATION else img.transpose(_ORIENTATION[turn])


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
    # Wide modes: I;16, I;16B, I;16L, I, F and friends, read in row blocks from Pillow's own buffer.
    w, h = img.size

    def blocks():
        for y in range(0, h, STRETCH_ROWS):
            block = np.asarray(img.crop((0, y, w, min(h, y + STRETCH_ROWS))), dtype=np.float64)
            yield y, block[..., :3].mean(axis=2) if block.ndim == 3 else block

    return stretch_to_uint8(blocks, (h, w))


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


# What an image file's name claims it holds, for the error when its bytes are something else.
_IMAGE_SUFFIXES = {".png": "a PNG image", ".jpg": "a JPEG image", ".jpeg": "a JPEG image", ".jfif": "a JPEG image", ".jpe": "a JPEG image", ".bmp": "a BMP image",
                   ".tif": "a TIFF image", ".tiff": "a TIFF image", ".dcm": "a DICOM Part 10 file", ".dicom": "a DICOM Part 10 file"}


def read_grayscale(source: str | Path | bytes | BinaryIO, max_pixels: int = MAX_PIXELS, min_side: int | None = None) -> np.ndarray:
    """Decode a file (path, its bytes or an open binary file, e.g. a spooled upload) at full resolution into a 2-D uint8 array.

    The content decides the reader, not the name: DICOM Part 10 files (``DICM`` at byte 128) go
    through :func:`cxrkit.data.dicom.read_dicom`, everything else through Pillow restricted to
    :data:`PIL_FORMATS`. The pixel count is checked from the header, before decoding. With ``min_side``,
    a JPEG of more than :data:`DRAFT_MIN_PIXELS` is decoded in grayscale at the smallest DCT scale
    (1/2, 1/4, 1/8) whose long side is still at least ``min_side`` (Pillow's ``draft``).
    """
    try:
        if isinstance(source, bytes):
            head = source[:132]
        elif hasattr(source, "read"):
            start = source.tell()
            head = source.read(132)
            source.seek(start)
        else:
            with open(source, "rb") as f:
                head = f.read(132)
    except FileNotFoundError as exc:
        raise ImageDecodeError("file not found") from exc
    except OSError as exc:
        raise ImageDecodeError(f"cannot read file: {exc}") from exc
    if not head:
        raise ImageDecodeError("file is empty")
    if is_dicom_bytes(head):
        return read_dicom(source, max_pixels)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=PIL_FORMATS) as img:  # type: ignore[arg-type]
            if img.width * img.height > max_pixels:
                raise ImageTooLargeError(f"image too large ({img.width}x{img.height} pixels; the limit is {max_pixels:,})")
            if min(img.width, img.height) < MIN_SIDE:  # refused from the header: a 1 x 39,000,000 PNG took 7 s to decode first
                raise UnusableImageError(f"image is {img.width}x{img.height} pixels: too small to be a radiograph "
                                         f"(each side needs at least {MIN_SIDE})")
            if getattr(img, "n_frames", 1) > 1:  # page 1 was classified without a word (a multi-frame DICOM is refused)
                raise UnsupportedImageError(f"{img.format} file holds {img.n_frames} images (pages or frames), not one radiograph; "
                                            "save the one to classify as its own file")
            turn = orientation(img)
            if min_side and img.format == "JPEG" and img.width * img.height > DRAFT_MIN_PIXELS:
                f = min_side / max(img.width, img.height)
                img.draft("L", (max(1, int(np.ceil(img.width * f))), max(1, int(np.ceil(img.height * f)))))
            img.load()
            return to_grayscale_array(upright(img, turn))
    except ImageDecodeError:
        raise
    except Image.UnidentifiedImageError as exc:
        started = sniff_format(head, strong_only=True)
        if started:  # a PNG with a damaged header chunk is a damaged PNG (422), not "not an image" (415)
            raise ImageDecodeError(f"cannot decode image: it starts as a {started.upper()} but its header is damaged") from exc
        claimed = _IMAGE_SUFFIXES.get(Path(source).suffix.lower()) if isinstance(source, (str, Path)) else None
        if claimed:  # "not a supported image" alone read as if PNG itself were unsupported
            raise UnsupportedImageError(f"not a supported image: named {Path(source).suffix}, but the contents are not {claimed} "
                                        "(a damaged file, or another kind of file renamed)") from exc
        raise UnsupportedImageError("not a supported image (PNG, JPEG, BMP, TIFF or DICOM)") from exc
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow's refusal names the size, and its own limit, not cxrkit's
        size = f"{int(found.group(1)):,} pixels" if found else "decompression bomb guard"
        raise ImageTooLargeError(f"image too large ({size}; the limit is {max_pixels:,})") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"cannot decode image: {exc}") from exc
    except (TypeError, KeyError, IndexError, struct.error, ZeroDivisionError, NotImplementedError) as exc:
        # Pillow's plugins raise these on damaged headers (a TIFF's missing dimensions, an unknown tag type): one file's
        # problem, which stopped a whole predict folder or training cache build as "unexpected TypeError ... a bug in cxrkit".
        raise ImageDecodeError(f"cannot decode image: damaged file ({type(exc).__name__}: {exc})") from exc


# Smaller than any radiograph: a 1x1 or 1x5000 image was resized to the model's input and given a confident diagnosis.
MIN_SIDE = 16
# Fewer grey levels than any radiograph spans: a 0-1 float image cast to uint8 (levels 0 and 1) was given "tb", P = 0.72.
MIN_GREY_RANGE = 8


def check_usable(gray: np.ndarray) -> np.ndarray:
    """``gray`` (a decoded full-resolution image) when a model can read something in it; :class:`UnusableImageError` when it is
    a single grey level (blank, all black) or has a side under :data:`MIN_SIDE` pixels. Training, evaluation and prediction
    all refuse them: a model trained or scored on blank frames is measured on images it would refuse to read."""
    if min(gray.shape[:2]) < MIN_SIDE:
        raise UnusableImageError(f"image is {gray.shape[1]}x{gray.shape[0]} pixels: too small to be a radiograph "
                                 f"(each side needs at least {MIN_SIDE})")
    lo, hi = int(gray.min()), int(gray.max())
    if lo == hi:
        raise UnusableImageError(f"image is blank (every pixel is {lo}): nothing to classify")
    if hi - lo < MIN_GREY_RANGE:
        raise UnusableImageError(f"image is nearly blank (its grey levels span {lo} to {hi} of 0-255): nothing to classify; a 0-1 "
                                 "image converted to 8 bits without scaling by 255 looks like this")
    levels = int(np.count_nonzero(np.bincount(gray.ravel(), minlength=256)))
    if levels < MIN_GREY_RANGE:
        # The same mistake in 16 bits (or a DICOM window a few values wide) is stretched to 0-255 before this check: two levels
        # 0 and 255 passed, and a 0/1 image got "tb", P 0.95.
        raise UnusableImageError(f"image holds only {levels} grey levels: nothing a radiograph shows; a 0-1 image saved as 16 bits "
                                 "without scaling, a mask, or a DICOM window a few values wide looks like this")
    return gray


def load_grayscale(
    source: str | Path | bytes | BinaryIO, size: int, aspect: str = "pad", intensity: str = "none", crop_border: bool = False,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """Read one image file (a path, its bytes or an open binary file) and return it as a ``size`` x ``size`` uint8 grayscale array.

    ``crop_border`` removes uniform outer bands and ``intensity`` normalises the image
    (:mod:`cxrkit.data.intensity`), both at full resolution before resizing (for a JPEG over
    :data:`DRAFT_MIN_PIXELS`, at the reduced scale it was decoded at).

    Raises :class:`ImageDecodeError` with a readable reason for missing, empty, truncated,
    oversized or non-image files, and its :class:`UnusableImageError` for blank or tiny ones (:func:`check_usable`).
    """
    gray = check_usable(read_grayscale(source, max_pixels, min_side=DRAFT_MARGIN * size))
    return prepare_grayscale(gray, size, aspect, intensity, crop_border)


def prepare_grayscale(gray: np.ndarray, size: int, aspect: str = "pad", intensity: str = "none", crop_border: bool = False) -> np.ndarray:
    """A decoded full-resolution 2-D uint8 image -> the ``size`` x ``size`` model input: border crop,
    intensity normalisation, then resizing (the steps after decoding, shared by files and arrays)."""
    if crop_border:
        gray = crop_borders(gray)
    return fit_square(normalize_intensity(gray, intensity), size, aspect)
