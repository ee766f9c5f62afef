"""Two processes on one run folder: updates of the same run wait for each other instead of losing results, and a
second training into a folder that is being trained into is refused with a one-line error naming the other process."""

from __future__ import annotations

import csv
import json
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import cxrkit.evaluation.evaluate as evaluate_module
from cxrkit.cli import main

from .conftest import record_decision

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="runs are locked with flock, which Windows lacks")


def _copy_run(tiny_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    # tiny_run is shared by the session: test_export_predict may have exported it already, and an ONNX file in the copy
    # would make "nothing was exported" unobservable.
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoint", "plots", "report.html", "model*.onnx*"))
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


@contextmanager
def _held(run: Path, command: str) -> Iterator[threading.Event]:
    """Another holder of ``run``'s lock, as ``cxrkit COMMAND`` (a thread: flock is per open file, so it excludes this
    thread's own lock too); set the event to release it."""
    from cxrkit.record.lock import run_lock

    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with run_lock(run, command, wait=False):
            holding.set()
            release.wait(120)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert holding.wait(30)
        yield release
    finally:
        release.set()
        thread.join(30)


def test_export_refuses_a_run_being_trained_into(tiny_run, tmp_path, capsys):
    run = _copy_run(tiny_run, tmp_path)
    with _held(run, "train"):
        code = main(["export", str(run)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert f"{run} is in use: process" in err and "is training into it; run `cxrkit export` when it has finished" in err, err
    assert not list(run.glob("model*.onnx*"))  # nothing written beside weights that are being replaced


def test_export_waits_for_an_evaluation_of_the_run(tiny_run, tmp_path, monkeypatch, capsys):
    run = _copy_run(tiny_run, tmp_path)
    monkeypatch.setattr("cxrkit.record.lock.NOTICE_AFTER_S", 0.2)
    written_while_held = []
    with _held(run, "evaluate") as release:
        timer = threading.Timer(1.0, lambda: (written_while_held.append((run / "model.onnx").exists()), release.set()))
        timer.start()
        code = main(["export", str(run)])
        timer.join()
    err = capsys.readouterr().err
    assert code == 0, err
    assert "waiting for process" in err and "(cxrkit evaluate," in err, err
    assert written_while_held == [False] and (run / "model.onnx").is_file()  # written once the evaluation had finished


def _new_site(root: Path, n: int = 16) -> Path:
    """Unlabelled images of another site for `cxrkit adapt` (its minimum is 16)."""
    import numpy as np
    from PIL import Image

    from cxrkit.data.synthetic import synthetic_cxr

    rng = np.random.default_rng(7)
    root.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(synthetic_cxr(rng, 48, pattern=i % 2)).save(root / f"x{i:03d}.png")
    return root


def _adapt(tiny_run: Path, site: Path, out: Path) -> int:
    return main(["adapt", str(tiny_run), str(site), "--out", str(out), "--batch-size", "16", "--overwrite"])


def _files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".cxrkit.lock"}


def test_adapt_overwrite_refuses_a_run_being_trained_into(tiny_run, tmp_path, capsys):
    site = _new_site(tmp_path / "site")
    out = tmp_path / "adapted"
    assert _adapt(tiny_run, site, out) == 0
    before = _files(out)
    capsys.readouterr()
    with _held(out, "train"):
        code = _adapt(tiny_run, site, out)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert f"{out} is in use: process" in err and "is training into it; run `cxrkit adapt` when it has finished" in err, err
    assert _files(out) == before  # the folder being trained into was not emptied


def test_adapt_overwrite_waits_for_an_evaluation_of_its_output(tiny_run, tmp_path, monkeypatch, capsys):
    site = _new_site(tmp_path / "site")
    out = tmp_path / "adapted"
    assert _adapt(tiny_run, site, out) == 0
    (out / "metrics.json").write_text("{}")  # what the evaluation being waited for has written
    monkeypatch.setattr("cxrkit.record.lock.NOTICE_AFTER_S", 0.2)
    capsys.readouterr()
    kept_while_held = []
    with _held(out, "evaluate") as release:
        timer = threading.Timer(1.0, lambda: (kept_while_held.append((out / "metrics.json").exists()), release.set()))
        timer.start()
        code = _adapt(tiny_run, site, out)
        timer.join()
    err = capsys.readouterr().err
    assert code == 0, err
    assert "waiting for process" in err and "(cxrkit evaluate," in err, err
    assert kept_while_held == [True]  # the folder was not emptied under the evaluation
    assert (out / "meta.json").is_file() and not (out / "metrics.json").exists()  # then replaced by the adapted run


def test_rollback_copies_of_a_killed_evaluation_are_removed_by_the_next_one(tiny_run, tmp_path):
    import subprocess

    run = _copy_run(tiny_run, tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its id is now no process's: like an evaluation killed with kill -9 half-way through its writes
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        stale = run / f"metrics.json.bak-{gone.pid}"
        stale.write_text('{"val": "an older metrics.json"}')
        (run / f"predictions.csv.bak-{gone.pid}").write_text("split,path\n")
        (run / f"plots.bak-{gone.pid}").mkdir()  # the rollback copy of plots/ is a folder of hard links
        (run / f"plots.bak-{gone.pid}" / "roc_test.png").write_bytes(b"an older figure")
        kept = run / f"meta.json.bak-{live.pid}"
        kept.write_text("a live process's rollback copy")
        assert main(["evaluate", str(run), "--explain", "none"]) == 0
        assert not list(run.glob(f"*.bak-{gone.pid}"))
        assert kept.read_text() == "a live process's rollback copy"  # never touched while its process runs
    finally:
        live.kill()
        live.wait()
    metrics = json.loads((run / "metrics.json").read_text())  # the real files are the evaluation's, whole
    assert {"val", "test"} <= set(metrics)
    assert {r["split"] for r in csv.DictReader(open(run / "predictions.csv"))} == {"val", "test"}
    assert [e["split"] for e in json.loads((run / "meta.json").read_text())["evaluations"]] == ["test"]


def test_adapt_refuses_a_source_run_being_trained_into(tiny_run, tmp_path, capsys):
    run = _copy_run(tiny_run, tmp_path)
    site = _new_site(tmp_path / "site")
    out = tmp_path / "adapted"
    with _held(run, "train"):
        started = time.monotonic()
        code = main(["adapt", str(run), str(site), "--out", str(out), "--batch-size", "16"])
        waited = time.monotonic() - started
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert f"{run} is in use: process" in err and "is training into it; run `cxrkit adapt` when it has finished" in err, err
    assert waited < 30  # refused at once: the holder would have kept it for 120 s
    assert not out.exists()  # no copy of weights that are being replaced


def test_adapt_waits_for_a_calibration_of_its_source(tiny_run, tmp_path, monkeypatch, capsys):
    run = _copy_run(tiny_run, tmp_path)
    site = _new_site(tmp_path / "site")
    out = tmp_path / "adapted"
    monkeypatch.setattr("cxrkit.record.lock.NOTICE_AFTER_S", 0.2)
    meta = json.loads((run / "meta.json").read_text())
    assert meta["threshold"]["value"] != 0.125

    def calibrated(release: threading.Event) -> None:  # the calibration's last write, the re-chosen threshold, then it ends
        meta["threshold"]["value"] = 0.125
        (run / "meta.json").write_text(json.dumps(meta))
        record_decision(run)  # sealed, as cxrkit calibrate writes it
        release.set()

    with _held(run, "calibrate") as release:
        timer = threading.Timer(1.0, calibrated, [release])
        timer.start()
        code = main(["adapt", str(run), str(site), "--out", str(out), "--batch-size", "16"])
        timer.join()
    err = capsys.readouterr().err
    assert code == 0, err
    assert "waiting for process" in err and "(cxrkit calibrate," in err, err
    assert json.loads((out / "meta.json").read_text())["threshold"]["value"] == 0.125  # the source as the calibration left it


def test_adapt_into_its_own_source_is_refused_without_waiting(tiny_run, tmp_path, capsys):
    run = _copy_run(tiny_run, tmp_path)
    site = _new_site(tmp_path / "site")
    alias = tmp_path / "alias"
    alias.symlink_to(run, target_is_directory=True)
    before = _files(run)
    with _held(run, "evaluate"):  # a wait here would last the holder's 120 s; two locks on one folder would wait for ever
        started = time.monotonic()
        code = main(["adapt", str(run), str(site), "--out", str(alias), "--batch-size", "16", "--overwrite"])
        waited = time.monotonic() - started
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "--out must be a new folder" in err, err
    assert waited < 30 and _files(run) == before


def test_adapt_reads_a_source_it_cannot_lock(tiny_run, tmp_path, monkeypatch, capsys):
    import errno
    import os

    run = _copy_run(tiny_run, tmp_path)
    (run / ".cxrkit.lock").unlink(missing_ok=True)
    site = _new_site(tmp_path / "site")
    out = tmp_path / "adapted"
    real_open = os.open

    def read_only_source(path, flags, *args, **kwargs):  # the source folder is on a read-only mount (or another user's)
        if Path(path).parent == run and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_source)
    code = main(["adapt", str(run), str(site), "--out", str(out), "--batch-size", "16"])
    assert code == 0, capsys.readouterr().err  # adapt only reads the source: nothing there needs writing
    assert (out / "model.safetensors").is_file() and not (run / ".cxrkit.lock").exists()


def test_temporary_files_of_a_killed_writer_are_removed_by_the_next_command(tiny_run, tmp_path):
    import os
    import subprocess

    run = _copy_run(tiny_run, tmp_path)
    (run / "plots").mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its id is now no process's: like a writer killed with kill -9 before renaming its temporary file
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        stale = [run / f"metrics.json.tmp-{gone.pid}", run / "plots" / f"roc_test.png.tmp-{gone.pid}",
                 run / f"model.onnx.tmp-{gone.pid}", run / f"model.int8.onnx.pre-{gone.pid}"]
        for p in stale:
            p.write_bytes(b"half a file")
        (run / f"checkpoint.tmp-{gone.pid}").mkdir()  # a checkpoint is written as a temporary folder
        (run / f"checkpoint.tmp-{gone.pid}" / "tensors.safetensors").write_bytes(b"half the tensors")
        kept = [run / f"model.onnx.tmp-{os.getpid()}", run / f"history.csv.tmp-{live.pid}", run / "plots" / f"pr_test.png.tmp-{live.pid}",
                run / "notes.tmp-draft"]  # live writers' files, and a name that is no process's
        for p in kept:
            p.write_bytes(b"being written")
        assert main(["evaluate", str(run), "--explain", "none"]) == 0
        assert not [p for p in stale if p.exists()] and not (run / f"checkpoint.tmp-{gone.pid}").exists()
        assert [p.read_bytes() for p in kept] == [b"being written"] * len(kept)  # never touched while their process runs
    finally:
        live.kill()
        live.wait()
    assert {"val", "test"} <= set(json.loads((run / "metrics.json").read_text()))
