"""Two processes on one run folder: updates of the same run wait for each other instead of losing results, and a
second training into a folder that is being trained into is refused with a one-line error naming the other process."""

from __future__ import annotations

import csv
import json
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

import cxrkit.evaluation.evaluate as evaluate_module
from cxrkit.cli import main

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="runs are locked with flock, which Windows lacks")


def _copy_run(tiny_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoint", "plots", "report.html"))
    return run


def test_two_evaluations_at_once_keep_both_results(tiny_run, binary_data, tmp_path, monkeypatch, capsys):
    run = _copy_run(tiny_run, tmp_path)
    external = tmp_path / "site2"
    shutil.copytree(binary_data / "test", external)
    monkeypatch.setattr("cxrkit.record.lock.NOTICE_AFTER_S", 0.2)
    loaded = threading.Event()
    real = evaluate_module.write_evaluation

    def slow_write(*args, **kwargs):  # the first evaluation has read the run and pauses before writing its results
        if threading.current_thread().name == "first":
            loaded.set()
            time.sleep(1.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "write_evaluation", slow_write)
    codes = {}
    first = threading.Thread(name="first", target=lambda: codes.update(first=main(["evaluate", str(run), "--explain", "none"])))
    first.start()
    assert loaded.wait(120)
    codes["second"] = main(["evaluate", str(run), str(external), "--explain", "none"])
    first.join(120)
    assert codes == {"first": 0, "second": 0}
    assert "waiting for process" in capsys.readouterr().err  # the second one said why it did not start
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"val", "test", "external:site2"} <= set(metrics)
    assert {r["split"] for r in csv.DictReader(open(run / "predictions.csv"))} == {"val", "test", "external:site2"}
    history = [e["split"] for e in json.loads((run / "meta.json").read_text())["evaluations"]]
    assert sorted(history) == ["external:site2", "test"]  # was one of the two: the last writer's meta.json won


def test_training_into_a_run_being_trained_is_refused(binary_data, tmp_path, capsys):
    from cxrkit.config import TrainConfig
    from cxrkit.training import train

    out = tmp_path / "run"
    started, release = threading.Event(), threading.Event()

    def hold(epoch: int, auc: float) -> None:
        started.set()
        assert release.wait(120)

    cfg = TrainConfig(data=str(binary_data), out=str(out), model="simple_cnn", image_size=24, epochs=1, batch_size=32, seed=0)
    first = threading.Thread(target=lambda: train(cfg, progress=False, finish=False, on_epoch=hold))
    first.start()
    try:
        assert started.wait(120)
        weights = (out / "model.safetensors").read_bytes()
        code = main(["train", str(binary_data), "--out", str(out), "--overwrite", "--image-size", "24", "--epochs", "1", "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err, err
        assert f"{out} is in use: process" in err and "(cxrkit train," in err and "choose another --out" in err, err
        assert (out / "model.safetensors").read_bytes() == weights  # the live run's files were not removed
        # evaluating it now would read a run that is being rewritten: refused too, not left waiting for hours
        assert main(["evaluate", str(out), "--explain", "none"]) == 2
        assert "is training into it" in capsys.readouterr().err
    finally:
        release.set()
        first.join(120)
    assert (out / "history.csv").is_file() and (out / "meta.json").is_file()
