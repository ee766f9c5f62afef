"""Preprocessing cache: decode and resize every image once into a uint8 array store on disk.

The store for a list of files lives in ``<cache>/images/<key>/`` where the key hashes the cache format
version, image size, aspect mode and each file's absolute path, byte size and modification time, so a
changed, added or removed file, or a different size, gives a new store. Later epochs and later runs
memory-map ``images.npy`` (one uint8 array, N x S x S) instead of decoding again: 112k NIH images at
256 px are 7.3 GB, read at memory speed once in the page cache.

The build is parallel (worker processes write their chunks straight into the memory map) and
resumable (``<key>.partial/progress.jsonl`` lists finished chunks), and guarded by a lock file so
two processes never build the same store at once. Workers die with the build process (Linux), and the
lock is a POSIX record lock, which belongs to the build process alone: when it dies, however it dies,
the kernel releases the lock and the next build takes over and resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap
from tqdm.auto import tqdm

from cxrkit.data.decode import ImageDecodeError, UnusableImageError, check_usable, load_grayscale, prepare_grayscale
from cxrkit.data.medmnist import ArraySource, array_grey
from cxrkit.data.sources import cache_root, file_stamp

CACHE_FORMAT = 4  # 2: images turned by their EXIF orientation; 3: blank and tiny images refused, as prediction refuses them;
# 4: nearly blank images (grey levels spanning under 8) and multi-page files refused
_PARALLEL_MIN = 64  # below this, starting worker processes costs more than it saves
CHUNK = 64  # images per work item and per progress record


@dataclass
class CachedImages:
    """Decoded images (N x S x S uint8, memory-mapped) with a mask of files that decoded."""

    images: np.ndarray
    ok: np.ndarray
    errors: dict[int, str]
    key: str
    hit: bool
    seconds: float


def cache_key(paths: list[Path], size: int, aspect: str, intensity: str = "none", crop_border: bool = False, extra: str = "") -> str:
    """Hash that changes whenever a file's content stamp, the file list or a decoding option changes."""
    options = "" if intensity == "none" and not crop_border else f"|{intensity}|{int(crop_border)}|2"  # old "none" keys stay valid
    h = hashlib.sha256(f"cxrkit-cache-v{CACHE_FORMAT}|{size}|{aspect}{options}{'|' + extra if extra else ''}".encode())
    for p in paths:
        h.update(f"\n{os.path.realpath(p)}|{file_stamp(p)}".encode())  # realpath: Path.resolve raises on a link loop
    return h.hexdigest()[:24]


def _die_with_parent(parent: int) -> None:
    """Pool initializer: have the kernel kill this worker when the build process dies, so no orphan outlives it."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    try:
        os.kill(parent, 0)  # the parent may have died before prctl took effect
    except ProcessLookupError:
        os._exit(1)


def _decode_chunk(args: tuple[str, int, list[str], int, str, str, bool]) -> tuple[int, dict[int, str]]:
    """Decode files into rows ``start...`` of the partial store; returns (start, {row: error}).

    Runs in worker processes: it writes into the memory map itself (no image travels back through a
    pipe) and flushes before returning, so a chunk reported done is on disk. Only numpy and Pillow run
    here: torch must not be touched in a forked worker.
    """
    store, start, paths, size, aspect, intensity, crop_border = args
    arr = open_memmap(store, mode="r+")
    errors: dict[int, str] = {}
    for j, p in enumerate(paths):
        try:
            arr[start + j] = load_grayscale(p, size, aspect, intensity, crop_border)
        except ImageDecodeError as exc:
            arr[start + j] = 0
            errors[start + j] = str(exc)
    arr.flush()
    del arr
    return start, errors


class _PartialStore:
    """A store being built in ``<key>.partial/``: the memory-mapped array and a log of finished chunks.

    ``progress.jsonl`` gets one line per finished chunk (its first row and its decode errors), appended
    and fsynced after the chunk's rows are flushed, so after an interruption (Ctrl-C, a killed job)
    the next build skips every chunk listed and decodes only the rest.
    """

    def __init__(self, tmp: Path, n: int, size: int, chunk: int) -> None:
        self.tmp, self.chunk = tmp, chunk
        plan = {"n": n, "size": size, "chunk": chunk}
        self.done: dict[int, dict[int, str]] = {}
        if (tmp / "plan.json").is_file() and (tmp / "images.npy").is_file() and json.loads((tmp / "plan.json").read_text()) == plan:
            for line in (tmp / "progress.jsonl").read_text().splitlines() if (tmp / "progress.jsonl").is_file() else []:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by the interruption
                    continue
                self.done[int(rec["start"])] = {int(k): v for k, v in rec["errors"].items()}
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size)).flush()
            (tmp / "plan.json").write_text(json.dumps(plan))
        self.log = open(tmp / "progress.jsonl", "a")
        self.starts = [i for i in range(0, n, chunk) if i not in self.done]

    def record(self, start: int, errors: dict[int, str]) -> None:
        """Mark the chunk at ``start`` finished (its rows are already flushed)."""
        self.done[start] = errors
        self.log.write(json.dumps({"start": start, "errors": {str(k): v for k, v in errors.items()}}) + "\n")
        self.log.flush()
        os.fsync(self.log.fileno())

    def errors(self) -> dict[int, str]:
        """All decode errors recorded so far, by row."""
        return {k: v for e in self.done.values() for k, v in e.items()}

    def close(self) -> None:
        """Close the progress log."""
        self.log.close()


def _finish(tmp: Path, store: Path, status: dict) -> None:
    (tmp / "status.json").write_text(json.dumps(status))
    (tmp / "progress.jsonl").unlink(missing_ok=True)
    try:
        tmp.rename(store)
    except OSError:  # another process finished the same store first; theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)


def _open_store(store: Path, n: int, key: str, hit: bool, t0: float) -> CachedImages:
    status = json.loads((store / "status.json").read_text())
    images = np.load(store / "images.npy", mmap_mode="r")
    errors = {int(k): v for k, v in status["errors"].items()}
    ok = np.ones(n, dtype=bool)
    ok[list(errors)] = False
    return CachedImages(images, ok, errors, key, hit, time.perf_counter() - t0)


def _open_finished(store: Path, n: int, size: int, key: str, t0: float, discard: bool) -> CachedImages | None:
    """The finished store, or None when there is none; a damaged one (a truncated images.npy, an unreadable status.json,
    another shape) is removed with a note when ``discard`` (the caller holds the build lock and rebuilds it), else left
    for the locked check. It is derived data: training was stopped by numpy's "mmap length is greater than file size"."""
    if not (store / "status.json").exists():
        return None
    try:
        cached = _open_store(store, n, key, True, t0)
        if cached.images.shape != (n, size, size) or cached.images.dtype != np.uint8 or not all(0 <= i < n for i in cached.errors):
            raise ValueError(f"it holds {cached.images.shape} {cached.images.dtype} images, not ({n}, {size}, {size}) uint8")
        return cached
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        if discard:
            print(f"note: the image cache {store} is damaged ({' '.join(str(exc).split())[:120]}); decoding the images again",
                  file=sys.stderr, flush=True)
            shutil.rmtree(store, ignore_errors=True)
        return None


_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


class _BuildLock:
    """An exclusive lock on a store's build, so two processes never write the same partial store.

    ``lockf`` (a POSIX record lock), not ``flock``: forked workers do not inherit it, and the kernel drops it the
    moment the holding process dies, so a killed build never leaves a lock behind. POSIX locks are per
    process, so threads of one process also take a per-path thread lock. The holder writes its PID into the
    file so that a waiting build can say whom it waits for.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        with _THREAD_LOCKS_GUARD:
            self.thread_lock = _THREAD_LOCKS.setdefault(str(path.resolve()), threading.Lock())

    def __enter__(self) -> _BuildLock:
        import fcntl

        self.thread_lock.acquire()
        self.f = open(self.path, "a+")
        told = False
        while True:
            try:
                fcntl.lockf(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if not told:
                    self.f.seek(0)
                    holder = self.f.read().strip() or "another process"
                    print(f"waiting for the image cache build of PID {holder} ({self.path.name}); it resumes here if that process dies",
                          file=sys.stderr, flush=True)
                    told = True
                time.sleep(0.2)
        self.f.seek(0)
        self.f.truncate()
        self.f.write(str(os.getpid()))
        self.f.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        import fcntl

        self.f.truncate(0)
        fcntl.lockf(self.f, fcntl.LOCK_UN)
        self.f.close()
        self.thread_lock.release()


def load_cached(
    paths: list[Path],
    size: int,
    aspect: str = "pad",
    cache_dir: Path | None = None,
    workers: int | None = None,
    progress: bool = True,
    intensity: str = "none",
    crop_border: bool = False,
    chunk: int = CHUNK,
) -> CachedImages:
    """Return all images decoded at ``size``, building the store on first use.

    The build runs in ``workers`` processes (default: all cores), each writing its chunks straight
    into the memory-mapped ``images.npy``; an interrupted build resumes where it stopped. Files that
    fail to decode get an all-zero slot, ``ok[i] = False`` and a reason in ``errors``; they never stop
    the build.
    """
    t0 = time.perf_counter()
    key = cache_key(paths, size, aspect, intensity, crop_border)
    root = cache_dir or cache_root()
    store = root / "images" / key
    if (found := _open_finished(store, len(paths), size, key, t0, discard=False)) is not None:
        return found
    with _BuildLock(root / "images" / f"{key}.lock"):
        if (found := _open_finished(store, len(paths), size, key, t0, discard=True)) is not None:  # built while this one waited
            return found
        tmp = store.with_name(key + ".partial")
        part = _PartialStore(tmp, len(paths), size, chunk)
        jobs = [(str(tmp / "images.npy"), i, [str(p) for p in paths[i : i + chunk]], size, aspect, intensity, crop_border)
                for i in part.starts]
        n_workers = workers if workers is not None else (os.cpu_count() or 1)
        bar = tqdm(total=len(paths), initial=len(paths) - sum(len(j[2]) for j in jobs), desc="decoding images", unit="img",
                   disable=not progress or None, leave=False)
        parallel = n_workers > 1 and len(paths) >= _PARALLEL_MIN and len(jobs) > 1
        pool = ProcessPoolExecutor(n_workers, initializer=_die_with_parent, initargs=(os.getpid(),)) if parallel else None
        try:
            if pool:
                futures = [pool.submit(_decode_chunk, j) for j in jobs]
                for fut in as_completed(futures):
                    start, errors = fut.result()
                    part.record(start, errors)
                    bar.update(min(chunk, len(paths) - start))
            else:
                for j in jobs:
                    start, errors = _decode_chunk(j)
                    part.record(start, errors)
                    bar.update(len(j[2]))
        finally:
            bar.close()
            part.close()
            if pool:
                pool.shutdown(cancel_futures=True)
        _finish(tmp, store, {"errors": part.errors(), "n": len(paths), "size": size, "aspect": aspect,
                             "intensity": intensity, "crop_border": crop_border})
    return _open_store(store, len(paths), key, False, t0)


def load_cached_arrays(
    source: ArraySource, size: int, aspect: str = "pad", cache_dir: Path | None = None, progress: bool = True,
    intensity: str = "none", crop_border: bool = False, chunk: int = CHUNK,
) -> CachedImages:
    """The images of a MedMNIST ``.npz`` source resized to ``size``, in the same resumable store as files.

    Runs in this process: the images are already decoded, so resizing is cheap and each split's array
    is read from the ``.npz`` once.
    """
    t0 = time.perf_counter()
    key = cache_key([source.npz], size, aspect, intensity, crop_border, extra="npz")
    n = len(source.rows)
    root = cache_dir or cache_root()
    store = root / "images" / key
    if (found := _open_finished(store, n, size, key, t0, discard=False)) is not None:
        return found
    with _BuildLock(root / "images" / f"{key}.lock"):
        if (found := _open_finished(store, n, size, key, t0, discard=True)) is not None:
            return found
        tmp = store.with_name(key + ".partial")
        part = _PartialStore(tmp, n, size, chunk)
        arr = open_memmap(tmp / "images.npy", mode="r+")
        loaded: dict[str, np.ndarray] = {}
        try:
            with np.load(source.npz) as z:
                for start in tqdm(part.starts, desc="resizing images", unit="chunk", disable=not progress or None, leave=False):
                    errors: dict[int, str] = {}
                    for i in range(start, min(start + chunk, n)):
                        split, row = source.rows[i]
                        if split not in loaded:
                            loaded.clear()  # keep one split's array in memory at a time
                            loaded[split] = z[f"{split}_images"]
                        img = loaded[split][row]
                        gray = array_grey(img)
                        try:
                            arr[i] = prepare_grayscale(check_usable(gray), size, aspect, intensity, crop_border)
                        except UnusableImageError as exc:
                            arr[i], errors[i] = 0, str(exc)
                    arr.flush()
                    part.record(start, errors)
        finally:
            part.close()
            del arr
        _finish(tmp, store, {"errors": part.errors(), "n": n, "size": size, "aspect": aspect, "intensity": intensity,
                             "crop_border": crop_border, "source": str(source.npz)})
    return _open_store(store, n, key, False, t0)
