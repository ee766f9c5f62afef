"""``keep: last`` (and the default, ``auto``, without early stopping) keeps the final epoch's weights instead of the
best on validation (BENCHMARKS.md, round 6).

Validation AUCs are forced to fall epoch by epoch, so "best" and "last" must disagree: the best is epoch 1."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

import cxrkit.training.trainer as trainer
from cxrkit.cli import _config_from_args, build_parser
from cxrkit.config import ConfigError, TrainConfig
from cxrkit.data.synthetic import make_synthetic_dataset
from cxrkit.training import train


@pytest.fixture()
def falling_auc(monkeypatch):
    real = trainer._validate

    def validate(s, t_start, epoch):
        _, loss, time_up = real(s, t_start, epoch)
        return 1.0 - 0.1 * epoch, loss, time_up

    monkeypatch.setattr(trainer, "_validate", validate)


def _meta(run) -> dict:
    return json.loads((run / "meta.json").read_text())["training"]


def test_keep_last_keeps_the_final_weights_and_best_the_best_epoch(tmp_path, falling_auc):
    data = make_synthetic_dataset(tmp_path / "d", n_per_class=20, size=24, seed=2, signal=1.0)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "best"), model="simple_cnn", image_size=24, epochs=4, batch_size=16,
                      lr=2e-3, seed=0, precision="32", ema_epochs=None, augment={"rotate_degrees": 0})
    best = train(replace(cfg, keep="best"), progress=False, finish=False)
    last = train(replace(cfg, out=str(tmp_path / "last")), progress=False, finish=False)  # the default, auto: no patience -> last

    assert (_meta(best)["best_epoch"], _meta(best)["keep"]) == (1, "best")
    m = _meta(last)
    assert (m["best_epoch"], m["keep"], m["epochs_run"]) == (4, "last", 4)
    assert m["best_val_auc"] == pytest.approx(0.6)
    kept = load_file(str(last / "model.safetensors"))
    final = load_file(str(last / "checkpoint" / "tensors.safetensors"))
    assert all(torch.equal(kept[k], final[f"model.{k}"]) for k in kept)
    first = load_file(str(best / "model.safetensors"))  # same seed: epoch 1 of both runs is the same computation
    assert any(not torch.equal(kept[k], first[k]) for k in kept if kept[k].is_floating_point())
    # a finished run resumed keeps the last epoch again (the checkpoint holds its weights)
    again = train(replace(cfg, out=str(last)), progress=False, resume=True, finish=False)
    assert _meta(again)["best_epoch"] == 4
    assert all(torch.equal(kept[k], v) for k, v in load_file(str(again / "model.safetensors")).items())


def test_keep_last_after_an_interruption_keeps_the_best_epoch(tmp_path, falling_auc, capsys):
    data = make_synthetic_dataset(tmp_path / "d", n_per_class=20, size=24, seed=2, signal=1.0)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), model="simple_cnn", image_size=24, epochs=4, batch_size=16,
                      lr=2e-3, seed=0, precision="32", ema_epochs=None, keep="last", augment={"rotate_degrees": 0})

    def stop_after_two(epoch: int, auc: float) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    run = train(cfg, progress=True, finish=False, on_epoch=stop_after_two)
    # the interruption came between epochs, after epoch 2's checkpoint: its weights are whole, but the run was cut short,
    # so the rule for an interrupted run holds (the best epoch), and the log says why
    assert _meta(run)["interrupted"] and _meta(run)["best_epoch"] == 1
    assert "keeping the last epoch: epoch 2 is not usable (interrupted); keeping epoch 1" in capsys.readouterr().out


@pytest.mark.parametrize("keep, kept", [("auto", 1), ("last", 2)])
def test_a_run_the_time_limit_cuts_short_keeps_the_best_epoch_unless_told_last(tmp_path, monkeypatch, keep, kept):
    real = trainer._validate

    def validate(s, t_start, epoch):  # falling validation AUC, and the clock runs out after epoch 2 of 4
        _, loss, _ = real(s, t_start, epoch)
        return 1.0 - 0.1 * epoch, loss, epoch >= 2

    monkeypatch.setattr(trainer, "_validate", validate)
    data = make_synthetic_dataset(tmp_path / "d", n_per_class=20, size=24, seed=2, signal=1.0)
    run = train(TrainConfig(data=str(data), out=str(tmp_path / "run"), model="simple_cnn", image_size=24, epochs=4, batch_size=16,
                            seed=0, precision="32", ema_epochs=None, max_minutes=60, keep=keep), progress=False, finish=False)
    m = _meta(run)
    assert (m["stopped_by"], m["epochs_run"], m["best_epoch"], m["keep"]) == ("time limit", 2, kept, "best" if kept == 1 else "last")


def test_keep_is_validated_and_on_the_command_line():
    with pytest.raises(ConfigError, match=r"keep \(--keep\) must be one of auto, best, last"):
        TrainConfig(data="d", keep="worst")
    # auto: the last epoch of a whole schedule, the best one when early stopping ends the run
    assert TrainConfig(data="d").keep == "auto" and TrainConfig(data="d").resolved_keep() == "last"
    assert TrainConfig(data="d", patience=3).resolved_keep() == "best"
    assert TrainConfig(data="d", patience=3, keep="last").resolved_keep() == "last"
    args = build_parser().parse_args(["train", "data", "--keep", "last"])
    assert _config_from_args(args, "data", "out").keep == "last"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "data", "--keep", "worst"])


def test_the_report_says_which_epoch_was_kept_and_every_augmentation_used(tmp_path):
    import html
    import re

    data = make_synthetic_dataset(tmp_path / "d", n_per_class=20, size=24, seed=2, signal=1.0)
    run = train(TrainConfig(data=str(data), out=str(tmp_path / "run"), model="simple_cnn", image_size=24, epochs=2,
                            batch_size=16, seed=0, precision="32"), progress=False)  # default keep and augmentation
    text = html.unescape(re.sub(r"<[^>]+>", "", (run / "report.html").read_text()))
    assert "was kept: the last epoch (keep: last)" in text
    # the robust preset, every part of it: gamma exp(+-0.4), blur, noise and flips, not only the affine part
    assert "contrast ±30.0%, gamma 0.67–1.49, Gaussian blur up to 1.0 px, noise up to SD 0.03;" in text
    assert "horizontal flip on." in text
