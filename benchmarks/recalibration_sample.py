"""How many labelled images of a new site does a re-chosen threshold need?

Scores every image of DATA once with RUN (its own views and calibration), then for each sample size n draws
``--draws`` random samples (half positive), chooses the threshold on the sample with each rule, and scores the
other images at it: the median and 5th-95th percentiles of sensitivity and specificity. This is what
``cxrkit evaluate RUN DATA --recalibrate-on SAMPLE`` does once; here it is repeated to show the spread a sample
of that size leaves. BENCHMARKS.md, round 7 (ten runs pooled there).

    python benchmarks/recalibration_sample.py runs/tb1 ../shared/data/other_site --sizes 20,40,100 --rules youden,sensitivity:0.90
"""

from __future__ import annotations

import argparse

import numpy as np

from cxrkit.metrics.thresholds import choose_threshold
from cxrkit.run import Run, load_run_dataset


def simulate(y: np.ndarray, p: np.ndarray, n: int, rule: str, draws: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity and specificity on the rest of the images, one pair per drawn sample of size n."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if n // 2 >= min(len(pos), len(neg)):
        raise SystemExit(f"a sample of {n} needs more than {n // 2} images of each class; DATA has {len(pos)} and {len(neg)}")
    sens, spec = np.empty(draws), np.empty(draws)
    for k in range(draws):
        s = np.concatenate([rng.choice(pos, n // 2, replace=False), rng.choice(neg, n - n // 2, replace=False)])
        rest = np.ones(len(y), bool)
        rest[s] = False
        t = choose_threshold(y[s], p[s], rule, chosen_on="sample").value
        d, yr = p[rest] >= t, y[rest]
        sens[k], spec[k] = d[yr == 1].mean(), 1 - d[yr == 0].mean()
    return sens, spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("data", help="labelled images of the new site (binary run)")
    ap.add_argument("--sizes", default="20,40,60,100")
    ap.add_argument("--rules", default="youden,sensitivity:0.90")
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    run = Run.load(a.run)
    if run.task != "binary":
        raise SystemExit("a binary run is needed (one threshold)")
    ds, _ = load_run_dataset(run, a.data, progress=False)
    idx = ds.index("all")
    y, p = ds.labels[idx], run.predict_arrays(np.asarray(ds.images[idx]))[:, 1]
    d = p >= run.threshold
    print(f"{len(y)} images; at the run's threshold {run.threshold:.3f}: sensitivity {d[y == 1].mean():.1%}, specificity {1 - d[y == 0].mean():.1%}")
    rng = np.random.default_rng(a.seed)
    for rule in a.rules.split(","):
        for n in (int(s) for s in a.sizes.split(",")):
            sens, spec = simulate(y, p, n, rule, a.draws, rng)
            q = lambda v: f"{np.median(v):.0%} ({np.percentile(v, 5):.0%}-{np.percentile(v, 95):.0%})"  # noqa: E731
            print(f"{rule:<18} n {n:>4}: sensitivity {q(sens):<16} specificity {q(spec)}")


if __name__ == "__main__":
    main()
