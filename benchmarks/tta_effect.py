"""What test-time augmentation changes: validation ROC-AUC and inference cost with and without TTA.

    python benchmarks/tta_effect.py RUN [RUN ...]

For each trained run, predicts its validation split twice (plain, and averaged over the five
TTA views) and prints both AUCs with DeLong 95% CIs, the paired DeLong p-value of the difference,
and milliseconds per image at batch 32. Validation only: the test split stays untouched.
"""

from __future__ import annotations

import argparse
import time

from cxrkit.evaluation.evaluate import load_run_dataset
from cxrkit.metrics.intervals import delong_interval, delong_paired
from cxrkit.run import Run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    a = ap.parse_args()
    print(f"{'run':<28}{'n':>6}  {'AUC plain (95% CI)':<24}{'AUC TTA (95% CI)':<24}{'p':>8}{'ms/img plain':>14}{'ms/img TTA':>12}")
    for path in a.runs:
        run = Run.load(path)
        ds, _ = load_run_dataset(run, progress=False)
        idx = ds.index("val")
        y = ds.labels[idx] == 1
        out = {}
        for tta in (False, True):
            t0 = time.perf_counter()
            p = run.predict_arrays(ds.images[idx], 32, tta=tta)[:, 1]
            out[tta] = (p, 1000 * (time.perf_counter() - t0) / len(idx))
        (p0, ms0), (p1, ms1) = out[False], out[True]
        a0, c0 = delong_interval(y, p0)
        a1, c1 = delong_interval(y, p1)
        test = delong_paired(y, p1, p0)
        print(f"{path:<28}{len(idx):>6}  {a0:.4f} ({c0[0]:.4f}-{c0[1]:.4f})  {a1:.4f} ({c1[0]:.4f}-{c1[1]:.4f})  "
              f"{test['p_value']:>7.3g}{ms0:>14.2f}{ms1:>12.2f}")


if __name__ == "__main__":
    main()
