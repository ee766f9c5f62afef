"""PneumoniaMNIST (MedMNIST v2, 28 px, class-balanced copy): ROC-AUC and accuracy on its val split.

    python benchmarks/pneumoniamnist.py [--npz ../shared/data/pneumoniamnist_28_balanced.npz] [--model cnn]
                                        [--image-size 28] [--epochs 30] [--out /tmp/bench_pneumoniamnist]

The shared file has train (2428) and val (270) arrays; its test arrays are held back. So that the
figures on val are not used for any choice, the val arrays are renamed test in a temporary copy
(outside the repository): cxrkit then holds out 15% of train as its own validation split (early
stopping and the Youden threshold) and evaluates the file's val images once, as the test split.

Reference point: the MedMNIST v2 paper (Yang et al., Scientific Data 2023, Table 3) reports ResNet-18
(28) at AUC 0.944 / ACC 0.854 on the official PneumoniaMNIST test split (624 images, 62.5% pneumonia,
accuracy of the arg-max, i.e. threshold 0.5). This benchmark's images are a different, balanced set, so
the comparison is indicative only; both accuracies (threshold 0.5 and the validation-chosen threshold)
are printed.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from cxrkit.config import TrainConfig
from cxrkit.data.augment import AugmentConfig
from cxrkit.evaluation.evaluate import evaluate_run
from cxrkit.training import train

NPZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "pneumoniamnist_28_balanced.npz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--npz", type=Path, default=NPZ)
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--intensity", default="auto", help="TrainConfig.intensity (auto: what the default command picks)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_pneumoniamnist"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    held = a.out / "pneumoniamnist_val_as_test.npz"
    with np.load(a.npz) as z:
        np.savez(held, train_images=z["train_images"], train_labels=z["train_labels"], test_images=z["val_images"], test_labels=z["val_labels"])
    cfg = TrainConfig(data=str(held), out=str(a.out / "run"), model=a.model, image_size=a.image_size, epochs=a.epochs, patience=8,
                      intensity=a.intensity,
                      batch_size=64, lr=2e-3, seed=a.seed, augment=AugmentConfig(rotate_degrees=10, scale=0.1, translate=0.06,
                                                                                   brightness=0.1, contrast=0.1, hflip=False))
    t0 = time.perf_counter()
    run = train(cfg, progress=False, overwrite=True)
    m = evaluate_run(run, split="test", progress=False)
    minutes = (time.perf_counter() - t0) / 60
    rows = [r for r in csv.DictReader(open(run / "predictions.csv")) if r["split"] == "test"]
    y = np.array([r["true"] == "pneumonia" for r in rows])
    p = np.array([float(r["prob_pneumonia"]) for r in rows])
    acc05 = float(((p >= 0.5) == y).mean())
    mm = m["metrics"]
    auc = mm["roc_auc"]
    print(f"\nPneumoniaMNIST balanced copy, {a.model} at {a.image_size} px, --intensity {a.intensity}, seed {a.seed}, {minutes:.1f} min on CPU; "
          f"evaluated once on the file's "
          f"val split ({m['n']} images, {m['n_positive']} pneumonia)")
    print(f"  ROC-AUC {auc['value']:.4f} (95% CI {auc['ci'][0]:.4f}-{auc['ci'][1]:.4f})")
    print(f"  accuracy at threshold 0.5 (MedMNIST's convention): {100 * acc05:.1f}%")
    acc = mm["accuracy"]
    print(f"  accuracy at the validation-chosen threshold {m['threshold']:.3f}: {100 * acc['value']:.1f}% "
          f"(95% CI {100 * acc['ci'][0]:.1f}-{100 * acc['ci'][1]:.1f}%); sensitivity {100 * mm['sensitivity']['value']:.1f}%, "
          f"specificity {100 * mm['specificity']['value']:.1f}%")
    print("  MedMNIST v2 ResNet-18 (28): AUC 0.944 / ACC 0.854 on the official (imbalanced, 624-image) test split; not the same images")


if __name__ == "__main__":
    main()
