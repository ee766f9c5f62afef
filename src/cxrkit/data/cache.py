"""Preprocessing cache: decode and resize every image once into a uint8 array store on disk.

The store for a list of files lives in ``<cache>/images/<key>/`` where the key hashes the cache format
version, image size, aspect mode and each file's absolute path, byte size and modification time, so a
changed, added or removed file, or a different size, gives a new store. Later epochs and later runs
memory-map ``images.npy`` instead of decoding again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap
from tqdm.auto import tqdm

from cxrkit.data.decode import ImageDecodeError, load_grayscale
from cxrkit.data.sources import cache_root

CACHE_FORMAT = 1
_PARALLEL_MIN = 64  # below this, starting worker processes costs more than it saves


@dataclass
class CachedImages:
    """Decoded images (N x S x S uint8, memory-mapped) with a mask of files that decoded."""

    images: np.ndarray
    ok: np.ndarray
    errors: dict[int, str]
    key: str
    hit: bool
    seconds: float


def cache_key(paths: list[Path], size: int, aspect: str, intensity: str = "none", crop_border: bool = False) -> str:
    """Hash that changes whenever a file's content stamp, the file list or a decoding option changes."""
    extra = "" if intensity == "none" and not crop_border else f"|{intensity}|{int(crop_border)}|2"  # old "none" keys stay valid
    h = hashlib.sha256(f"cxrkit-cache-v{CACHE_FORMAT}|{size}|{aspect}{extra}".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"\n{Path(p).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def _decode_chunk(args: tuple[list[str], int, str, str, bool]) -> list[tuple[np.ndarray | None, str | None]]:
    paths, size, aspect, intensity, crop_border = args
    out: list[tuple[np.ndarray | None, str | None]] = []
    for p in paths:
        try:
            out.append((load_grayscale(p, size, aspect, intensity, crop_border), None))
        except ImageDecodeError as exc:
            out.append((None, str(exc)))
    return out


def load_cached(
    paths: list[Path],
    size: int,
    aspect: str = "pad",
    cache_dir: Path | None = None,
    workers: int | None = None,
    progress: bool = True,
    intensity: str = "none",
    crop_border: bool = False,
) -> CachedImages:
    """Return all images decoded at ``size``, building the store on first use.

    Files that fail to decode get an all-zero slot, ``ok[i] = False`` and a reason in ``errors``;
    they never stop the build.
    """
    t0 = time.perf_counter()
    key = cache_key(paths, size, aspect, intensity, crop_border)
    store = (cache_dir or cache_root()) / "images" / key
    if (store / "status.json").exists():
        status = json.loads((store / "status.json").read_text())
        images = np.load(store / "images.npy", mmap_mode="r")
        errors = {int(k): v for k, v in status["errors"].items()}
        ok = np.ones(len(paths), dtype=bool)
        ok[list(errors)] = False
        return CachedImages(images, ok, errors, key, True, time.perf_counter() - t0)

    tmp = store.with_name(key + f".partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    arr = open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(len(paths), size, size))
    errors: dict[int, str] = {}
    chunk = 32
    jobs = [([str(p) for p in paths[i : i + chunk]], size, aspect, intensity, crop_border) for i in range(0, len(paths), chunk)]
    n_workers = workers if workers is not None else (os.cpu_count() or 1)
    bar = tqdm(total=len(paths), desc="decoding images", unit="img", disable=not progress or None, leave=False)
    pool = ProcessPoolExecutor(n_workers) if n_workers > 1 and len(paths) >= _PARALLEL_MIN else None
    try:
        results = pool.map(_decode_chunk, jobs) if pool else map(_decode_chunk, jobs)
        i = 0
        for res in results:
            for img, err in res:
                if err is None:
                    arr[i] = img
                else:
                    errors[i] = err
                i += 1
            bar.update(len(res))
    finally:
        bar.close()
        if pool:
            pool.shutdown()
    arr.flush()
    del arr
    (tmp / "status.json").write_text(json.dumps({"errors": errors, "n": len(paths), "size": size, "aspect": aspect,
                                                   "intensity": intensity, "crop_border": crop_border}))
    try:
        tmp.rename(store)
    except OSError:  # another process finished the same store first; theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    images = np.load(store / "images.npy", mmap_mode="r")
    ok = np.ones(len(paths), dtype=bool)
    ok[list(errors)] = False
    return CachedImages(images, ok, errors, key, False, time.perf_counter() - t0)
