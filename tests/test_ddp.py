"""Data-parallel training: two CPU processes (gloo) started by torchrun train the same model a single process does."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed

from cxrkit.config import TrainConfig
from cxrkit.data.augment import AugmentConfig
from cxrkit.data.synthetic import make_synthetic_dataset
from cxrkit.training import train


def _val(run: Path) -> list[tuple[float, float]]:
    return [(float(r["val_loss"]), float(r["val_auc"])) for r in csv.DictReader(open(run / "history.csv"))]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="no gloo backend")
def test_two_process_ddp_matches_single_process(tmp_path):
    data = make_synthetic_dataset(tmp_path / "d", n_per_class=50, size=32, seed=4, signal=2.0)
    cache = tmp_path / "cache"
    args = ["--model", "simple_cnn", "--image-size", "32", "--epochs", "2", "--batch-size", "16", "--precision", "32", "--seed", "0",
            "--no-augment", "--cache-dir", str(cache)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cxrkit", "train", str(data),
           "--out", str(tmp_path / "ddp"), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((tmp_path / "ddp" / "meta.json").read_text())
    assert meta["training"]["processes"] == 2 and meta["training"]["epochs_run"] == 2
    assert (tmp_path / "ddp" / "report.html").is_file()
    single = train(TrainConfig(data=str(data), out=str(tmp_path / "one"), model="simple_cnn", image_size=32, epochs=2, batch_size=16,
                               precision="32", seed=0, augment=AugmentConfig(0, 0, 0, 0, 0, False), cache_dir=str(cache)),
                   progress=False, finish=False)
    for (loss_d, auc_d), (loss_s, auc_s) in zip(_val(tmp_path / "ddp"), _val(single)):
        # Same global batches and averaged gradients; only batch-norm statistics are per process.
        assert abs(auc_d - auc_s) <= 0.05 and abs(loss_d - loss_s) <= 0.02 * loss_s
