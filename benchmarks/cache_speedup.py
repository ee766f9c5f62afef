"""Epoch time with the preprocessing cache vs decoding files every epoch (the notebook way).

    python benchmarks/cache_speedup.py --data ../shared/data/covid19_3class_640 --image-size 224 --n 256

Both variants run the same training step (cxrkit's `cnn`, batch 32, the same precision as
`cxrkit train`) over the same images; only the source of the pixels differs:
  files: a DataLoader whose workers open, decode and resize each file every epoch;
  cache: batches read from cxrkit's memory-mapped uint8 store.
Prints the median epoch time of --epochs epochs for each, and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cxrkit.config import TrainConfig
from cxrkit.data.cache import load_cached
from cxrkit.data.decode import load_grayscale
from cxrkit.data.sources import open_image_folder
from cxrkit.models import build_model


class FileImages(Dataset):
    def __init__(self, paths: list[Path], size: int) -> None:
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(load_grayscale(self.paths[i], self.size))


def run_epochs(batches, model, opt, precision: str, epochs: int) -> list[float]:
    times = []
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        t0 = time.perf_counter()
        for xb in batches():
            x = (xb.unsqueeze(1).float() / 255.0 - 0.5).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = model(x)
            loss = loss_fn(out.float()[:, 0], torch.zeros(len(x)))
            opt.zero_grad()
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="dataset folder (or use --synthetic)")
    ap.add_argument("--synthetic", type=int, metavar="PX",
                    help="generate --n synthetic PNGs of PX x PX (e.g. 1024, the size of NIH ChestX-ray14 files) in a temp folder")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--n", type=int, default=256, help="images per epoch")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for the decode-every-epoch variant")
    ap.add_argument("--model", default="cnn")
    a = ap.parse_args()
    if a.synthetic:
        import tempfile

        from cxrkit.data.synthetic import make_synthetic_dataset

        a.data = make_synthetic_dataset(Path(tempfile.mkdtemp()) / "big", n_per_class=a.n // 2, size=a.synthetic)
    elif not a.data:
        ap.error("give --data or --synthetic")
    paths = [s.path for s in open_image_folder(a.data).samples]
    paths = paths[:: max(1, len(paths) // a.n)][: a.n]
    precision = TrainConfig(data=a.data).resolved_precision()
    torch.manual_seed(0)
    model = build_model(a.model, 1).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), 1e-4)

    loader = DataLoader(FileImages(paths, a.image_size), batch_size=32, num_workers=a.workers, persistent_workers=a.workers > 0)
    files = run_epochs(lambda: iter(loader), model, opt, precision, a.epochs)

    t0 = time.perf_counter()
    cached = load_cached(paths, a.image_size, progress=False)
    build = time.perf_counter() - t0
    images = cached.images

    def cache_batches():
        for i in range(0, len(paths), 32):
            yield torch.from_numpy(np.array(images[i : i + 32]))  # copy: the memory map is read-only

    cache = run_epochs(cache_batches, model, opt, precision, a.epochs)
    f, c = statistics.median(files), statistics.median(cache)
    print(f"{a.data}: {len(paths)} images at {a.image_size}px, model {a.model} ({precision}), {torch.get_num_threads()} threads")
    print(f"  decode every epoch ({a.workers} workers): median epoch {f:.2f} s  ({len(paths) / f:.0f} img/s)")
    print(f"  preprocessing cache:                 median epoch {c:.2f} s  ({len(paths) / c:.0f} img/s)"
          f"  [one-off build {build:.1f} s{', was already cached' if cached.hit else ''}]")
    print(f"  speed-up from the cache: {f / c:.2f}x")


if __name__ == "__main__":
    main()
