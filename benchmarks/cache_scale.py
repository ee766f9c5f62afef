"""Preprocessing cache at scale: a synthetic 20,000-image set at 256 px, outside the repository.

    python benchmarks/cache_scale.py [--root /work/bench4/cxr20k] [--n 20000] [--size 256] [--workers 2]
                                     [--train-batches 40]

Measures, on this machine:
1. writing the synthetic PNGs (once; reused on later runs);
2. building the memory-mapped uint8 store with ``--workers`` processes (images/s), after dropping any
   earlier store; then an interrupted build (stopped after about half the chunks) and its resumption;
3. training reads: shuffled batches of 32 from the memory map, as the trainer reads them (images/s), and
   the data side of one epoch (read + scale to [0, 1] + augmentation + normalisation) over all images;
4. ``simple_cnn`` training steps at 256 px on ``--train-batches`` batches (images/s), and the epoch time
   they imply for 20,000 images, printed as a projection.
"""

from __future__ import annotations

import argparse
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def _write_block(args: tuple[str, int, int, int]) -> int:
    from PIL import Image

    from cxrkit.data.synthetic import synthetic_cxr

    root, start, stop, size = args
    rng = np.random.default_rng(start)
    bases = [synthetic_cxr(rng, size, pattern=p % 3) for p in range(4)]
    for i in range(start, stop):
        img = np.roll(bases[i % 4], (int(rng.integers(-8, 9)), int(rng.integers(-8, 9))), axis=(0, 1))
        img = np.clip(img.astype(np.int16) + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
        folder = Path(root) / f"{i // 1000:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"img{i:06d}.png", compress_level=1)
    return stop - start


def make_images(root: Path, n: int, size: int, workers: int) -> list[Path]:
    """Write ``n`` synthetic PNGs under ``root`` (skipped when they exist); returns their paths."""
    paths = sorted(root.rglob("*.png"))
    if len(paths) >= n:
        return paths[:n]
    t0 = time.perf_counter()
    step = 500
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_block, [(str(root), i, min(i + step, n), size) for i in range(0, n, step)]))
    paths = sorted(root.rglob("*.png"))[:n]
    print(f"wrote {n} PNGs ({size} px) in {time.perf_counter() - t0:.0f} s")
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("/work/bench4/cxr20k"))
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--train-batches", type=int, default=40)
    a = ap.parse_args()
    import cxrkit.data.cache as cache_module

    paths = make_images(a.root / "images", a.n, a.size, a.workers)
    cache_dir = a.root / "cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    t0 = time.perf_counter()
    cached = cache_module.load_cached(paths, a.size, cache_dir=cache_dir, workers=a.workers, progress=False)
    build = time.perf_counter() - t0
    gb = cached.images.nbytes / 1e9
    print(f"cache build, {a.workers} worker process(es): {a.n} images in {build:.1f} s = {a.n / build:.0f} images/s; store {gb:.2f} GB")

    shutil.rmtree(cache_dir, ignore_errors=True)
    half = len(paths) // cache_module.CHUNK // 2
    real, done = cache_module._decode_chunk, []

    def stop_half(job: tuple) -> tuple:
        if len(done) >= half:
            raise KeyboardInterrupt
        done.append(job[1])
        return real(job)

    cache_module._decode_chunk = stop_half
    try:
        cache_module.load_cached(paths, a.size, cache_dir=cache_dir, workers=1, progress=False)
    except KeyboardInterrupt:
        pass
    cache_module._decode_chunk = real
    t0 = time.perf_counter()
    resumed = cache_module.load_cached(paths, a.size, cache_dir=cache_dir, workers=a.workers, progress=False)
    t_resume = time.perf_counter() - t0
    same = bool(np.array_equal(np.asarray(resumed.images[:: max(1, a.n // 500)]), np.asarray(cached.images[:: max(1, a.n // 500)])))
    print(f"interrupted after {len(done)} chunks ({len(done) * cache_module.CHUNK} images); resumed build took {t_resume:.1f} s "
          f"for the rest; identical to an uninterrupted build on a 500-image sample: {same}")

    import torch

    from cxrkit.data.augment import AugmentConfig, augment_batch
    from cxrkit.data.preprocess import Preprocessing, intensity_stats
    from cxrkit.models.registry import build_model

    images = np.load(cache_dir / "images" / resumed.key / "images.npy", mmap_mode="r")
    rng = np.random.default_rng(0)
    order = rng.permutation(a.n)
    t0 = time.perf_counter()
    for i in range(0, a.n, 32):
        np.ascontiguousarray(images[np.sort(order[i : i + 32])])
    t_read = time.perf_counter() - t0
    print(f"training reads (shuffled batches of 32 from the memory map): {a.n / t_read:.0f} images/s ({t_read:.1f} s per epoch)")
    mean, std = intensity_stats(images, np.arange(min(a.n, 2000)))
    pre = Preprocessing(a.size, "pad", mean, std)
    gen = torch.Generator().manual_seed(0)
    aug = AugmentConfig()
    t0 = time.perf_counter()
    for i in range(0, a.n, 32):
        pre.normalize(augment_batch(pre.to_unit(np.ascontiguousarray(images[np.sort(order[i : i + 32])])), aug, gen))
    t_data = time.perf_counter() - t0
    print(f"data side of one epoch (read + [0,1] + augmentation + normalisation): {t_data:.1f} s = {a.n / t_data:.0f} images/s")

    model = build_model("simple_cnn", 1, image_size=a.size).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    times = []
    for b in range(a.train_batches + 3):
        idx = np.sort(order[b * 32 : (b + 1) * 32])
        x = pre.normalize(augment_batch(pre.to_unit(np.ascontiguousarray(images[idx])), aug, gen)).contiguous(memory_format=torch.channels_last)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x).float()
        loss = loss_fn(out[:, 0], torch.zeros(len(idx)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if b >= 3:  # the first steps warm up allocators and kernels
            times.append(time.perf_counter() - t0)
    step_ips = 32 / float(np.median(times))
    print(f"simple_cnn training steps at {a.size} px ({'bf16' if bf16 else 'fp32'}, {torch.get_num_threads()} threads): "
          f"{step_ips:.0f} images/s (median of {len(times)} batches); projected epoch on {a.n} images: "
          f"{a.n / step_ips + t_data:.0f} s (model steps + data side measured above)")


if __name__ == "__main__":
    main()
