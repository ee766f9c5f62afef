"""Resumable work: a training run interrupted after an epoch and resumed ends where an uninterrupted one
does; an interrupted cache build continues without decoding finished chunks again."""

from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
import pytest
from safetensors.torch import load_file

import cxrkit.data.cache as cache_module
from cxrkit.config import TrainConfig
from cxrkit.data.cache import load_cached
from cxrkit.data.synthetic import make_synthetic_dataset
from cxrkit.training import train
from cxrkit.training.checkpoint import find_checkpoint


class Stop(Exception):
    pass


def _history(run) -> list[tuple[float, float, float]]:
    return [(float(r["train_loss"]), float(r["val_loss"]), float(r["val_auc"])) for r in csv.DictReader(open(run / "history.csv"))]


# The raw weights, best epoch kept; and a run whose checkpoint must also carry the weight average, MixStyle's random
# state and the state mixup draws from, keeping its last epoch.
@pytest.mark.parametrize("options", [
    {"model": "simple_cnn", "ema_epochs": None},
    {"model": "cnn", "ema_epochs": 1.0, "mixstyle": 0.5, "mixup": 0.4, "keep": "last", "augment": {"rotate_degrees": 0}},
], ids=["raw-weights", "averaged-mixstyle-mixup-last"])
def test_interrupted_training_resumes_to_the_same_result(tmp_path, options):
    data = make_synthetic_dataset(tmp_path / "d", n_per_class=30, size=24, seed=2, signal=1.0)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "full"), image_size=24, epochs=4, patience=10,
                      batch_size=16, lr=2e-3, seed=0, precision="32", schedule="cosine", **options)
    full = train(cfg, progress=False, finish=False)

    def interrupt(epoch: int, auc: float) -> None:
        if epoch == 2:
            raise Stop

    part = replace(cfg, out=str(tmp_path / "part"))
    with pytest.raises(Stop):
        train(part, progress=False, on_epoch=interrupt, finish=False)
    assert find_checkpoint(tmp_path / "part") is not None and len(_history(tmp_path / "part")) == 2
    with pytest.raises(ValueError, match="differ: lr"):
        train(replace(part, lr=1e-3), progress=False, resume=True, finish=False)
    resumed = train(part, progress=False, resume=True, finish=False)
    assert _history(resumed) == _history(full)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    # resuming a finished run trains nothing more and gives the same files again
    again = train(part, progress=False, resume=True, finish=False)
    assert _history(again) == _history(full)


def test_interrupted_cache_build_resumes(tmp_path, monkeypatch):
    data = make_synthetic_dataset(tmp_path / "d", n_per_class=50, size=24, seed=1)
    paths = sorted(data.rglob("*.png"))
    paths.append(tmp_path / "broken.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    reference = load_cached(paths, 16, cache_dir=tmp_path / "ref", progress=False, workers=1)
    calls = []
    real = cache_module._decode_chunk

    def flaky(job):
        calls.append(job[1])
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(cache_module, "_decode_chunk", flaky)
    with pytest.raises(KeyboardInterrupt):
        load_cached(paths, 16, cache_dir=tmp_path / "c", progress=False, workers=1, chunk=16)
    assert list((tmp_path / "c" / "images").glob("*.partial"))
    first_run = list(calls)
    calls.clear()
    monkeypatch.setattr(cache_module, "_decode_chunk", lambda job: (calls.append(job[1]), real(job))[1])
    resumed = load_cached(paths, 16, cache_dir=tmp_path / "c", progress=False, workers=1, chunk=16)
    assert first_run == [0, 16, 32, 48] and calls[0] == 48 and 0 not in calls  # the three finished chunks are not decoded again
    np.testing.assert_array_equal(np.asarray(resumed.images), np.asarray(reference.images))
    assert resumed.errors == reference.errors and list(resumed.errors) == [len(paths) - 1]
    assert not list((tmp_path / "c" / "images").glob("*.partial"))
    monkeypatch.undo()
    parallel = load_cached(paths, 16, cache_dir=tmp_path / "p", progress=False, workers=2, chunk=16)
    np.testing.assert_array_equal(np.asarray(parallel.images), np.asarray(reference.images))


def test_resume_of_a_run_that_never_reached_a_checkpoint_starts_afresh(tmp_path):
    """The disk filled before the first checkpoint: every message advised --resume, which was refused ('already holds a run')."""
    import json

    from cxrkit.training.trainer import prepare_run_folder

    out = tmp_path / "run"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"epoch 1")
    (out / "history.csv").write_text("epoch\n1\n")
    with pytest.raises(FileExistsError, match="already holds a run"):
        prepare_run_folder(out, overwrite=False)
    prepare_run_folder(out, overwrite=False, resume=True)
    assert not (out / "model.safetensors").exists()
    (out / "meta.json").write_text(json.dumps({"complete": True}))  # a finished run is never replaced by --resume
    with pytest.raises(FileExistsError, match="already holds a run"):
        prepare_run_folder(out, overwrite=False, resume=True)


def test_resume_of_a_run_killed_during_its_audit_says_it_starts_afresh(tmp_path, capsys):
    # Only audit.json was written: --resume trained a new run without a word that nothing was being continued.
    from cxrkit.cli import main
    from cxrkit.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "d", n_per_class=20, size=32, seed=0)
    out = tmp_path / "run"
    out.mkdir()
    (out / "audit.json").write_text("{}")
    assert main(["train", str(data), "--out", str(out), "--resume", "--epochs", "1", "--model", "cnn", "--quiet"]) == 0
    assert (f"note: {out} has no config.yaml (it stopped before training began): --resume starts it afresh with the options "
            "given here") in capsys.readouterr().err


def test_sigterm_stops_a_training_with_a_message_and_resume_continues_it(tmp_path):
    # A job scheduler's SIGTERM killed the process without a word (Ctrl-C was handled, SIGTERM was not).
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    data = make_synthetic_dataset(tmp_path / "d", n_per_class=30, size=24, seed=2)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "cxrkit", "train", str(data), "--out", str(out), "--epochs", "60", "--patience", "60", "--model",
               "simple_cnn", "--image-size", "24", "--quiet"]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while find_checkpoint(out) is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().endswith("terminated (SIGTERM): train stopped before finishing. The training keeps its last checkpoint: the "
                                "same command with --resume continues it."), err
    stopped_at = len(_history(out))
    assert find_checkpoint(out) is not None and stopped_at >= 1

    def one_more(epoch: int, auc: float) -> None:
        raise Stop(epoch)

    with pytest.raises(Stop) as resumed:  # the checkpoint continues where the signal stopped it
        train(TrainConfig.load_saved(out / "config.yaml"), progress=False, resume=True, on_epoch=one_more, finish=False)
    assert resumed.value.args[0] in (stopped_at, stopped_at + 1)  # the signal may land between the history row and its checkpoint
