"""Training whose weights become NaN: stopped at once, an earlier good epoch kept, a one-line error otherwise."""

from __future__ import annotations

import json

import numpy as np
import pytest

import cxrkit.training.trainer as trainer_module
from cxrkit.cli import main
from cxrkit.config import TrainConfig
from cxrkit.run import Run
from cxrkit.training import train
from cxrkit.training.trainer import TrainingDivergedError


def _cfg(data, out, **kw) -> TrainConfig:
    return TrainConfig(data=str(data), out=str(out), model="cnn", image_size=32, epochs=4, batch_size=16, tta=False,
                       ema_epochs=None, **kw)


def test_divergence_before_a_good_epoch_is_a_one_line_error(binary_data, tmp_path, capsys):
    with pytest.raises(TrainingDivergedError, match=r"diverged in epoch 1 .* lower the learning rate \(--lr, now 1e\+06\)"):
        train(_cfg(binary_data, tmp_path / "api", lr=1e6), progress=False)
    # Before: all epochs ran on NaN weights, then "unexpected RuntimeError ... (a bug in cxrkit)".
    hist = (tmp_path / "api" / "history.csv").read_text().splitlines()
    assert len(hist) == 2  # header and epoch 1 only: it stopped at once
    code = main(["train", str(binary_data), "--out", str(tmp_path / "cli"), "--model", "cnn", "--image-size", "32",
                 "--epochs", "3", "--lr", "1e6", "--no-tta"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: training diverged in epoch 1") and "a bug" not in err[-1]


def test_divergence_after_a_good_epoch_keeps_that_epoch(binary_data, tmp_path, monkeypatch):
    real = trainer_module._validate

    def nan_from_epoch_2(s, t_start, epoch):
        auc, loss, time_up = real(s, t_start, epoch)
        return (float("nan"), float("nan"), time_up) if epoch >= 2 else (auc, loss, time_up)

    monkeypatch.setattr(trainer_module, "_validate", nan_from_epoch_2)
    out = tmp_path / "run"
    train(_cfg(binary_data, out, lr=1e-3), progress=False)
    meta = json.loads((out / "meta.json").read_text())["training"]
    assert (meta["stopped_by"], meta["best_epoch"], meta["epochs_run"]) == ("diverged", 1, 2)
    run = Run.load(out)
    size = run.preprocessing.image_size
    probs = run.predict_arrays(np.full((2, size, size), 90, np.uint8))
    assert np.isfinite(probs).all()
