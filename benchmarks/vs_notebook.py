"""cxrkit against the notebook recipe users copy today, on the same Kermany images and split, in one run.

    python benchmarks/vs_notebook.py --data ../shared/data/kermany_pneumonia_224 --keras-python /path/to/tf-venv/bin/python \
        [--limit 1000] [--epochs 3] [--out runs/vs_notebook]

The notebook side is the seeds' Keras recipe: ``ImageDataGenerator`` (rescale 1/255, rotation 10, horizontal
flip, zoom 0.1) feeding a 3-block CNN (Conv 32/64/128 + max-pool, Dense 128, sigmoid) on 224-px RGB images,
batch 32, Adam, binary cross-entropy. TensorFlow is a benchmark-only extra: it runs in its own interpreter
(``--keras-python``, e.g. a venv with ``pip install tensorflow-cpu pillow scipy scikit-learn``) so it never
shares cxrkit's environment. The cxrkit side is the default ``cxrkit train`` command with the same number of
epochs. Both train on cxrkit's split of the same (optionally ``--limit``-ed, class-stratified) images and are
scored on the same validation images; images/second is training images per second of training time (median
over epochs, first epoch excluded when there are more than two), reported as a ratio.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

GROUP = r"(person\d+|(?:NORMAL2-)?IM-\d+)"  # as in benchmarks/kermany.py
KERAS = r'''
import csv, json, sys, time
import numpy as np, pandas as pd
import tensorflow as tf
from tensorflow.keras import layers, models
from tensorflow.keras.preprocessing.image import ImageDataGenerator
from sklearn.metrics import roc_auc_score

root, split_file, epochs, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
rows = list(csv.DictReader(open(split_file)))
df = pd.DataFrame([{"filename": r["path"], "class": r["label"], "split": r["split"]} for r in rows])
train_df, val_df = df[df.split == "train"], df[df.split == "val"]
gen = ImageDataGenerator(rescale=1. / 255, rotation_range=10, horizontal_flip=True, zoom_range=0.1)
train = gen.flow_from_dataframe(train_df, root, target_size=(224, 224), batch_size=32, class_mode="binary", seed=0)
val = ImageDataGenerator(rescale=1. / 255).flow_from_dataframe(val_df, root, target_size=(224, 224), batch_size=32,
                                                             class_mode="binary", shuffle=False)
model = models.Sequential([
    layers.Input((224, 224, 3)),
    layers.Conv2D(32, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
    layers.Conv2D(64, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
    layers.Conv2D(128, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
    layers.Flatten(), layers.Dense(128, activation="relu"), layers.Dense(1, activation="sigmoid"),
])
model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])

class Timer(tf.keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.t = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None):
        seconds.append(time.perf_counter() - self.t)

seconds, aucs = [], []
for e in range(epochs):
    model.fit(train, epochs=1, verbose=0, callbacks=[Timer()])
    p = model.predict(val, verbose=0).ravel()
    aucs.append(float(roc_auc_score(val.classes, p)))
json.dump({"epoch_seconds": seconds, "n_train": len(train_df), "n_val": len(val_df), "val_auc_per_epoch": aucs,
           "parameters": int(model.count_params()), "tensorflow": tf.__version__, "threads": tf.config.threading.get_intra_op_parallelism_threads()},
          open(out, "w"))
'''


def subset(data: Path, out: Path, limit: int | None, seed: int) -> Path:
    """A class-stratified sample of ``limit`` images as symbolic links (the whole set when ``limit`` is None)."""
    if limit is None:
        return data
    rng = np.random.default_rng(seed)
    classes = sorted(d for d in (data / "train").iterdir() if d.is_dir())
    files = {c.name: sorted(c.glob("*")) for c in classes}
    total = sum(len(v) for v in files.values())
    dest = out / "data"
    for name, paths in files.items():
        k = max(2, round(limit * len(paths) / total))
        (dest / name).mkdir(parents=True, exist_ok=True)
        for p in rng.choice(paths, k, replace=False):
            link = dest / name / p.name
            if not link.exists():
                link.symlink_to(p.resolve())
    return dest


def _median_speed(seconds: list[float], n: int) -> float:
    kept = seconds[1:] if len(seconds) > 2 else seconds
    return n / statistics.median(kept)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="Kermany folder (train/NORMAL, train/PNEUMONIA)")
    ap.add_argument("--keras-python", required=True, help="a Python with tensorflow, pandas, pillow, scipy and scikit-learn")
    ap.add_argument("--limit", type=int, default=None, help="class-stratified sample of this many images (default: all)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", default="runs/vs_notebook")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = subset(Path(a.data), out, a.limit, a.seed)

    run = out / "cxrkit"
    t0 = time.perf_counter()
    # Kermany's file names carry patient IDs; grouping by them keeps a patient's images in one split (the audit refuses otherwise).
    subprocess.run([sys.executable, "-m", "cxrkit", "train", str(data), "--out", str(run), "--epochs", str(a.epochs),
                    "--patience", str(a.epochs), "--seed", str(a.seed), "--overwrite", "--group-pattern", GROUP], check=True)
    cx_wall = time.perf_counter() - t0
    hist = list(csv.DictReader(open(run / "history.csv")))
    splits = [r for r in csv.DictReader(open(run / "splits.csv")) if r["split"] in ("train", "val") and r["decoded"] == "True"]
    n_train = sum(r["split"] == "train" for r in splits)
    split_file = out / "split.csv"
    with open(split_file, "w", newline="") as f:
        w = csv.DictWriter(f, ["path", "label", "split"])
        w.writeheader()
        w.writerows({k: r[k] for k in ("path", "label", "split")} for r in splits)
    cx = {"epoch_seconds": [float(h["train_seconds"]) for h in hist], "val_auc_per_epoch": [float(h["val_auc"]) for h in hist]}
    meta = json.loads((run / "meta.json").read_text())

    keras_out = out / "keras.json"
    t0 = time.perf_counter()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run([a.keras_python, "-c", KERAS, str(data.resolve()), str(split_file), str(a.epochs), str(keras_out)], check=True, env=env)
    k_wall = time.perf_counter() - t0
    k = json.loads(keras_out.read_text())

    cx_speed, k_speed = _median_speed(cx["epoch_seconds"], n_train), _median_speed(k["epoch_seconds"], k["n_train"])
    result = {
        "images": {"train": n_train, "val": k["n_val"]}, "epochs": a.epochs, "load_average": os.getloadavg()[0],
        "cxrkit": {"images_per_second": cx_speed, "best_val_auc": max(cx["val_auc_per_epoch"]), "val_auc_per_epoch": cx["val_auc_per_epoch"],
                   "model": meta["model"], "image_size": meta["preprocessing"]["image_size"], "precision": meta["training"]["precision"],
                   "parameters": meta["training"]["parameters_total"], "wall_seconds": cx_wall},
        "notebook": {"images_per_second": k_speed, "best_val_auc": max(k["val_auc_per_epoch"]), "val_auc_per_epoch": k["val_auc_per_epoch"],
                     "parameters": k["parameters"], "tensorflow": k["tensorflow"], "wall_seconds": k_wall},
    }
    result["speed_ratio"] = cx_speed / k_speed
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(f"\n{n_train} training / {k['n_val']} validation images, {a.epochs} epochs, load average {result['load_average']:.1f}")
    print("| | images/s (training) | best validation AUC | parameters |")
    print("|---|---|---|---|")
    print(f"| notebook (TensorFlow {k['tensorflow']} Keras, 3-block CNN, 224 px RGB) | {k_speed:.1f} | "
          f"{result['notebook']['best_val_auc']:.3f} | {k['parameters']:,} |")
    print(f"| cxrkit default ({meta['model']}, {meta['preprocessing']['image_size']} px, {meta['training']['precision']}) | {cx_speed:.1f} | "
          f"{result['cxrkit']['best_val_auc']:.3f} | {meta['training']['parameters_total']:,} |")
    print(f"speed ratio cxrkit / notebook: {result['speed_ratio']:.2f}x")


if __name__ == "__main__":
    main()
