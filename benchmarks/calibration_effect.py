"""ECE and Brier score before and after each calibration method, fitted on validation, measured on test.

    python benchmarks/calibration_effect.py RUN [--split test]

Predicts the run's validation and evaluated splits once with the model's own probabilities, fits
temperature, Platt and isotonic calibration on validation only, and prints ECE (10 bins) and Brier
score on both splits, with the threshold re-chosen by the run's rule on calibrated validation
probabilities and the sensitivity/specificity it gives on the evaluated split. Nothing is stored in the run.
"""

from __future__ import annotations

import argparse

import numpy as np

from cxrkit.evaluation.evaluate import load_run_dataset
from cxrkit.metrics.calibration import brier_score, expected_calibration_error, fit_calibration
from cxrkit.metrics.thresholds import choose_threshold
from cxrkit.run import Run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--split", default="test")
    a = ap.parse_args()
    run = Run.load(a.run)
    ds, _ = load_run_dataset(run, progress=False)
    iv, ie = ds.index("val"), ds.index(a.split)
    yv, ye = ds.labels[iv], ds.labels[ie]
    pv = run.predict_arrays(np.asarray(ds.images[iv]), calibrated=False)
    pe = run.predict_arrays(np.asarray(ds.images[ie]), calibrated=False)
    rule = run.meta["threshold"]["rule"] if run.task == "binary" else None
    print(f"{run.path}: {len(iv)} validation, {len(ie)} {a.split} images; threshold rule {rule}")
    print(f"{'method':<13}{'val ECE':>9}{'val Brier':>11}{f'{a.split} ECE':>10}{f'{a.split} Brier':>12}{'threshold':>11}{'sens':>8}{'spec':>8}  parameters")
    methods = ["none", "temperature"] + (["platt", "isotonic"] if run.task == "binary" else [])
    for method in methods:
        if method == "none":
            qv, qe, params = pv, pe, ""
        else:
            cal = fit_calibration(yv, pv, method)
            qv, qe = cal.apply(pv), cal.apply(pe)
            params = {k: round(v, 4) for k, v in cal.params.items() if not isinstance(v, list)} or f"{len(cal.params['x'])} steps"
        line = f"{method:<13}{expected_calibration_error(yv, qv):>9.4f}{brier_score(yv, qv):>11.4f}"
        line += f"{expected_calibration_error(ye, qe):>10.4f}{brier_score(ye, qe):>12.4f}"
        if rule:
            t = choose_threshold(yv, qv[:, 1], rule).value
            pred = qe[:, 1] >= t
            sens, spec = pred[ye == 1].mean(), (~pred[ye == 0]).mean()
            line += f"{t:>11.4f}{100 * sens:>7.1f}%{100 * spec:>7.1f}%"
        print(f"{line}  {params}")


if __name__ == "__main__":
    main()
