"""NIH ChestX-ray14 (1000-image 64 px subset) multi-label: per-finding AUCs, mean AUC, weighted vs plain BCE.

    python benchmarks/nih_multilabel.py [--data ../shared/data/nih_cxr14_1000_64] [--losses plain,weighted]
                                        [--model cnn] [--epochs 20] [--out /tmp/bench_nih]

The shared copy lists train and valid rows in labels.csv, split by image (30 patients straddle it), so
this benchmark ignores that split (``--resplit``) and cuts a patient-level split of its 800 images:
70% train, 15% validation, 15% test, by iterative stratification over the 14 findings and "no finding".
One run per loss (``--losses``), same split, seed and settings; thresholds are chosen per finding on
validation; the test split is evaluated once per run. Prints per-finding test ROC-AUC (95% DeLong CI),
the paired DeLong p-value of weighted vs plain per finding, mean AUC (bootstrap CI), and what
predicting "no finding" everywhere scores. This is the comparison the seed NIH tutorial did by hand.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from cxrkit.config import TrainConfig
from cxrkit.evaluation.evaluate import evaluate_run
from cxrkit.metrics.intervals import delong_paired
from cxrkit.training import train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih_cxr14_1000_64"


def _auc(e: dict) -> str:
    a = e["roc_auc"] if "roc_auc" in e else e
    if a["value"] is None:
        return "n/a"
    return f"{a['value']:.3f} ({a['ci'][0]:.3f}-{a['ci'][1]:.3f})" if a["ci"] else f"{a['value']:.3f}"


def _test_predictions(run: Path, classes: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    rows = sorted((r for r in csv.DictReader(open(run / "predictions.csv")) if r["split"] == "test"), key=lambda r: r["path"])
    y = np.array([[c in r["true"].split("|") for c in classes] for r in rows], dtype=int)
    p = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
    return [r["path"] for r in rows], y, p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--losses", default="plain,weighted", help="comma-separated: plain (BCE) and/or weighted (per-finding pos_weight)")
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--oversample", action="store_true", help="also oversample rare findings (repeat-factor sampling)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_nih"))
    ap.add_argument("--reuse", action="store_true", help="reuse runs in --out that were already trained and evaluated on test")
    a = ap.parse_args()
    labels = a.data / "labels.csv"
    base = TrainConfig(data=str(a.data), labels=str(labels), task="multilabel", resplit=True, model=a.model, image_size=a.image_size,
                       epochs=a.epochs, patience=6, batch_size=32, lr=1e-3, seed=a.seed, oversample=a.oversample)
    results = {}
    for loss in [s.strip() for s in a.losses.split(",") if s.strip()]:
        if loss not in ("plain", "weighted"):
            raise SystemExit(f"unknown loss {loss!r}; use plain and/or weighted")
        out = a.out / loss
        metrics_file = out / "metrics.json"
        if a.reuse and metrics_file.is_file() and "test" in json.loads(metrics_file.read_text()):
            m = json.loads(metrics_file.read_text())["test"]
            print(f"{loss}: reusing the finished run in {out}")
        else:
            train(replace(base, out=str(out), class_weights=loss == "weighted"), progress=False, overwrite=True)
            m = evaluate_run(out, progress=False)
        meta = json.loads((out / "meta.json").read_text())
        results[loss] = {"run": out, "test": m, "val": json.loads((out / "metrics.json").read_text())["val"], "meta": meta,
                         "minutes": meta["training"]["seconds_total"] / 60}
    first = next(iter(results.values()))
    meta, test = first["meta"], first["test"]
    print(f"\nNIH 1000 subset, {a.model} at {a.image_size} px, patient-level split {meta['data']['images']} images, "
          f"{test['n']} test images from other patients than training")
    classes = meta["classes"]
    header = f"{'finding':<20}{'test positives':>15}" + "".join(f"{'AUC ' + k:>26}" for k in results)
    paired = len(results) == 2
    print(header + (f"{'DeLong p':>10}" if paired else ""))
    preds = {k: _test_predictions(r["run"], classes) for k, r in results.items()}
    for c, name in enumerate(classes):
        line = f"{name:<20}{test['per_label'][name]['support']:>15}" + "".join(f"{_auc(r['test']['per_label'][name]):>26}" for r in results.values())
        if paired:
            (pa, ya, sa), (pb, yb, sb) = preds.values()
            assert pa == pb and np.array_equal(ya, yb)
            yc = ya[:, c]
            line += f"{delong_paired(yc, sa[:, c], sb[:, c])['p_value']:>10.3f}" if yc.sum() >= 2 and (len(yc) - yc.sum()) >= 2 else f"{'n/a':>10}"
        print(line)
    for k, r in results.items():
        t, v = r["test"], r["val"]
        base_acc = t["all_negative_baseline"]["label_accuracy"]["value"]
        print(f"{k:>9}: mean test AUC {_auc(t['metrics']['mean_roc_auc'])} over {len(t['findings_in_mean_auc'])} findings; "
              f"mean val AUC {v['metrics']['mean_roc_auc']['value']:.3f}; label-wise accuracy {100 * t['metrics']['label_accuracy']['value']:.1f}% "
              f"vs {100 * base_acc:.1f}% for 'no finding' everywhere; pooled detection {100 * t['metrics']['detection_rate_positive']['value']:.1f}% "
              f"of findings present, {100 * t['metrics']['detection_rate_negative']['value']:.1f}% of absent ones cleared; "
              f"best epoch {r['meta']['training']['best_epoch']}/{r['meta']['training']['epochs_run']}, training {r['minutes']:.1f} min")


if __name__ == "__main__":
    main()
