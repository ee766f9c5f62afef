"""A full disk or a read-only run folder while cxrkit writes a run: a one-line error naming the file and the reason
(exit status 2, never a traceback), and the run's files as they were: no half-written file, no temporary left over,
no metrics.json that has results predictions.csv and meta.json lack."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

import cxrkit.record.files as files_module
from cxrkit.cli import main


def _copy_run(tiny_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoint", "plots"))
    return run


def _fail_writing(monkeypatch, name: str, code: int) -> None:
    """Writing a file called ``name`` fails with ``code`` after half its content (a disk filling up), others are written."""
    real = files_module._write_file

    def write(path: Path, text: str, newline: str | None = None) -> None:
        if Path(path).name.startswith(name + ".tmp-"):
            real(path, text[: len(text) // 2], newline)
            raise OSError(code, os.strerror(code))
        real(path, text, newline)

    monkeypatch.setattr(files_module, "_write_file", write)


def _contents(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".cxrkit.lock"}


@pytest.mark.parametrize("name, code", [
    ("metrics.json", errno.ENOSPC), ("predictions.csv", errno.ENOSPC), ("meta.json", errno.ENOSPC), ("report.html", errno.EROFS),
])
def test_evaluate_that_cannot_write_leaves_the_run_as_it_was(name, code, tiny_run, binary_data, tmp_path, monkeypatch, capsys):
    run = _copy_run(tiny_run, tmp_path)
    external = tmp_path / "site2"
    shutil.copytree(binary_data / "test", external)
    before = _contents(run)
    _fail_writing(monkeypatch, name, code)
    assert main(["evaluate", str(run), str(external), "--explain", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: {run / name}: cannot be written ({os.strerror(code)})"), err
    assert _contents(run) == before  # metrics, predictions, history and report all as before: none of them half-updated


def _fail_drawing(monkeypatch, name: str, code: int) -> None:
    """Saving the figure ``name`` (in plots/) fails with ``code`` after writing part of it; other figures are saved."""
    from matplotlib.figure import Figure

    real = Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        if isinstance(fname, (str, os.PathLike)) and Path(fname).name.startswith(name + ".tmp-"):
            Path(fname).write_bytes(b"\x89PNG half a figure")
            raise OSError(code, os.strerror(code))
        return real(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)


def _figures(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (run / "plots").iterdir()}


@pytest.mark.parametrize("name, code, explain", [
    ("metrics.json", errno.ENOSPC, "gradcam"),  # the heat-map figures are drawn before the metrics are written
    ("plots/confusion_external_site2.png", errno.ENOSPC, "none"),  # a figure itself, after the ROC and PR curves
    ("report.html", errno.EROFS, "none"),  # after every figure
])
def test_evaluate_that_cannot_write_leaves_the_previous_plots(name, code, explain, tiny_run, binary_data, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoint"))
    external = tmp_path / "site2"
    shutil.copytree(binary_data / "test", external)
    (run / "plots" / "roc_external_site2.png").write_bytes(b"an earlier evaluation's ROC curve of site2")
    before, figures = _contents(run), _figures(run)
    if name.startswith("plots/"):
        _fail_drawing(monkeypatch, Path(name).name, code)
    else:
        _fail_writing(monkeypatch, name, code)
    assert main(["evaluate", str(run), str(external), "--explain", explain]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: {run / name}: cannot be written ({os.strerror(code)})"), err
    assert _figures(run) == figures  # no figure of the failed evaluation, the earlier one of site2 as it was
    assert _contents(run) == before
    assert not [p for p in run.rglob("*") if ".bak-" in p.name or ".tmp-" in p.name]


def test_training_on_a_full_disk_says_which_file(binary_data, tmp_path, monkeypatch, capsys):
    from safetensors import SafetensorError

    def full(state, path, *a, **k):  # safetensors reports I/O errors as its own exception, not as OSError
        Path(path).write_bytes(b"\0" * 10)
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left on device\" })")

    monkeypatch.setattr("safetensors.torch.save_file", full)
    out = tmp_path / "run"
    code = main(["train", str(binary_data), "--out", str(out), "--image-size", "24", "--epochs", "1", "--model", "simple_cnn", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and err.startswith(f"error: {out / 'model.safetensors'}: cannot be written ("), err
    assert "No space left on device" in err
    assert not (out / "model.safetensors").exists() and not list(out.glob("*.tmp-*"))  # no half-written weights


def _run_with_plots(tiny_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoint", "model*.onnx*"))
    return run


@pytest.mark.parametrize("name, code", [
    ("calibration.json", errno.ENOSPC),  # the first write
    ("meta.json", errno.ENOSPC),  # the second: calibration.json is written by then and must go again
    ("metrics.json", errno.ENOSPC), ("report.html", errno.EROFS),
])
def test_calibrate_that_cannot_write_leaves_the_run_as_it_was(name, code, tiny_run, tmp_path, monkeypatch, capsys):
    run = _run_with_plots(tiny_run, tmp_path)
    before, figures = _contents(run), _figures(run)
    assert "calibration.json" not in before
    _fail_writing(monkeypatch, name, code)
    assert main(["calibrate", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: {run / name}: cannot be written ({os.strerror(code)})"), err
    assert _contents(run) == before  # not a calibrated threshold without its calibration.json, nor the reverse
    assert _figures(run) == figures
    assert not [p for p in run.rglob("*") if ".bak-" in p.name or ".tmp-" in p.name]


def test_calibrate_interrupted_in_the_report_leaves_the_run_as_it_was(tiny_run, tmp_path, monkeypatch, capsys):
    run = _run_with_plots(tiny_run, tmp_path)
    before, figures = _contents(run), _figures(run)

    def interrupted(run_dir):  # Ctrl-C while the report renders: every other file is written by then
        assert (Path(run_dir) / "calibration.json").is_file()
        raise KeyboardInterrupt

    monkeypatch.setattr("cxrkit.report.html.write_report", interrupted)
    assert main(["calibrate", str(run)]) == 130
    assert _contents(run) == before and _figures(run) == figures


def test_calibrate_remove_that_cannot_write_keeps_the_calibration(tiny_run, tmp_path, monkeypatch, capsys):
    run = _run_with_plots(tiny_run, tmp_path)
    assert main(["calibrate", str(run)]) == 0
    capsys.readouterr()  # the calibration's own output (a warning when it makes ECE worse) is not the removal's error
    before = _contents(run)
    assert "calibration.json" in before and "uncalibrated_value" in before["meta.json"].decode()
    _fail_writing(monkeypatch, "meta.json", errno.ENOSPC)
    assert main(["calibrate", str(run), "--remove"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: {run / 'meta.json'}: cannot be written"), err
    assert _contents(run) == before  # calibration.json not deleted under a threshold chosen on calibrated probabilities


def test_training_that_cannot_write_its_results_can_be_finished_with_resume(binary_data, tmp_path, monkeypatch, capsys):
    from cxrkit.run import Run, RunError

    out = tmp_path / "run"
    args = ["train", str(binary_data), "--out", str(out), "--image-size", "24", "--epochs", "1", "--model", "simple_cnn", "--quiet"]
    with monkeypatch.context() as m:
        _fail_writing(m, "metrics.json", errno.ENOSPC)  # the second write of the end of training: the threshold is chosen by then
        assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: {out / 'metrics.json'}: cannot be written ({os.strerror(errno.ENOSPC)})"), err
    assert "--resume" in err, err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["complete"] is False and (meta.get("threshold") or {}).get("value") is None  # no threshold without its validation results
    assert not (out / "metrics.json").exists() and not (out / "predictions.csv").exists() and not (out / "report.html").exists()
    with pytest.raises(RunError, match="incomplete"):
        Run.load(out)
    assert not [p for p in out.rglob("*") if ".bak-" in p.name or ".tmp-" in p.name]
    assert main([*args, "--resume"]) == 0, capsys.readouterr().err
    run = Run.load(out)
    assert run.threshold is not None and "val" in json.loads((out / "metrics.json").read_text())


# ---- kill -9 in the middle of an all-or-nothing update: the next command finishes the rollback ---------------------

_KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from cxrkit.record.files import all_or_nothing, atomic_write_text as write
run = Path(sys.argv[1])
with all_or_nothing([run / "meta.json", run / "metrics.json", run / "report.html"], [run / "plots"]):
    write(run / "meta.json", "NEW meta")          # written as cxrkit writes: a new file renamed over the old
    write(run / "report.html", "NEW report")      # a file the update creates
    write(run / "plots" / "roc.png", "NEW roc")   # a changed plot
    write(run / "plots" / "extra.png", "NEW")     # a plot the update adds
    if sys.argv[2] == "kill-inside":
        os.kill(os.getpid(), signal.SIGKILL)
    # the update is complete once the body ends; a kill while the rollback links are being removed keeps it
    import cxrkit.record.files as f
    f.shutil.rmtree = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
"""


def _run_folder(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "plots").mkdir(parents=True)
    (run / "meta.json").write_text("OLD meta")
    (run / "metrics.json").write_text("OLD metrics")
    (run / "plots" / "roc.png").write_text("OLD roc")
    (run / "plots" / "pr.png").write_text("OLD pr")
    return run


def _killed(run: Path, where: str, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    script = tmp_path / "writer.py"
    script.write_text(_KILLED_WRITER)
    proc = subprocess.run([sys.executable, str(script), str(run), where], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def _state(run: Path) -> dict:
    return {p.relative_to(run).as_posix(): p.read_text() for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".cxrkit.lock"}


def test_an_update_killed_half_way_is_rolled_back_by_the_next_command(tmp_path, capsys):
    from cxrkit.record.lock import run_lock

    run = _run_folder(tmp_path)
    before = _state(run)
    _killed(run, "kill-inside", tmp_path)
    left = _state(run)
    assert left["meta.json"] == "NEW meta" and any(name.startswith(".cxrkit-update-") for name in left)  # half-new, journal
    with run_lock(run, "evaluate"):
        assert _state(run) == before  # every file and plot as before the update, nothing added, no leftovers
    assert "was cut off before it ended; its files were put back as they were before it" in capsys.readouterr().err
    with run_lock(run, "evaluate"):
        pass
    assert _state(run) == before and "cut off" not in capsys.readouterr().err  # done once


def test_an_update_killed_after_it_ended_is_kept(tmp_path, capsys):
    from cxrkit.record.lock import run_lock

    run = _run_folder(tmp_path)
    _killed(run, "kill-after", tmp_path)
    assert any(".bak-" in name for name in _state(run))  # its rollback links were still there
    with run_lock(run, "evaluate"):
        state = _state(run)
    assert state == {"meta.json": "NEW meta", "metrics.json": "OLD metrics", "report.html": "NEW report",
                     "plots/extra.png": "NEW", "plots/pr.png": "OLD pr", "plots/roc.png": "NEW roc"}
    assert "cut off" not in capsys.readouterr().err
