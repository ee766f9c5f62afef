"""Fine-tuning strategies for EfficientNet-Lite0 from ImageNet on Kermany pneumonia, CPU only.

    python benchmarks/finetune_strategies.py [--data PATH] [--out runs/finetune] [--image-size 128] [--epochs 4]

Trains the same model, split (patient-grouped 70/15/15), seed and epochs four ways: from random
initialisation, linear probe (``--freeze backbone``), full fine-tuning, and two-stage (head for one
epoch, then all layers with the backbone at 0.1x the learning rate). Prints validation ROC-AUC with
its 95% CI, trained parameters, training minutes and images/second. Validation only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cxrkit.config import TrainConfig
from cxrkit.training import train

GROUP = r"(person\d+|(?:NORMAL2-)?IM-\d+)"
STRATEGIES = {
    "random init, full training": {"pretrained": "none"},
    "ImageNet, linear probe": {"freeze": "backbone", "lr": 3e-3},
    "ImageNet, full fine-tune": {},
    "ImageNet, two-stage (1 head epoch, backbone LR x0.1)": {"head_epochs": 1, "backbone_lr_scale": 0.1},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/kermany_pneumonia_224"))
    ap.add_argument("--out", default="runs/finetune")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--strategies", default=None, help="comma-separated indices into the list above (default: all)")
    a = ap.parse_args()
    chosen = None if a.strategies is None else {int(i) for i in a.strategies.split(",")}
    print(f"{'strategy':<55}{'val AUC (95% CI)':<26}{'trained params':>15}{'minutes':>9}{'img/s':>8}")
    for i, (name, change) in enumerate(STRATEGIES.items()):
        if chosen is not None and i not in chosen:
            continue
        out = Path(a.out) / f"s{i}"
        settings = {"model": "efficientnet-lite0", "image_size": a.image_size, "epochs": a.epochs, "patience": a.epochs,
                    "group_pattern": GROUP, "batch_size": 32, "lr": 1e-3, **change}
        cfg = TrainConfig(data=a.data, out=str(out), **settings)
        train(cfg, progress=False, overwrite=True)
        meta = json.loads((out / "meta.json").read_text())["training"]
        auc = json.loads((out / "metrics.json").read_text())["val"]["metrics"]["roc_auc"]
        print(f"{name:<55}{auc['value']:.4f} ({auc['ci'][0]:.4f}-{auc['ci'][1]:.4f})  {meta['parameters_trainable']:>13,}"
              f"{meta['seconds_total'] / 60:>9.1f}{meta['images_per_second_median']:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
