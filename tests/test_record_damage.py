"""A run folder whose records were edited or damaged: every command that reads them answers with one line naming the
file (exit status 2), never an 'unexpected' error blamed on cxrkit and never a figure computed from the damage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cxrkit.cli import main


def _copy_run(tiny_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoint", "plots", "report.html", "*.onnx"))
    return run


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "unexpected" not in err, err
    return err


@pytest.mark.parametrize("content, problem", [
    ('{"val": "x"}', "the 'val' results are damaged (an object was expected, got str)"),
    ('{"test": {}}', "the 'test' results are damaged (task must be binary, multiclass or multilabel, got None)"),
    ('{"test": {"task": "binary", "classes": ["healthy", "tb"], "metrics": {"roc_auc": 0.9}, "n": 10}}',
     "the 'test' results are damaged (metrics must be an object of {value, ci} entries)"),
])
def test_a_damaged_metrics_entry_is_named(content, problem, tiny_run, tmp_path, capsys):
    # These were "unexpected TypeError/KeyError ... (a bug in cxrkit)" from the report, exit status 3.
    run = _copy_run(tiny_run, tmp_path)
    (run / "metrics.json").write_text(content)
    assert main(["evaluate", str(run), "--split", "val", "--explain", "none"]) == 2
    assert _one_line_error(capsys) == (f"error: {run / 'metrics.json'}: {problem}; remove that entry (or the file) and run "
                                       "`cxrkit evaluate` again for the splits you need")
    assert (run / "metrics.json").read_text() == content


@pytest.mark.parametrize("edit, problem", [
    (lambda m: m["metrics"]["sensitivity"].update(ci=[None, None]), "metrics.sensitivity.ci must be null or [low, high], got [None, None]"),
    (lambda m: m["metrics"]["roc_auc"].update(ci=[0.5]), "metrics.roc_auc.ci must be null or [low, high], got [0.5]"),
    (lambda m: m["metrics"]["sensitivity"].update(value="x"), "metrics.sensitivity.value must be a number or null, got 'x'"),
    (lambda m: m.update(n_positive="24"), "n_positive must be a number of images, got '24'"),
    (lambda m: m.update(confusion="x"), "confusion must hold the counts tp, fp, tn and fn, got 'x'"),
    (lambda m: m.update(calibration="x"), "calibration must be an object, got str"),
    (lambda m: m.update(operating_points="x"), "operating_points must be a list, got str"),
])
def test_a_damaged_figure_in_metrics_is_named_before_any_work(edit, problem, tiny_run, tmp_path, capsys):
    # Each was "unexpected TypeError ... (a bug in cxrkit)" after the whole evaluation had run, or in `cxrkit plan`.
    run = _copy_run(tiny_run, tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    edit(metrics["val"])
    (run / "metrics.json").write_text(json.dumps(metrics))
    expected = (f"error: {run / 'metrics.json'}: the 'val' results are damaged ({problem}); remove that entry (or the file) and run "
                "`cxrkit evaluate` again for the splits you need")
    assert main(["evaluate", str(run), "--split", "val", "--explain", "none"]) == 2
    assert _one_line_error(capsys) == expected
    assert main(["plan", str(run), "--split", "val"]) == 2
    assert _one_line_error(capsys) == expected


@pytest.mark.parametrize("edit, problem", [
    (lambda m: m.update(schema_version=99),
     "the run was written by a newer cxrkit (record schema 99; this one reads up to 3): upgrade cxrkit (pip install -U cxrkit)"),
    (lambda m: m.update(schema_version="2"), "schema_version must be a whole number, got '2'"),
    (lambda m: m.update(data="x"), "data must be an object, got str"),
    (lambda m: m.update(training=[]), "training must be an object, got list"),
    (lambda m: m.update(evaluations="x"), "evaluations must be a list of objects, got 'x'"),
    (lambda m: m["data"].update(root=5, root_from_run=None), "data.root must be the data folder's path, got 5"),
])
def test_meta_provenance_of_the_wrong_shape_is_refused_at_load(edit, problem, tiny_run, tmp_path, capsys):
    run = _copy_run(tiny_run, tmp_path)
    meta = json.loads((run / "meta.json").read_text())
    edit(meta)
    (run / "meta.json").write_text(json.dumps(meta))
    assert main(["evaluate", str(run), "--split", "val", "--explain", "none"]) == 2
    assert _one_line_error(capsys) == f"error: {run / 'meta.json'}: {problem}"


@pytest.mark.parametrize("content, why", [("[]", "TypeError: a JSON object was expected, got list"), ("{}", "KeyError: 'classes'")])
def test_a_damaged_audit_is_named_and_the_evaluation_rolled_back(content, why, tiny_run, tmp_path, capsys):
    run = _copy_run(tiny_run, tmp_path)
    (run / "audit.json").write_text(content)
    before = (run / "metrics.json").read_bytes()
    assert main(["evaluate", str(run), "--split", "val", "--explain", "none"]) == 2
    assert _one_line_error(capsys) == (f"error: {run / 'audit.json'} is damaged ({why}); restore it, or delete it to write the "
                                       "report without the audit section")
    assert (run / "metrics.json").read_bytes() == before


@pytest.mark.parametrize("name", ["history.csv", "skipped.csv", "predictions.csv", "splits.csv"])
def test_a_csv_record_that_is_not_text_is_named(name, tiny_run, tmp_path, capsys):
    # Was "error: 'utf-8' codec can't decode byte 0xff in position 0": no word of which file.
    run = _copy_run(tiny_run, tmp_path)
    if name == "splits.csv":  # a run from before splits.csv's hash; with it, the changed file is refused first (below)
        meta = json.loads((run / "meta.json").read_text())
        meta.pop("splits_sha256")
        meta["schema_version"] = 2  # from schema 3 on, every finished run carries it
        (run / "meta.json").write_text(json.dumps(meta))
    (run / name).write_bytes(b"\xff\xfe\x00")
    assert main(["evaluate", str(run), "--split", "val", "--explain", "none"]) == 2
    assert _one_line_error(capsys).startswith(f"error: {run / name} is not a readable CSV file (UnicodeDecodeError: ")


@pytest.mark.parametrize("value", ["nan", "1.5", "-0.2"])
def test_validation_probabilities_outside_0_1_are_refused_and_evaluate_rewrites_them(value, tiny_run, tmp_path, capsys):
    # float() reads nan and 1.5 alike: referral chose its band on them and exited 0, and evaluate said "Input contains NaN."
    run = _copy_run(tiny_run, tmp_path)
    lines = (run / "predictions.csv").read_text().splitlines()
    header = lines[0].split(",")
    i = next(i for i, line in enumerate(lines) if line.startswith("val,"))
    row = lines[i].split(",")
    row[header.index("prob_tb")] = value
    lines[i] = ",".join(row)
    (run / "predictions.csv").write_text("\n".join(lines) + "\n")
    assert main(["evaluate", str(run), "--explain", "none"]) == 2  # its operating points are chosen on the validation rows
    err = _one_line_error(capsys)
    assert err.startswith(f"error: {run / 'predictions.csv'}: 1 val row(s) hold probabilities that are not numbers from 0 to 1 (first {row[1]}: ")
    # The command the message names writes the validation rows again, and the test split can then be evaluated.
    assert main(["evaluate", str(run), "--split", "val", "--explain", "none", "--quiet"]) == 0
    assert main(["evaluate", str(run), "--explain", "none", "--quiet"]) == 0


def test_referral_chooses_its_band_on_the_validation_images_not_on_edited_rows(tiny_run, tmp_path, capsys):
    # Rows edited to 0.99 for every tb image and 0.01 for the others gave a band with 100% NPV and PPV, printed and stored.
    intact = _copy_run(tiny_run, tmp_path)
    assert main(["referral", str(intact)]) == 0
    expected = json.loads((intact / "meta.json").read_text())["referral"]
    run = tmp_path / "edited"
    shutil.copytree(intact, run)
    lines = (run / "predictions.csv").read_text().splitlines()
    header = lines[0].split(",")
    for i, line in enumerate(lines):
        row = line.split(",")
        if row[0] == "val":
            tb = row[header.index("true")] == "tb"
            row[header.index("prob_tb")], row[header.index("prob_healthy")] = ("0.99", "0.01") if tb else ("0.01", "0.99")
            lines[i] = ",".join(row)
    (run / "predictions.csv").write_text("\n".join(lines) + "\n")
    assert main(["referral", str(run)]) == 0
    assert "chosen on " in capsys.readouterr().out
    band = json.loads((run / "meta.json").read_text())["referral"]
    assert (band["lower"], band["upper"]) == (expected["lower"], expected["upper"])


def test_a_preprocessing_step_this_version_does_not_know_is_refused(tiny_run, tmp_path, capsys):
    # An unknown key in meta.json's preprocessing (a step of a newer cxrkit, or an edit) was dropped without a word, so every
    # image was prepared otherwise than in training and predict answered as usual.
    run = _copy_run(tiny_run, tmp_path)
    meta = json.loads((run / "meta.json").read_text())
    meta["preprocessing"]["gamma"] = 2.0
    (run / "meta.json").write_text(json.dumps(meta))
    image = next(Path(meta["data"]["root"]).glob("test/tb/*.png"))
    assert main(["predict", str(run), str(image)]) == 2
    assert _one_line_error(capsys).startswith(f"error: {run / 'meta.json'}: preprocessing.gamma is not a preprocessing step this cxrkit knows (")


def test_splits_moved_between_train_and_test_are_refused(tiny_run, tmp_path, capsys):
    # Test rows relabelled train and train rows test: evaluate scored the model on images it was trained on, as the test result.
    run = _copy_run(tiny_run, tmp_path)
    lines = (run / "splits.csv").read_text().splitlines()
    swap = {"test": "train", "train": "test"}
    rows = [lines[0]] + [",".join(swap.get(c, c) if i == 2 else c for i, c in enumerate(line.split(","))) for line in lines[1:]]
    (run / "splits.csv").write_text("\n".join(rows) + "\n")
    before = (run / "metrics.json").read_bytes()
    assert main(["evaluate", str(run), "--explain", "none"]) == 2
    assert _one_line_error(capsys).startswith(f"error: {run / 'splits.csv'} is not the file {run / 'meta.json'} was written with")
    assert (run / "metrics.json").read_bytes() == before


@pytest.mark.parametrize("key, value", [("preprocessing.std", 0.5), ("preprocessing.mean", 0.6), ("tta_flips", True),
                                        ("preprocessing.intensity", "clahe")])
def test_meta_json_inputs_that_differ_from_the_weights_header_are_refused(key, value, tiny_run, tmp_path, capsys):
    # std 0.20 -> 0.5 in meta.json turned every healthy test image into a tb call, with no error or warning.
    run = _copy_run(tiny_run, tmp_path)
    meta = json.loads((run / "meta.json").read_text())
    *path, last = key.split(".")
    target = meta
    for k in path:
        target = target[k]
    if target[last] == value:
        value = not value if isinstance(value, bool) else value / 2
    target[last] = value
    (run / "meta.json").write_text(json.dumps(meta))
    image = next(Path(meta["data"]["root"]).glob("test/tb/*.png"))
    assert main(["predict", str(run), str(image)]) == 2
    err = _one_line_error(capsys)
    assert err.startswith(f"error: {run / 'meta.json'} has {key} {value!r} (the weights: ") and "meta.json was edited" in err


def test_a_class_map_on_the_runs_own_data_is_refused(tiny_run, tmp_path, capsys):
    # healthy=tb,tb=healthy relabelled the run's own test split: ROC-AUC 0.016 stored as its test result.
    run = _copy_run(tiny_run, tmp_path)
    assert main(["evaluate", str(run), "--class-map", "healthy=tb,tb=healthy", "--explain", "none"]) == 2
    assert "--class-map matches another dataset's class names to the model's" in _one_line_error(capsys)


@pytest.mark.parametrize("name", ["model.safetensors", "meta.json"])
def test_a_run_file_that_is_a_folder_or_a_dangling_link_is_named_as_such(name, tiny_run, tmp_path, capsys):
    # Was "RUN lacks model.safetensors: its training has not finished (it holds model.safetensors, ...)".
    run = _copy_run(tiny_run, tmp_path)
    image = next(Path(json.loads((run / "meta.json").read_text())["data"]["root"]).glob("test/tb/*.png"))
    (run / name).unlink()
    (run / name).mkdir()
    assert main(["predict", str(run), str(image)]) == 2
    assert _one_line_error(capsys) == f"error: {run / name} is a folder, not the run's {name}; restore the file from a copy of the run"
    (run / name).rmdir()
    (run / name).symlink_to(run / "nowhere")
    assert main(["predict", str(run), str(image)]) == 2
    assert _one_line_error(capsys).startswith(f"error: {run / name} is a link to nothing (or a loop), not the run's {name}")


def test_a_relative_cache_dir_is_found_where_the_training_ran_and_config_errors_name_the_file_once(tmp_path, monkeypatch):
    from cxrkit.config import training_cache_dir

    # Trained from /work as `--out runs/demo --cache-dir runs/demo/cache`: evaluate from elsewhere built the cache there.
    work = tmp_path / "work"
    (work / "runs" / "demo").mkdir(parents=True)
    assert training_cache_dir("runs/demo/cache", "runs/demo", work / "runs" / "demo") == str(work / "runs/demo/cache")
    monkeypatch.chdir(tmp_path)
    assert training_cache_dir("c", "runs/demo", Path("work/runs/demo")) == str(work / "c")  # the run named from anywhere
    assert training_cache_dir("c", "other/run", work / "runs" / "demo") is None  # moved: the default cache, not ./c
    assert training_cache_dir("c", str(work / "runs" / "demo"), work / "runs" / "demo") is None
    assert training_cache_dir("c", "../x", work / "x") is None


def test_resume_from_another_folder_finds_a_relative_cache_dir_where_the_training_ran(tiny_run, tmp_path, monkeypatch):
    import yaml

    from cxrkit.config import ConfigError
    from cxrkit.training.trainer import resumed_config

    # Only Run.config resolved it: `train --resume` from elsewhere built a second cache of the images in that folder.
    work = tmp_path / "work"
    run = work / "runs" / "demo"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoint", "plots", "report.html", "*.onnx"))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**saved, "out": "runs/demo", "cache_dir": "c"}))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert resumed_config(run, saved["data"], {}, "--resume").cache_dir == str(work / "c")
    with pytest.raises(ConfigError, match="cache_dir"):  # ./c from here is another folder than the run's
        resumed_config(run, saved["data"], {"cache_dir": "c"}, "--resume")
    monkeypatch.chdir(work)
    assert resumed_config(Path("runs/demo"), saved["data"], {"cache_dir": "c"}, "--resume").cache_dir == str(work / "c")


def test_a_config_error_names_the_file_once(tiny_run, tmp_path, capsys):
    run = _copy_run(tiny_run, tmp_path)
    (run / "config.yaml").write_text((run / "config.yaml").read_text() + "foo: 1\n")
    assert main(["evaluate", str(run), "--split", "val"]) == 2
    err = _one_line_error(capsys)
    assert "unknown config keys: foo" in err and err.count("config.yaml") == 1, err


def test_a_runs_label_table_is_its_own_from_any_folder_and_after_a_move(binary_data, tmp_path, monkeypatch):
    # config.yaml keeps --labels as typed ("t.csv"): evaluate from another folder read that folder's t.csv, a different table,
    # and reported its figures; from / it said the run's table did not exist.
    import csv

    from cxrkit.run import Run, RunError

    work = tmp_path / "work"
    shutil.copytree(binary_data, work / "data")
    with open(work / "data" / "t.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([p.relative_to(work / "data").as_posix(), p.parent.name] for p in sorted((work / "data").rglob("*.png")))
    monkeypatch.chdir(work)
    assert main(["train", "data", "--labels", "data/t.csv", "--out", "runs/t", "--epochs", "1", "--image-size", "32", "--model", "cnn",
                 "--quiet"]) == 0
    (tmp_path / "other" / "data").mkdir(parents=True)
    (tmp_path / "other" / "data" / "t.csv").write_text("path,label\n")
    for here in (tmp_path / "other", Path("/")):
        monkeypatch.chdir(here)
        assert Run.load(work / "runs" / "t").config().labels == str(work / "data" / "t.csv")
    shutil.move(work, tmp_path / "moved")  # run, data and table together
    assert Run.load(tmp_path / "moved" / "runs" / "t").config().labels == str(tmp_path / "moved" / "data" / "t.csv")
    (tmp_path / "moved" / "data" / "t.csv").unlink()
    with pytest.raises(RunError, match=r"the label table of .* \(.*t.csv\) is not where it was"):
        Run.load(tmp_path / "moved" / "runs" / "t").config()


def test_run_records_are_strict_json_and_a_hand_edited_threshold_is_refused(tiny_run, tmp_path):
    from cxrkit.record.files import RunRecordError
    from cxrkit.record.meta import read_meta, write_meta

    run = _copy_run(tiny_run, tmp_path)
    meta = read_meta(run)
    meta.threshold = {**meta.threshold, "sensitivity": float("nan")}  # a finding without validation positives wrote a bare NaN
    write_meta(run, meta)
    strict = json.loads((run / "meta.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in meta.json"))
    assert strict["threshold"]["sensitivity"] is None and read_meta(run).threshold_value == meta.threshold_value
    strict["threshold"]["value"] = 0.9
    (run / "meta.json").write_text(json.dumps(strict))
    with pytest.raises(RunRecordError, match=r"its decision rule \(threshold 0.9\) is not the one cxrkit chose and recorded"):
        read_meta(run)


def test_a_run_from_before_schema_3_is_upgraded_only_when_it_carries_every_seal(tiny_run, tmp_path):
    from cxrkit.record.meta import SCHEMA_VERSION, read_meta, write_meta

    assert SCHEMA_VERSION == 3 and read_meta(tiny_run).schema_version == 3  # training writes the current schema
    run = _copy_run(tiny_run, tmp_path)
    meta = json.loads((run / "meta.json").read_text())
    meta.update(schema_version=2, splits_sha256=None)  # a run written before splits.csv had its digest
    (run / "meta.json").write_text(json.dumps(meta))
    write_meta(run, read_meta(run))  # what evaluate, calibrate or referral do when they add to a run
    # Upgraded, it would be refused at its next read for the digest it never had; it keeps its schema and loads.
    assert read_meta(run).schema_version == 2
    meta = json.loads((run / "meta.json").read_text())
    meta.update(splits_sha256=json.loads((tiny_run / "meta.json").read_text())["splits_sha256"])
    (run / "meta.json").write_text(json.dumps(meta))
    write_meta(run, read_meta(run))
    assert read_meta(run).schema_version == 3  # with every digest it is a schema-3 run, and deleting one is refused from now on
