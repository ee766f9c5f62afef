"""Benchmark on Kermany pediatric pneumonia (../shared/data/kermany_pneumonia_224), CPU only.

    python benchmarks/kermany.py [--data PATH] [--out runs/bench_kermany] [--models simple_cnn:224,resnet18:128]

The shared copy has only the original train/ folder, so cxrkit holds out 15% validation and 15% test,
stratified by class and grouped by patient (file-name IDs ``personN`` / ``IM-NNNN``). The threshold is
chosen on validation (Youden); the test split is evaluated once. Prints validation and test ROC-AUC,
sensitivity, specificity with 95% CIs, training images/second, and the preprocessing-cache timing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from cxrkit.config import TrainConfig
from cxrkit.data.decode import load_grayscale
from cxrkit.data.sources import open_image_folder
from cxrkit.evaluation.evaluate import evaluate_run
from cxrkit.training import train

GROUP = r"(person\d+|(?:NORMAL2-)?IM-\d+)"


def fmt(e: dict, pct: bool = True) -> str:
    if e["value"] is None:
        return "n/a"
    k = 100 if pct else 1
    d = 1 if pct else 3
    ci = f" ({e['ci'][0] * k:.{d}f}-{e['ci'][1] * k:.{d}f})" if e["ci"] else ""
    return f"{e['value'] * k:.{d}f}{ci}"


def cache_timing(data: Path, size: int, n: int = 400) -> dict:
    """Seconds per image to decode+resize from files vs to read from the memory-mapped cache."""
    from cxrkit.data.cache import load_cached

    paths = [s.path for s in open_image_folder(data).samples]
    sub = paths[:: max(1, len(paths) // n)][:n]
    t0 = time.perf_counter()
    for p in sub:
        load_grayscale(p, size)
    decode = (time.perf_counter() - t0) / len(sub)
    cached = load_cached(paths, size, progress=False)
    idx = np.sort(np.random.default_rng(0).choice(len(paths), len(sub), replace=False))
    t0 = time.perf_counter()
    for i in range(0, len(idx), 32):
        np.ascontiguousarray(cached.images[idx[i : i + 32]])
    read = (time.perf_counter() - t0) / len(sub)
    return {"decode_ms_per_image": decode * 1e3, "cache_read_ms_per_image": read * 1e3, "ratio": decode / read}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/kermany_pneumonia_224"))
    ap.add_argument("--out", default="runs/bench_kermany")
    ap.add_argument("--models", default="simple_cnn:224,resnet18:128", help="model:image_size pairs")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--patience", type=int, default=3)
    a = ap.parse_args()
    data = Path(a.data)
    if not data.exists():
        raise SystemExit(f"{data} not found; pass --data")
    results = {}
    for spec in a.models.split(","):
        name, size = spec.split(":")
        out = Path(a.out) / f"{name}_{size}"
        cfg = TrainConfig(data=str(data), out=str(out), model=name, image_size=int(size), epochs=a.epochs,
                          patience=a.patience, group_pattern=GROUP, batch_size=32, lr=1e-3)
        t0 = time.perf_counter()
        train(cfg, progress=False)
        wall = time.perf_counter() - t0
        test = evaluate_run(out, split="test", progress=False)
        meta = json.loads((out / "meta.json").read_text())
        val = json.loads((out / "metrics.json").read_text())["val"]
        results[spec] = {
            "params": meta["training"]["parameters_total"], "epochs": meta["training"]["epochs_run"],
            "best_epoch": meta["training"]["best_epoch"], "train_seconds": wall,
            "images_per_second": meta["training"]["images_per_second_median"], "precision": meta["training"]["precision"],
            "val": {k: val["metrics"][k] for k in ("roc_auc", "sensitivity", "specificity")},
            "test": {k: test["metrics"][k] for k in ("roc_auc", "sensitivity", "specificity")},
            "threshold": meta["threshold"], "counts": meta["data"]["counts"],
        }
        r = results[spec]
        print(f"\n== {name} @ {size}px: {r['params']:,} params, {r['epochs']} epochs (best {r['best_epoch']}), "
              f"{wall / 60:.1f} min, {r['images_per_second']:.0f} train img/s ({r['precision']})")
        for split in ("val", "test"):
            m = r[split]
            print(f"   {split:<5} AUC {fmt(m['roc_auc'], False)}  sens {fmt(m['sensitivity'])}  spec {fmt(m['specificity'])}")
    timing = cache_timing(data, 224)
    print(f"\ncache at 224px: decode {timing['decode_ms_per_image']:.2f} ms/img from JPEG vs "
          f"{timing['cache_read_ms_per_image']:.3f} ms/img from the cache ({timing['ratio']:.0f}x)")
    results["cache_timing_224"] = timing
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
