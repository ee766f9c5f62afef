"""Per-file properties read once and cached: format, mode, bit depth, size, intensity, border and corner
statistics, a byte hash and a perceptual hash.

The perceptual hash is ``imagehash.phash`` (DCT of a 32 x 32 grey thumbnail, Zauner 2010): it survives
resizing and re-encoding, so copies saved at another size or JPEG quality still match.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from cxrkit.data.decode import MAX_PIXELS, UnusableImageError, check_usable, orientation, to_grayscale_array, upright
from cxrkit.data.dicom import read_dicom
from cxrkit.data.magic import is_dicom_bytes
from cxrkit.data.sources import cache_root, file_stamp

ImageFile.LOAD_TRUNCATED_IMAGES = False
FEATURES_VERSION = 5  # 2: images turned by their EXIF orientation; 3: blank and tiny images are errors, as training refuses them; 4: DICOM read;
# 5: nearly blank and multi-page images are errors
THUMB = 128  # statistics are computed on a thumbnail: properties of the file, not fine anatomy
HASH_SIZE = 16  # 256-bit pHash: 64 bits leave unrelated chest films (all alike in layout) too close together
CORNER = 0.15
BIT_DEPTH = {"1": 1, "L": 8, "P": 8, "RGB": 8, "RGBA": 8, "LA": 8, "CMYK": 8, "YCbCr": 8, "I;16": 16, "I;16B": 16, "I;16L": 16, "I": 32, "F": 32}


def _corner_slices(s: int) -> list[tuple[slice, slice]]:
    c = max(1, round(CORNER * s))
    return [(slice(0, c), slice(0, c)), (slice(0, c), slice(s - c, s)), (slice(s - c, s), slice(0, c)), (slice(s - c, s), slice(s - c, s))]


def image_record(path: str | Path) -> dict:
    """Properties of one file; ``error`` holds the reason when it cannot be decoded."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:  # a link to nothing, or a file made unreadable: one file's problem
        return {"bytes": 0, "sha1": None, "error": f"cannot read: {exc.strerror or exc}"}
    rec: dict = {"bytes": len(data), "sha1": hashlib.sha1(data).hexdigest(), "error": None}
    try:
        if is_dicom_bytes(data[:132]):
            gray = _dicom_gray(data, rec)
        else:
            gray = _pillow_gray(path, rec)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        rec["error"] = f"cannot decode: {exc}"
        return rec
    try:
        check_usable(gray)
    except UnusableImageError as exc:  # decodes, but training leaves it out: the audit must not count it as a usable image
        rec["error"], rec["unusable"] = f"{exc} (left out of training and evaluation)", True
        return rec
    return _statistics(gray, rec)


def _dicom_gray(data: bytes, rec: dict) -> np.ndarray:
    """A DICOM file read as training reads it (Pillow cannot open one: an all-DICOM dataset had no usable record at all)."""
    import pydicom

    gray = read_dicom(data, MAX_PIXELS)
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    bits = int(ds.get("BitsStored", 8) or 8)
    rgb = str(ds.get("PhotometricInterpretation", "")).upper() == "RGB"
    rec.update(format="DICOM", mode="RGB" if rgb else ("I;16" if bits > 8 else "L"), width=int(gray.shape[1]), height=int(gray.shape[0]),
               channels=3 if rgb else 1, bit_depth=bits, channel_difference=0.0)
    return gray


def _pillow_gray(path: Path, rec: dict) -> np.ndarray:
    """A PNG, JPEG, BMP or TIFF read at thumbnail scale, upright; its format, mode, size and colour spread go into ``rec``."""
    with Image.open(path) as img:
        rec.update(format=img.format or path.suffix.lstrip(".").upper(), mode=img.mode, width=img.width, height=img.height,
                   channels=len(img.getbands()), bit_depth=BIT_DEPTH.get(img.mode, 8))
        if img.width * img.height > MAX_PIXELS:
            raise ValueError(f"image too large ({img.width}x{img.height} pixels)")
        if getattr(img, "n_frames", 1) > 1:  # as training reads it: refused, not page 1
            raise ValueError(f"{img.format} file holds {img.n_frames} images (pages or frames), not one radiograph")
        turn = orientation(img)
        img.draft(img.mode, (2 * THUMB, 2 * THUMB))  # JPEG: decode at reduced scale, several times faster
        img.load()
        img = upright(img, turn)  # as the model reads it: corners and sizes of the image as shown
        rec.update(width=img.width, height=img.height)
        colour = img.mode in ("RGB", "RGBA")
        if colour:
            rgb = np.asarray(img.convert("RGB").resize((THUMB, THUMB)), dtype=np.int16)
            rec["channel_difference"] = float(np.abs(rgb - rgb.mean(axis=2, keepdims=True)).mean() / 255)
        else:
            rec["channel_difference"] = 0.0
        return to_grayscale_array(img)


def _statistics(gray: np.ndarray, rec: dict) -> dict:
    """``rec`` with the perceptual hash and the intensity, border and corner statistics of a decoded image."""
    import imagehash

    pil = Image.fromarray(gray)
    rec["phash"] = str(imagehash.phash(pil, hash_size=HASH_SIZE))
    g = np.asarray(pil.resize((THUMB, THUMB), Image.Resampling.BILINEAR), dtype=np.float64) / 255
    rec["mean"], rec["std"] = float(g.mean()), float(g.std())
    band = max(1, THUMB // 20)
    border = np.concatenate([g[:band].ravel(), g[-band:].ravel(), g[:, :band].ravel(), g[:, -band:].ravel()])
    rec["border_mean"], rec["border_std"] = float(border.mean()), float(border.std())
    gy, gx = np.gradient(g)
    edges = np.hypot(gx, gy) > 0.15
    corners = _corner_slices(THUMB)
    means = [float(g[c].mean()) for c in corners]
    rec["corner_means"] = means
    rec["corner_stds"] = [float(g[c].std()) for c in corners]
    # Text and laterality markers: small, bright, sharp-edged marks in the corners.
    rec["corner_edges"] = [float(edges[c].mean()) for c in corners]
    rec["corner_bright"] = [float((g[c] > 0.9).mean()) for c in corners]
    return rec


def _records(paths: list[str]) -> list[dict]:
    return [image_record(p) for p in paths]


def _stamp(path: Path) -> str:
    return f"{os.path.realpath(path)}|{file_stamp(path)}"  # realpath: Path.resolve raises on a link loop


def read_cache_json(path: Path) -> dict | None:
    """A JSON cache file of the audit, or None when it is missing or damaged (then removed with a note: it is derived data,
    and a truncated one stopped every audit and training with the JSON parser's message)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
        problem = f"a {type(data).__name__}, not an object"
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        problem = " ".join(str(exc).split())[:120]
    print(f"note: the audit cache {path} is damaged ({problem}); computing it again", file=sys.stderr, flush=True)
    path.unlink(missing_ok=True)
    return None


def read_records(paths: list[Path], cache_dir: Path | None = None, workers: int | None = None, progress: bool = True) -> tuple[list[dict], dict]:
    """Records for ``paths`` in order, reusing those cached for unchanged files; returns (records, timing info)."""
    import time

    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    store = (cache_dir or cache_root()) / "audit" / f"features-v{FEATURES_VERSION}.json"
    cache: dict = read_cache_json(store) or {}
    stamps = [_stamp(p) for p in paths]
    todo = [i for i, s in enumerate(stamps) if s not in cache]
    if todo:
        chunks = [todo[i : i + 64] for i in range(0, len(todo), 64)]
        n = workers if workers is not None else min(2, os.cpu_count() or 1)
        bar = tqdm(total=len(todo), desc="auditing images", unit="img", disable=not progress or None, leave=False)
        pool = ProcessPoolExecutor(n) if n > 1 and len(todo) >= 128 else None
        try:
            results = pool.map(_records, [[str(paths[i]) for i in c] for c in chunks]) if pool else map(_records, [[str(paths[i]) for i in c] for c in chunks])
            for c, recs in zip(chunks, results):
                for i, r in zip(c, recs):
                    cache[stamps[i]] = r
                bar.update(len(c))
        finally:
            bar.close()
            if pool:
                pool.shutdown()
        store.parent.mkdir(parents=True, exist_ok=True)
        from cxrkit.record import atomic_write_text

        atomic_write_text(store, json.dumps(cache))
    return [cache[s] for s in stamps], {"files": len(paths), "computed": len(todo), "seconds": time.perf_counter() - t0}
