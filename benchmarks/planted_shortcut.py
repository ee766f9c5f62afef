"""The planted exposure shortcut of tests/test_robust_default.py, with every stress figure printed.

Two synthetic sites; at site alpha the TB images are exposed 0.18 brighter. One run with the defaults
(``--intensity auto``) and one with ``--intensity none``, the test's settings (64 px, 8 epochs, natural site
shares), then ``cxrkit stress`` on each test split: AUC, and each change with its paired p-value.

    OMP_NUM_THREADS=1 python benchmarks/planted_shortcut.py [--out runs/planted_shortcut] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from cxrkit.config import TrainConfig
from cxrkit.data.synthetic import make_synthetic_site
from cxrkit.evaluation.stress import stress_run
from cxrkit.training import train


def main() -> None:
    """Train both runs and print one line each."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/planted_shortcut"))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    base = a.out
    sites = {"alpha": make_synthetic_site(base / "alpha", n_per_class=48, size=64, seed=21, exposure=(0.0, 0.18), signal=0.8),
             "beta": make_synthetic_site(base / "beta", n_per_class=48, size=64, seed=22, exposure=(0.05, 0.05), signal=0.8)}
    src = base / "sources.yaml"
    src.write_text(yaml.safe_dump({"sites": {k: str(v) for k, v in sites.items()}}))
    for name, options in (("default", {}), ("none", {"intensity": "none"})):
        out = base / name
        train(TrainConfig(data=str(src), out=str(out), image_size=64, epochs=8, batch_size=16, val_fraction=0.2, test_fraction=0.3,
                          seed=a.seed, cache_dir=str(base / "cache"), site_balanced=False, **options), progress=False, overwrite=True)
        r = stress_run(out, split="test", progress=False)
        mode = json.loads((out / "meta.json").read_text())["preprocessing"]["intensity"]
        changes = ", ".join(f"{p['name']} {p['change']:+.3f} (p {p['p_value']:.2g})" for p in r["perturbations"])
        print(f"{name} (trained with {mode}): AUC {r['auc']:.3f}; {changes}; {r['verdict']}", flush=True)


if __name__ == "__main__":
    main()
