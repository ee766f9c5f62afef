"""ONNX Runtime vs PyTorch on this machine: inference time at batch 1 and batch 32, and what int8 costs in AUC.

    python benchmarks/onnx_speed.py RUN [--data DATA] [--split test] [--repeats 30] [--threads N]

Exports RUN (model.onnx and model.int8.onnx) when the files are missing, then times
``Run.predict_arrays`` (the path predict and serve use: normalisation, model, probabilities) for each
engine on random images at the run's size, with the same thread count, and reports the median.
ROC-AUC of each engine on the run's ``--split`` (DeLong 95% CI) shows what int8 quantisation costs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from cxrkit.run import Run

ENGINES = ("torch", "onnx", "onnx-int8")


def time_engine(run: Run, batch: int, repeats: int, seed: int = 0) -> float:
    """Median seconds for one ``predict_arrays`` call on ``batch`` random images."""
    s = run.preprocessing.image_size
    images = np.random.default_rng(seed).integers(0, 256, (batch, s, s), dtype=np.uint8)
    for _ in range(3):
        run.predict_arrays(images, batch_size=batch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run.predict_arrays(images, batch_size=batch)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--data", default=None, help="dataset for the AUC comparison (default: the run's)")
    p.add_argument("--split", default="test")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=None, help="threads for both engines (default: torch's default, one per core)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)  # ONNX Runtime sessions take torch's thread count (cxrkit.models.onnx_runtime)

    from cxrkit.models.onnx_runtime import INT8_FILE, ONNX_FILE

    probe = Run.load(a.run, engine="torch")
    if not (probe.path / ONNX_FILE).is_file() or not (probe.path / INT8_FILE).is_file():
        from cxrkit.export.onnx import export_onnx

        r = export_onnx(a.run, quantize="int8")
        print(f"exported: parity max abs diff {r['max_abs_diff']:.2e}; int8 on validation: {r['quantized']}")
    runs = {e: Run.load(a.run, engine=e) for e in ENGINES}
    print(f"run {probe.path} ({probe.meta['model']}, {probe.preprocessing.image_size} px), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"\n{'engine':<12}{'batch':>6}{'median ms':>12}{'images/s':>10}{'vs torch':>10}")
    for batch in (1, 32):
        base = None
        for e in ENGINES:
            t = time_engine(runs[e], batch, a.repeats if batch == 1 else max(5, a.repeats // 3))
            base = base or t
            print(f"{e:<12}{batch:>6}{1000 * t:>12.2f}{batch / t:>10.0f}{base / t:>9.2f}x")

    from cxrkit.evaluation.evaluate import load_run_dataset
    from cxrkit.metrics.intervals import delong_interval, delong_paired

    ds, _ = load_run_dataset(probe, a.data, progress=False)
    idx = ds.index(a.split)
    images, y = np.asarray(ds.images[idx]), ds.labels[idx]
    probs = {e: runs[e].predict_arrays(images) for e in ENGINES}
    print(f"\nROC-AUC on the {a.split} split (n={len(y)}), DeLong 95% CI:")
    reference = runs["torch"].decide(probs["torch"])
    for e in ENGINES:
        auc, (lo, hi) = delong_interval(y, probs[e][:, 1])
        paired = delong_paired(y, probs[e][:, 1], probs["torch"][:, 1])
        print(f"  {e:<10} {auc:.4f} ({lo:.4f}-{hi:.4f})  change vs torch {paired['difference']:+.4f} (paired DeLong p={paired['p_value']:.3g})  "
              f"max |p - p_torch| = {np.abs(probs[e] - probs['torch']).max():.2e}  decisions changed: {int((runs[e].decide(probs[e]) != reference).sum())}")


if __name__ == "__main__":
    main()
