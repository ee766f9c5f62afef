"""A new user's first hour at the command line: what predict/explain say about skipped files, explain's --device and
--quiet, the user's own .zip path in messages, the time estimate before a long training run, flags in config errors."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from cxrkit.cli import build_parser, main
from cxrkit.config import CLI_FLAGS, ConfigError, TrainConfig

# ---- config errors name the command-line flag ---------------------------------------------------------------------


def test_every_config_flag_is_an_option_of_train():
    train = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
    options = {o for a in train._actions for o in a.option_strings}
    assert CLI_FLAGS and set(CLI_FLAGS.values()) <= options
    assert CLI_FLAGS["batch_size"] == "--batch-size" and CLI_FLAGS["augment.rotate_degrees"] == "--rotate"
    assert "data" not in CLI_FLAGS and "channels_last" not in CLI_FLAGS  # no option sets them


@pytest.mark.parametrize("text, message", [
    ("epochs: 0\n", "epochs (--epochs) must be at least 1"),
    ("batch_size: abc\n", "batch_size (--batch-size): input should be a valid integer"),
    ("val_fraction: 0.7\ntest_fraction: 0.5\n", "val_fraction (--val-fraction) and test_fraction (--test-fraction) must each be"),
    ("augment: {erase_edges: 2}\n", "augment.erase_edges (--erase-edges) is a probability"),
])
def test_config_file_error_names_key_and_flag(text, message, binary_data, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    assert main(["train", str(binary_data), "--config", str(cfg), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {cfg}: {message}" or err.startswith(f"error: {cfg}: {message}"), err


def test_flag_errors_and_python_errors_read_the_same(binary_data, tmp_path, capsys):
    assert main(["train", str(binary_data), "--epochs", "0", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == "error: epochs (--epochs) must be at least 1"
    with pytest.raises(ConfigError) as err:
        TrainConfig(data="d", keep="median")
    assert str(err.value) == "keep (--keep) must be one of auto, best, last"
    # a message already naming the flag, or not starting with a key, is left alone
    assert str(ConfigError(str(err.value))) == str(err.value)
    assert str(ConfigError("quantize must be 'int8'")) == "quantize must be 'int8'"
    assert re.fullmatch(r"a configuration must be a mapping.*", str(ConfigError("a configuration must be a mapping, got list")))


# ---- predict and explain say which files of a folder they left out ------------------------------------------------


@pytest.fixture()
def mixed_folder(binary_data, tmp_path):
    """Three images, a damaged .png, notes.txt, a .DS_Store and a hidden folder holding an image."""
    import shutil

    folder = tmp_path / "incoming"
    (folder / "sub").mkdir(parents=True)
    (folder / ".ipynb_checkpoints").mkdir()
    images = sorted((binary_data / "test" / "tb").glob("*.png"))[:3]
    for p in images[:2]:
        shutil.copy(p, folder / p.name)
    shutil.copy(images[2], folder / "sub" / images[2].name)
    shutil.copy(images[2], folder / ".ipynb_checkpoints" / images[2].name)
    (folder / "broken.png").write_bytes(images[0].read_bytes()[:60])
    (folder / "notes.txt").write_text("scanned on Monday\n")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return folder, [p.name for p in images]


def _skipped(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("skipped")]
    assert len(lines) == 1, err
    return lines[0]


def test_predict_folder_reports_skipped_files_in_one_line(tiny_run, mixed_folder, capsys):
    import io

    folder, names = mixed_folder
    assert main(["predict", str(tiny_run), str(folder), "--quiet"]) == 0
    out, err = capsys.readouterr()
    line = _skipped(err)
    assert line.startswith("skipped 4 files: 1 not image (notes.txt), 2 hidden (.ipynb_checkpoints/, .DS_Store), "
                           "1 unreadable (broken.png: "), line
    assert line.endswith("(in the error column)")
    rows = list(csv.DictReader(io.StringIO(out)))
    # the CSV holds the images and the unreadable one with its reason, never the non-image files
    assert sorted(Path(r["path"]).name for r in rows) == sorted(["broken.png", *names])
    assert [bool(r["error"]) for r in rows if r["path"].endswith("broken.png")] == [True]
    assert all(r["prob_tb"] for r in rows if not r["path"].endswith("broken.png"))


def test_batch_prediction_to_csv_and_json_report_skipped_files(tiny_run, mixed_folder, tmp_path, capsys):
    import json

    folder, names = mixed_folder
    out = tmp_path / "preds.csv"
    assert main(["predict", str(tiny_run), str(folder), "--out", str(out), "--quiet"]) == 0
    line = _skipped(capsys.readouterr().err)
    assert line.startswith("skipped 4 files: 1 not image (notes.txt)") and line.endswith(f"(in {out}'s error column)")
    with open(out, newline="") as f:
        assert sorted(Path(r["path"]).name for r in csv.DictReader(f)) == sorted(["broken.png", *names])
    assert main(["predict", str(tiny_run), str(folder), "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["skipped_files"] == {"not_images": ["notes.txt"], "hidden": [".ipynb_checkpoints/", ".DS_Store"]}
    assert len(doc["results"]) == 4 and _skipped(captured.err).startswith("skipped 4 files")


def test_predict_says_nothing_when_nothing_is_skipped(tiny_run, binary_data, capsys):
    assert main(["predict", str(tiny_run), str(binary_data / "test" / "tb"), "--quiet"]) == 0
    assert "skipped" not in capsys.readouterr().err


# ---- explain: --device, --quiet, progress and skipped files like predict ------------------------------------------


def test_explain_device_quiet_progress_and_skipped_files(tiny_run, mixed_folder, tmp_path, capsys, monkeypatch):
    import cxrkit.explain.export as export

    folder, names = mixed_folder
    bars = []

    class Bar:  # records what the progress bar is told (tqdm draws nothing without a terminal)
        def __init__(self, total, disable=None, **kw):
            self.total, self.disable, self.done = total, disable, 0
            bars.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            self.done += n

    monkeypatch.setattr(export, "tqdm", Bar)
    out = tmp_path / "maps"
    assert main(["explain", str(tiny_run), str(folder), "--out", str(out), "--device", "cpu"]) == 0
    std, err = capsys.readouterr()
    assert "3 image(s) explained with occlusion" in std  # auto: the cnn's default
    assert _skipped(err).startswith("skipped 4 files: 1 not image (notes.txt), 2 hidden (.ipynb_checkpoints/, .DS_Store), 1 unreadable (broken.png")
    assert len(list(out.glob("*.png"))) == 3 * 2  # one overlay per image and class
    # The skipped line names two unreadable files; explained.csv lists every image, its overlays, or why it was not read.
    assert f"(all in {out / 'explained.csv'})" in err
    with open(out / "explained.csv", newline="") as f:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    assert len(rows) == 4 and rows["broken.png"]["error"] and rows["broken.png"]["overlays"] == ""
    good = next(r for r in rows.values() if not r["error"])
    assert good["prediction"] in ("healthy", "tb") and all((out / name).is_file() for name in good["overlays"].split(";"))
    # the decision and probability predict gives: explain scored one view (tta=False) against a threshold chosen on the run's
    # test-time views, and 2 of 80 demo images got the other decision than predict's
    import cxrkit
    from cxrkit.run import Run

    same = cxrkit.load(tiny_run).predict(good["path"])
    assert float(good["prob_tb"]) == pytest.approx(same.probabilities["tb"], abs=1e-5) and good["prediction"] == same.decision
    assert bars[-1].total == 4 and bars[-1].done == 4 and bars[-1].disable is None
    assert main(["explain", str(tiny_run), str(folder), "--out", str(out), "--quiet"]) == 0
    std, err = capsys.readouterr()
    assert std == "" and bars[-1].disable is True and _skipped(err)
    assert main(["explain", str(tiny_run), str(folder), "--out", str(out), "--device", "gpu"]) == 2
    assert capsys.readouterr().err.strip() == "error: device must be auto, cpu, cuda or cuda:N, got 'gpu'"
    asked = []
    real = Run.predict_arrays
    monkeypatch.setattr(Run, "predict_arrays", lambda self, x, **kw: asked.append(kw) or real(self, x, **kw))
    export.explain_files(Run.load(tiny_run), [Path(good["path"])], tmp_path / "again")
    assert asked and all(kw.get("tta", None) is None for kw in asked), asked


# ---- train says after its first epoch how long the rest will take -------------------------------------------------


def test_time_estimate_words():
    from cxrkit.training.trainer import duration_text, time_estimate

    assert [duration_text(s) for s in (0.4, 45, 200, 300, 800, 5400)] == ["0 s", "45 s", "3 min 20 s", "5 min", "13 min", "1 h 30 min"]
    assert time_estimate(2.0, 14, 5, None, 2.0) is None  # 28 s left: nothing to plan around
    assert time_estimate(12.0, 0, 5, None, 12.0) is None  # the last epoch
    assert time_estimate(12.0, 14, 5, None, 12.0) == ("this epoch took 12 s: the other 14 epochs take about 2 min 48 s "
                                                       "(sooner if validation AUC stops improving for 5 epochs), then the final evaluation")
    capped = time_estimate(40.0, 29, None, 10, 40.0)
    assert capped == "this epoch took 40 s: the other 29 epochs take about 19 min, so --max-minutes 10 stops training after about 10 min, then the final evaluation"
    assert "max-minutes" not in time_estimate(40.0, 29, None, 60, 40.0)  # the cap is not reached


def test_train_prints_the_estimate_once_after_its_first_epoch(binary_data, tmp_path, capsys, monkeypatch):
    import cxrkit.training.trainer as trainer

    monkeypatch.setattr(trainer, "ESTIMATE_FROM_S", 0.0)  # the tiny run is fast; the rule is the same
    assert main(["train", str(binary_data), "--out", str(tmp_path / "r"), "--model", "cnn", "--image-size", "32", "--epochs", "3",
                 "--pretrained", "none"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("this epoch took")]
    assert len(lines) == 1 and "the other 2 epochs take about" in lines[0], out
    assert out.index("epoch   1/3") < out.index("this epoch took") < out.index("epoch   2/3")


def test_train_estimates_from_the_first_epoch_that_trains_all_layers(binary_data, tmp_path, capsys, monkeypatch):
    import cxrkit.training.trainer as trainer

    # a head-only epoch skips the backbone's backward pass: its pace (6.8 s against 28 s a resnet18 epoch) is not the rest's
    monkeypatch.setattr(trainer, "ESTIMATE_FROM_S", 0.0)
    assert main(["train", str(binary_data), "--out", str(tmp_path / "r"), "--model", "cnn", "--image-size", "32", "--epochs", "3",
                 "--head-epochs", "1", "--pretrained", "none"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("this epoch took")]
    assert len(lines) == 1 and "the last epoch takes about" in lines[0], out
    assert out.index("epoch   2/3") < out.index("this epoch took") < out.index("epoch   3/3")
