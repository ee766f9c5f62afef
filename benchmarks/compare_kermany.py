"""Model comparison on Kermany pediatric pneumonia (../shared/data/kermany_pneumonia_224), CPU only.

    python benchmarks/compare_kermany.py [--data PATH] [--out runs/compare_kermany] [--models ...] [--max-minutes 15]

Runs ``cxrkit compare`` with simple_cnn, cnn, pasa and efficientnet-lite0 (ImageNet weights) at 224 px,
all with the same patient-grouped 70/15/15 split (file-name IDs ``personN`` / ``IM-NNNN``), seed,
cache and settings, each model capped at --max-minutes of training wall clock. Compares on the
validation split (the benchmark target is validation ROC-AUC); prints the comparison table with the
wall clock per model. Target (BENCHMARKS.md): best validation AUC >= 0.98 within 20 minutes of CPU
training, and a model under 1M parameters within 0.02 of it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cxrkit.config import TrainConfig
from cxrkit.experiments.compare import compare, parse_models

GROUP = r"(person\d+|(?:NORMAL2-)?IM-\d+)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/kermany_pneumonia_224"))
    ap.add_argument("--out", default="runs/compare_kermany")
    ap.add_argument("--models", default="pasa,simple_cnn,cnn,efficientnet-lite0")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--patience", type=int, default=4)
    ap.add_argument("--max-minutes", type=float, default=15.0)
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args()
    if not Path(a.data).exists():
        raise SystemExit(f"{a.data} not found; pass --data")
    base = TrainConfig(data=a.data, out=a.out, image_size=a.image_size, epochs=a.epochs, patience=a.patience,
                       max_minutes=a.max_minutes, group_pattern=GROUP, batch_size=32, lr=1e-3)
    t0 = time.perf_counter()
    s = compare(a.data, parse_models(a.models, a.image_size), a.out, base, split="val", resume=a.resume, overwrite=not a.resume,
                progress=False)
    print((Path(a.out) / "comparison.md").read_text())
    print(json.dumps({r["model"]: {"train_minutes": r.get("train_minutes"), "val_auc": r.get("roc_auc"), "status": r["status"]}
                      for r in s["rows"]}, indent=2))
    print(f"total wall clock {(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
