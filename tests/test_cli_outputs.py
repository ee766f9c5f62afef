"""Where commands write: an output folder inside a folder of input images is refused before anything is written."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from cxrkit.cli import main


def _class_layout(binary_data: Path, root: Path) -> Path:
    """<root>/<class>/ images (no split folders), where a stray folder of PNGs under a class would be read as that class."""
    for cls in ("healthy", "tb"):
        shutil.copytree(binary_data / "train" / cls, root / cls)
    return root


@pytest.mark.parametrize("command", ["train", "compare"])
def test_a_run_inside_its_data_folder_is_refused(command, binary_data, tmp_path, capsys):
    # DATA/tb/run: the run's plots (PNG) were read as tb images by the next `cxrkit evaluate`, which scored them as test images.
    data = _class_layout(binary_data, tmp_path / "data")
    out = data / "tb" / "run"
    args = ["--model", "mlp"] if command == "train" else ["--models", "mlp,simple_cnn"]
    code = main([command, str(data), *args, "--out", str(out), "--epochs", "1", "--image-size", "16"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith(f"error: --out {out} is inside {data}: the ") and "\n" not in err
    assert err.endswith(f"plots written there would be read as images of {data} the next time it is read; choose an --out outside it")
    assert not out.exists() and sorted(p.name for p in data.iterdir()) == ["healthy", "tb"]


def test_explain_overlays_inside_the_explained_folder_are_refused(tiny_run, binary_data, tmp_path, capsys):
    # The overlays of test/tb/ written to test/tb/cam/ became 14 more tb test images of that dataset for the next evaluate.
    images = tmp_path / "tb"
    shutil.copytree(binary_data / "test" / "tb", images)
    assert main(["explain", str(tiny_run), str(images), "--out", str(images / "cam")]) == 2
    assert "is inside" in capsys.readouterr().err
    assert not (images / "cam").exists()
    assert main(["explain", str(tiny_run), str(images / sorted(p.name for p in images.iterdir())[0]), "--out", str(tmp_path / "cam"), "--quiet"]) == 0


def test_explaining_one_image_of_the_runs_data_into_its_class_folder_is_refused(tiny_run, binary_data, capsys):
    # explain DATA/test/tb/x.png --out DATA/test/tb/cam: the overlays became tb test images of the run's own data.
    folder = binary_data / "test" / "tb"
    image = sorted(folder.iterdir())[0]
    assert main(["explain", str(tiny_run), str(image), "--out", str(folder / "cam")]) == 2
    assert "is inside" in capsys.readouterr().err and not (folder / "cam").exists()


def test_a_config_files_out_inside_the_data_folder_is_refused(binary_data, tmp_path, capsys):
    data = _class_layout(binary_data, tmp_path / "data")
    config = tmp_path / "c.yaml"
    config.write_text(f"model: mlp\nepochs: 1\nimage_size: 16\nout: {data / 'tb' / 'run'}\n")
    assert main(["train", str(data), "--config", str(config)]) == 2
    assert f"error: out (in {config}) {data / 'tb' / 'run'} is inside {data}" in capsys.readouterr().err
    assert sorted(p.name for p in (data / "tb").iterdir() if not p.is_file()) == []


def test_audit_out_that_cannot_be_made_fails_before_reading_the_images(binary_data, tmp_path, monkeypatch, capsys):
    # The audit read every image and only then found that --out could not be written.
    import cxrkit.audit.dataset_audit as dataset_audit

    calls = []
    monkeypatch.setattr(dataset_audit, "audit_dataset", lambda *a, **k: calls.append(a))
    (tmp_path / "afile").write_text("x")
    assert main(["audit", str(binary_data), "--out", str(tmp_path / "afile" / "audit")]) == 2
    assert "Not a directory" in capsys.readouterr().err and calls == []


def test_a_failed_audit_leaves_no_empty_output_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["audit", str(tmp_path / "empty"), "--out", str(tmp_path / "new" / "audit")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "new").exists()


def test_adapt_out_that_cannot_be_made_fails_before_decoding(tmp_path, monkeypatch, capsys):
    # adapt decodes every image of the new site before it makes --out, and only then found it could not.
    import cxrkit.training.adapt as adapt

    calls = []
    monkeypatch.setattr(adapt, "adapt_run", lambda *a, **k: calls.append(a))
    (tmp_path / "afile").write_text("x")
    assert main(["adapt", "RUN", str(tmp_path), "--out", str(tmp_path / "afile" / "adapted")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'afile'}: Not a directory" and calls == []


def test_a_reader_that_closes_the_pipe_stops_the_command_quietly():
    # `cxrkit models | head -1` ended with "error: [Errno 32] Broken pipe" and status 2, as if the command had failed.
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "import sys; from cxrkit.cli import main; sys.exit(main(['models']))"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait() == 141 and err == b""


def test_a_closed_standard_output_does_not_stop_a_training(binary_data, tmp_path):
    # `cxrkit train ... | head -3` stopped at the first epoch line, before that epoch's checkpoint: the whole training was lost.
    import json
    import subprocess
    import sys

    out = tmp_path / "run"
    args = ["train", str(binary_data), "--out", str(out), "--model", "cnn", "--image-size", "32", "--epochs", "2", "--batch-size", "16"]
    p = subprocess.Popen([sys.executable, "-c", f"import sys; from cxrkit.cli import main; sys.exit(main({args!r}))"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.readline()  # the reader takes one line and leaves, as head does
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait() == 0, err
    assert json.loads((out / "meta.json").read_text())["complete"] is True and (out / "report.html").is_file()
    assert "note: standard output could not be written from some point on (Broken pipe); train went on and finished" in err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_standard_output_is_named_as_such():
    import subprocess
    import sys

    with open("/dev/full", "w") as full:  # "error: No space left on device" read as the disk holding the run
        p = subprocess.run([sys.executable, "-c", "import sys; from cxrkit.cli import main; sys.exit(main(['models']))"],
                           stdout=full, stderr=subprocess.PIPE, text=True)
    assert p.returncode == 2 and p.stderr.strip() == "error: standard output: No space left on device"


def test_a_cache_variable_naming_a_file_is_named(binary_data, tmp_path, monkeypatch, capsys):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("CXRKIT_CACHE", str(tmp_path / "afile"))
    assert main(["audit", str(binary_data)]) == 2  # was "error: <afile>/audit: Not a directory"
    assert capsys.readouterr().err.strip() == (f"error: cxrkit's cache folder {tmp_path / 'afile'} (from $CXRKIT_CACHE) is a file; "
                                               "point $CXRKIT_CACHE at a folder, or give --cache-dir")


def test_a_second_ctrl_c_in_train_names_resume_when_there_is_a_checkpoint(monkeypatch, capsys, tmp_path):
    import cxrkit.cli as cli

    def interrupted(a):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_train", interrupted)
    (tmp_path / "run" / "checkpoint").mkdir(parents=True)
    assert main(["train", "DATA", "--out", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err.strip() == "interrupted: the training keeps its last checkpoint; the same command with --resume continues it"
    # Ctrl-C before the first epoch ended: no checkpoint, and the message named one
    assert main(["train", "DATA", "--out", str(tmp_path / "fresh")]) == 130
    assert capsys.readouterr().err.strip() == "interrupted: no epoch finished, so nothing was kept; run the command again"


def test_the_who_tb_target_is_a_reference_line_for_another_disease_and_intervals_use_a_dash(tiny_run, capsys):
    import json

    from cxrkit.cli import _decision_summary

    m = json.loads((tiny_run / "metrics.json").read_text())["val"]
    if not m.get("who_triage"):
        pytest.skip("this evaluation has no WHO check")
    _decision_summary(m)
    out = capsys.readouterr().out
    assert "WHO TB-triage target" in out and "reference line" not in out  # the tiny run's classes are healthy / tb
    _decision_summary({**m, "classes": ["normal", "pneumonia"]})
    out = capsys.readouterr().out
    assert "(a target set for TB; for pneumonia read it as a reference line)" in out
    assert re.search(r"ECE [0-9.]+ \(95% CI [0-9.]+–[0-9.]+", out) or "ECE" not in out
