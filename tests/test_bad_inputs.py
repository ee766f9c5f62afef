"""A corpus of bad configs, tampered run folders and bad files through the CLI: each must end with exit status 2
(1 where a single image cannot be read) and a one-line message, never a traceback and never a silent result."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrkit.cli import main

from .conftest import record_calibration, record_decision, record_weights


def _copy_run(tiny_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoint", "plots", "report.html"))
    return run


def _edit_meta(run: Path, edit) -> None:
    meta = json.loads((run / "meta.json").read_text())
    edit(meta)
    (run / "meta.json").write_text(json.dumps(meta))


def _image(tmp_path: Path) -> Path:
    path = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48), dtype=np.uint8)).save(path)
    return path


# ---- configs: `cxrkit train DATA --config FILE` ------------------------------------------------------------------
CONFIGS = {
    "empty file": "",
    "yaml syntax error": "lr: [1e-3\nepochs: 2\n",
    "lr not a number": "lr: abc\n",
    "fractional image_size": "image_size: 128.5\n",
    "huge image_size": "image_size: 100000\n",
    "hflip not a boolean": "augment: {hflip: maybe}\n",
    "augment not a mapping": "augment: yes\n",
    "unknown key": "learning_rate: 0.01\n",
    "unknown augment key": "augment: {flip: true}\n",
    "threshold rule a number": "threshold_rule: 5\n",
    "threshold rule target out of range": "threshold_rule: 'sensitivity:1.5'\n",
    "zero epochs": "epochs: 0\n",
    "validation fraction above 1": "val_fraction: 1.5\n",
    "unknown model": "model: resnet1000\n",
    "config is a list": "- lr: 0.01\n",
    "negative augmentation": "augment: {brightness: -0.5}\n",
    "infinite learning rate": "lr: .inf\n",
    "infinite rotation": "augment: {rotate_degrees: .inf}\n",
    "unknown kept epoch": "keep: median\n",
    "negative mixup": "mixup: -0.2\n",
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_bad_config_is_one_line_error(name, binary_data, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIGS[name])
    code = main(["train", str(binary_data), "--config", str(cfg), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "out" / "meta.json").exists()


def test_missing_config_file(binary_data, tmp_path, capsys):
    assert main(["train", str(binary_data), "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_no_validation_images_is_refused_before_the_audit(binary_data, tmp_path, capsys):
    # binary_data has train/ and test/ folders only: --val-fraction 0 leaves nothing to validate on.
    assert main(["train", str(binary_data), "--val-fraction", "0", "--out", str(tmp_path / "out"), "--image-size", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: training needs validation images (for the kept epoch, the threshold and calibration) and there are none: "
                   "give --val-fraction above 0, or a val/ folder")
    assert not (tmp_path / "out" / "audit.json").exists()  # refused before the audit read every file


def test_a_validation_folder_of_one_class_is_refused_before_training(binary_data, tmp_path, capsys):
    # It trained every epoch and then stopped with "no epoch gave a validation AUC (every validation image of one class?)".
    data = tmp_path / "d"
    shutil.copytree(binary_data / "train", data / "train")
    (data / "val" / "healthy").mkdir(parents=True)
    for p in sorted((data / "train" / "healthy").glob("*.png"))[:6]:
        p.rename(data / "val" / "healthy" / p.name)
    assert main(["train", str(data), "--out", str(tmp_path / "out"), "--image-size", "32", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the val/ folder has no tb images, and choosing the kept epoch and the threshold needs every class")
    assert not (tmp_path / "out" / "audit.json").exists()


def test_a_table_whose_val_rows_lack_a_class_or_any_finding_is_refused_naming_the_table(binary_data, tmp_path, capsys):
    import csv

    files = sorted(binary_data.glob("train/*/*.png"))
    rows = [{"path": f.relative_to(binary_data).as_posix(), "label": f.parent.name,
             "split": "val" if f.parent.name == "healthy" and i % 5 == 0 else "train"} for i, f in enumerate(files)]
    table = tmp_path / "t.csv"
    with open(table, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    assert main(["train", str(binary_data), "--labels", str(table), "--out", str(tmp_path / "out"), "--image-size", "32"]) == 2
    # was "the val/ folder has no tb images ... remove val/", a folder that does not exist
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the table's val rows have no tb images") and "leave the split column empty" in err, err
    # Multi-label: validation rows without any finding trained every epoch, then "no epoch gave a validation AUC".
    findings = [{"path": r["path"], "finding_labels": "Effusion" if r["label"] == "tb" else "No Finding",
                 "split": r["split"]} for r in rows]
    ml = tmp_path / "ml.csv"
    with open(ml, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "finding_labels", "split"])
        w.writeheader()
        w.writerows(findings)
    assert main(["train", str(binary_data), "--labels", str(ml), "--task", "multilabel", "--out", str(tmp_path / "out2"),
                 "--image-size", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the table's val rows have ") and "none with a finding" in err, err


# ---- tampered run folders: `cxrkit predict RUN IMAGE` --------------------------------------------------------------
RUNS = {
    "std 0": (lambda m: m["preprocessing"].update(std=0), "std"),
    "negative std": (lambda m: m["preprocessing"].update(std=-1), "std"),
    "task regression": (lambda m: m.update(task="regression"), "task"),
    "threshold NaN": (lambda m: m["threshold"].update(value=float("nan")), "threshold"),
    "threshold above 1": (lambda m: m["threshold"].update(value=3.0), "threshold"),
    "threshold null (training crashed)": (lambda m: m.update(threshold=None, complete=False, decision_sha256=None), "incomplete"),
    # Used by every command, and still described as chosen on validation: a real tb case at 0.59 was called healthy.
    "threshold edited by hand": (lambda m: m["threshold"].update(value=0.9), "decision rule (threshold 0.9) is not the one cxrkit chose"),
    "referral band edited by hand": (lambda m: m.update(referral={"lower": 0.1, "upper": 0.2}), "referral band 0.1-0.2) is not the one"),
    # Deleting the seal after the edit switched its check off (a missing seal meant "a run from before it").
    "threshold edited, seal deleted": (lambda m: (m["threshold"].update(value=0.9), m.pop("decision_sha256")), "decision_sha256 is missing"),
    "splits hash deleted": (lambda m: m.pop("splits_sha256"), "splits_sha256 is missing"),
    "image_size 100000": (lambda m: m["preprocessing"].update(image_size=100000), "image_size"),
    "three classes for a binary run": (lambda m: m.update(classes=["a", "b", "c"]), "classes"),
    "duplicate class names": (lambda m: m.update(classes=["a", "a"]), "classes"),
    "unknown model": (lambda m: m.update(model="resnet1000"), "unknown model"),
    "preprocessing missing": (lambda m: m.pop("preprocessing"), "preprocessing"),
    "unknown intensity mode": (lambda m: m["preprocessing"].update(intensity="magic"), "intensity"),
    "intensity auto, never resolved": (lambda m: m["preprocessing"].update(intensity="auto"), "intensity"),
    "weights hash not a hash": (lambda m: m.update(weights_sha256="abc123"), "weights_sha256"),
    "calibration hash not a hash": (lambda m: m.update(calibration_sha256="uncalibrated"), "calibration_sha256"),
    "num_outputs wrong": (lambda m: m.update(num_outputs=5), "num_outputs"),
    "model width changed": (lambda m: m["model_options"].update(width=64), "model_options.width 64 but"),  # config.yaml says otherwise
}


@pytest.mark.parametrize("name", list(RUNS))
def test_tampered_run_is_refused(name, tiny_run, tmp_path, capsys):
    edit, word = RUNS[name]
    run = _copy_run(tiny_run, tmp_path)
    _edit_meta(run, edit)
    code = main(["predict", str(run), str(_image(tmp_path))])
    out = capsys.readouterr()
    assert code == 2, out
    err = out.err.strip()
    assert err.startswith("error: ") and "\n" not in err and word in err, err
    assert out.out == ""  # no prediction printed


@pytest.mark.parametrize("content, word", [(b"not json", "not valid JSON"), (b"[1, 2]", "object")])
def test_unreadable_meta(content, word, tiny_run, tmp_path, capsys):
    run = _copy_run(tiny_run, tmp_path)
    (run / "meta.json").write_bytes(content)
    assert main(["predict", str(run), str(_image(tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    assert word in err and "\n" not in err


def test_weights_file_not_safetensors(tiny_run, tmp_path, capsys):
    run = _copy_run(tiny_run, tmp_path)
    (run / "model.safetensors").write_bytes(b"\x80\x04 pickled? no: just junk" * 10)
    record_weights(run)
    assert main(["predict", str(run), str(_image(tmp_path))]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err


def test_weights_from_another_training_are_refused(tiny_run, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    run = _copy_run(tiny_run, tmp_path)
    assert len(json.loads((run / "meta.json").read_text())["weights_sha256"]) == 64  # training recorded it
    # Same architecture, other numbers: what a folder holds while a training rewrites it, or after a copy of weights alone.
    state = load_file(str(run / "model.safetensors"))
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, str(run / "model.safetensors"))
    assert main(["predict", str(run), str(_image(tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.safetensors is not the weights file" in err and "was written with (SHA-256" in err and "\n" not in err, err
    # The hash deleted from a run of record schema 3 (which always carries it) switches nothing off: the run is refused.
    _edit_meta(run, lambda m: m.pop("weights_sha256"))
    assert main(["predict", str(run), str(_image(tmp_path))]) == 2
    assert "weights_sha256 is missing" in capsys.readouterr().err
    # A run written before the hash was recorded (schema 2) has nothing to compare: it loads as before.
    _edit_meta(run, lambda m: m.update(schema_version=2))
    assert main(["predict", str(run), str(_image(tmp_path))]) == 0


def test_a_calibration_the_record_does_not_name_is_refused(tiny_run, tmp_path, capsys):
    run = _copy_run(tiny_run, tmp_path)
    assert json.loads((run / "meta.json").read_text())["calibration_sha256"] == "none"  # training recorded: uncalibrated
    # A calibration.json without the meta.json that names it: what a reader sees between calibrate's two writes.
    (run / "calibration.json").write_text(json.dumps({"method": "temperature", "params": {"temperature": 3.0}}))
    assert main(["predict", str(run), str(_image(tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    assert "calibration.json is there but" in err and "records no calibration" in err and "\n" not in err, err
    # Calibrated for real, then the file swapped for another one: refused as well.
    (run / "calibration.json").unlink()
    assert main(["calibrate", str(run)]) == 0
    assert len(json.loads((run / "meta.json").read_text())["calibration_sha256"]) == 64
    (run / "calibration.json").write_text(json.dumps({"method": "temperature", "params": {"temperature": 3.0}}))
    capsys.readouterr()
    assert main(["predict", str(run), str(_image(tmp_path))]) == 2
    assert "calibration.json is not the calibration it was written with" in capsys.readouterr().err
    # The way out the message names: --remove deletes it, records "none", and the run predicts uncalibrated again.
    assert main(["calibrate", str(run), "--remove"]) == 0
    assert json.loads((run / "meta.json").read_text())["calibration_sha256"] == "none"
    assert main(["predict", str(run), str(_image(tmp_path))]) == 0


def test_weights_with_nan_are_refused(tiny_run, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    run = _copy_run(tiny_run, tmp_path)
    state = load_file(str(run / "model.safetensors"))
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[name][0] = float("nan")  # a diverged or damaged model: every probability NaN, every image "healthy"
    save_file(state, str(run / "model.safetensors"))
    record_weights(run)
    assert main(["predict", str(run), str(_image(tmp_path))]) == 2
    out = capsys.readouterr()
    err = out.err.strip()
    assert "NaN or infinite values in 1 tensor(s)" in err and name in err and "\n" not in err, err
    assert out.out == ""


def test_bad_calibration_file(tiny_run, tmp_path, capsys):
    run = _copy_run(tiny_run, tmp_path)
    (run / "calibration.json").write_text("{oops")
    record_calibration(run)
    assert main(["predict", str(run), str(_image(tmp_path))]) == 2
    assert "calibration.json is not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["missing", "file"])
def test_run_path_not_a_run(target, tmp_path, capsys):
    path = tmp_path / "r"
    if target == "file":
        path.write_text("x")
    assert main(["predict", str(path), str(_image(tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err


# ---- files ------------------------------------------------------------------------------------------------------------
def test_corrupt_single_image_exits_1(tiny_run, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    assert main(["predict", str(tiny_run), str(bad)]) == 1
    assert "could not be read" in capsys.readouterr().err


def test_predict_out_is_a_directory(tiny_run, tmp_path, capsys):
    (tmp_path / "d").mkdir()
    assert main(["predict", str(tiny_run), str(_image(tmp_path)), "--out", str(tmp_path / "d")]) == 2
    assert "directory" in capsys.readouterr().err


def test_predict_out_of_another_model_is_not_resumed(tiny_run, tmp_path, capsys):
    img = _image(tmp_path)
    out = tmp_path / "p.csv"
    assert main(["predict", str(tiny_run), str(img), "--out", str(out)]) == 0
    other = _copy_run(tiny_run, tmp_path)
    _edit_meta(other, lambda m: m["threshold"].update(value=0.123))  # another decision rule is another model
    record_decision(other)  # as cxrkit calibrate would have chosen and sealed it
    assert main(["predict", str(other), str(img), "--out", str(out)]) == 2
    assert "another model" in capsys.readouterr().err
    assert main(["predict", str(tiny_run), str(img), "--out", str(out)]) == 0  # the same model resumes
    assert "1 already in" in capsys.readouterr().out


def test_train_on_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "\n" not in capsys.readouterr().err.strip()


def test_train_on_all_corrupt_folder(tmp_path, capsys):
    for c in ("healthy", "tb"):
        (tmp_path / "d" / c).mkdir(parents=True)
        for i in range(4):
            (tmp_path / "d" / c / f"{i}.png").write_bytes(b"junk")
            Image.fromarray(np.full((32, 32), 9 * i, np.uint8)).save(tmp_path / "d" / c / f"blank{i}.png")
    # Was "only 1 patient(s) or group(s) of identical copies" (the junk files are byte-identical): not why.
    for command in ("train", "audit"):
        assert main([command, str(tmp_path / "d"), "--out", str(tmp_path / command), *(["--epochs", "1", "--image-size", "32"] if command == "train" else [])]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: none of the 16 files is a usable image (8 blank or tiny, 8 unreadable); e.g. ") and "\n" not in err, err


def test_train_out_is_a_file(binary_data, tmp_path, capsys):
    (tmp_path / "o").write_text("x")
    assert main(["train", str(binary_data), "--out", str(tmp_path / "o"), "--image-size", "32", "--epochs", "1"]) == 2
    assert "is a file" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"definitely not safetensors", b""])
def test_pretrained_file_not_safetensors(content, binary_data, tmp_path, capsys):
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(content)
    code = main(["train", str(binary_data), "--out", str(tmp_path / "o"), "--image-size", "32", "--epochs", "1", "--pretrained", str(bad)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err


def test_pretrained_pickle_with_code_is_refused(binary_data, tmp_path, capsys, recwarn):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    bad = tmp_path / "w.pt"
    bad.write_bytes(pickle.dumps({"conv.weight": Evil()}))
    code = main(["train", str(binary_data), "--out", str(tmp_path / "o"), "--image-size", "32", "--epochs", "1", "--pretrained", str(bad)])
    out = capsys.readouterr()
    assert code == 2 and "owned" not in out.out
    assert "pickled objects other than tensors, which could run code" in out.err and "\n" not in out.err.strip()
    assert "weights_only` set to `False`" not in out.err  # torch's advice to load it unsafely is not passed on
    assert not [w for w in recwarn if "pickle" in str(w.message)]  # torch's protocol warning would print above the error


def test_evaluate_moved_run_without_its_data(tiny_run, tmp_path, capsys):
    run = _copy_run(tiny_run, tmp_path)
    _edit_meta(run, lambda m: m["data"].update(root=str(tmp_path / "gone"), root_from_run="../gone"))
    assert main(["evaluate", str(run)]) == 2
    assert "give the data folder explicitly" in capsys.readouterr().err


def test_tampered_checkpoint_is_refused_on_resume(tiny_run, binary_data, tmp_path, capsys, recwarn):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "checkpoint" / "optimizer.pt").write_bytes(pickle.dumps({"optimizer": Evil()}))
    code = main(["train", str(binary_data), "--out", str(run), "--resume"])
    out = capsys.readouterr()
    assert code == 2 and "owned" not in out.out, out
    assert "cannot be resumed" in out.err and "\n" not in out.err.strip()
    assert "optimizer.pt: it holds pickled objects other than tensors, which could run code" in out.err and "weights_only` set" not in out.err
    assert not [w for w in recwarn if "pickle" in str(w.message)]


def test_a_multiclass_validation_split_without_a_class_is_named():
    from types import SimpleNamespace

    import numpy as np

    from cxrkit.training.trainer import _check_validation_classes

    labels, splits = np.array([0, 1, 2, 1, 2, 1]), np.array(["train", "train", "train", "val", "val", "val"])
    ds = SimpleNamespace(multilabel=False, labels=labels, class_names=["covid", "normal", "tb"],
                         index=lambda s: np.flatnonzero(splits == s), source=SimpleNamespace(samples=[SimpleNamespace(split=None)] * 6))
    said: list[str] = []
    _check_validation_classes(ds, said.append)
    assert said == ["warning: the validation split cxrkit cut has no covid images: the kept epoch is chosen on the other classes, "
                    "and how well the model finds covid is not checked before the test split (class covid has only 1 image in all: "
                    "neither validation nor test can measure it; add images of it, or remove it)"]
    ds.source = SimpleNamespace(samples=[SimpleNamespace(split="val")] * 6)  # a val/ folder, ignored under --resplit
    said.clear()
    _check_validation_classes(ds, said.append)
    assert said[0].startswith("warning: the val/ folder has no covid images")
    said.clear()
    _check_validation_classes(ds, said.append, cut=True)
    assert said[0].startswith("warning: the validation split cxrkit cut has no covid images")
    # Binary with one tb image: "give a larger --val-fraction" cannot put one image in three splits.
    labels, splits = np.array([0, 0, 0, 1, 0, 0]), np.array(["train", "train", "train", "train", "val", "val"])
    ds = SimpleNamespace(multilabel=False, labels=labels, class_names=["normal", "tb"], index=lambda s: np.flatnonzero(splits == s),
                         source=SimpleNamespace(samples=[SimpleNamespace(split=None)] * 6))
    with pytest.raises(ValueError, match=r"no tb images.*class tb has only 1 image in all: add images of it \(at least 3"):
        _check_validation_classes(ds, said.append)


def test_a_pretrained_name_that_is_no_file_is_refused_before_the_data_is_read(binary_data, tmp_path, capsys):
    # --pretrained imagenett (a typo) loaded and audited the data first, then failed with "weights file imagenett not found".
    assert main(["train", str(binary_data), "--out", str(tmp_path / "o"), "--pretrained", "imagenett"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("error: --pretrained imagenett: no such weights file or run folder; give imagenet, none, a .safetensors / .pt "
                   "file or a finished cxrkit run folder")
    assert not (tmp_path / "o").exists()


def test_class_names_swapped_in_meta_are_refused(tiny_run, tmp_path, capsys):
    # weights_sha256 binds the weights to meta.json, not meta.json's class order: swapped by hand, every decision flipped.
    run = _copy_run(tiny_run, tmp_path)
    assert main(["predict", str(run), str(_image(tmp_path))]) == 0
    _edit_meta(run, lambda m: m.update(classes=m["classes"][::-1], positive_class=m["classes"][0]))
    capsys.readouterr()
    assert main(["predict", str(run), str(_image(tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    assert "meta.json names the classes ['tb', 'healthy'], but" in err and "was trained for ['healthy', 'tb'] (in that order)" in err


def test_patient_ids_differing_only_in_case_are_named_at_training():
    from types import SimpleNamespace

    from cxrkit.training.trainer import _note_dataset_findings

    said: list[str] = []
    ds = SimpleNamespace(source=SimpleNamespace(), skipped=list, patients=["P000", "p000", "P001", "P 002", "P  002", "__file__:x.png",
                                                                          "38", "00000038", "0", "000"])
    _note_dataset_findings(ds, said.append)  # P000 and p000 were two patients without a word: maybe one person in train and test
    assert said == ["note: 4 patient ID(s) differ from another only in case, spaces or leading zeros (e.g. 0 and 000); they are split "
                    "as different patients. If they are one patient, write the IDs alike"]


def test_images_in_formats_not_read_are_named_at_training():
    from types import SimpleNamespace

    from cxrkit.training.trainer import _note_dataset_findings

    said: list[str] = []
    ds = SimpleNamespace(source=SimpleNamespace(ignored_files=[Path("d/tb/notes.txt"), Path("d/tb/a.WEBP"), Path("d/tb/b.gif")]), skipped=list)
    _note_dataset_findings(ds, said.append)  # only the report counted them, as "non-image files"
    assert said == ["note: 2 image(s) in a format cxrkit does not read were left out (e.g. d/tb/a.WEBP); convert them to PNG (or JPEG) "
                    "to use them"]
    said.clear()
    _note_dataset_findings(SimpleNamespace(source=SimpleNamespace(ignored_files=[Path("d/tb/notes.txt")]), skipped=list), said.append)
    assert said == []


def test_a_test_split_without_a_class_is_said_at_training():
    from types import SimpleNamespace

    import numpy as np

    from cxrkit.training.trainer import _check_splits_for_training

    labels = np.array([0] * 8 + [1, 1] + [0] * 3 + [1] + [0] * 4)
    splits = np.array(["train"] * 10 + ["val"] * 4 + ["test"] * 4)
    ds = SimpleNamespace(multilabel=False, labels=labels, class_names=["normal", "tb"], index=lambda s: np.flatnonzero(splits == s),
                         source=SimpleNamespace(samples=[SimpleNamespace(split=None)] * len(labels)),
                         relpaths=[f"{i}.png" for i in range(len(labels))], cache=SimpleNamespace(ok=np.ones(len(labels), bool)))
    said: list[str] = []
    _check_splits_for_training(ds, SimpleNamespace(resplit=False, val_fraction=0.15), said.append)
    assert said == ["warning: the test split has no tb images: its figures cannot measure how the model finds tb (no sensitivity, "
                    "no ROC-AUC); add images of that class"]


def test_blank_and_tiny_images_are_left_out_of_training_and_named_by_the_audit(binary_data, tmp_path):
    # predict refused them, while training learned from them and evaluate scored them: a model measured on images it refuses.
    from cxrkit.audit.dataset_audit import audit_dataset
    from cxrkit.audit.messages import audit_messages
    from cxrkit.data.dataset import load_dataset

    data = tmp_path / "data"
    shutil.copytree(binary_data, data)
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(data / "train" / "healthy" / "blank.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8), dtype=np.uint8)).save(data / "test" / "tb" / "tiny.png")
    ds = load_dataset(data, 32, progress=False)
    skipped = {path: reason for path, _, reason in ds.skipped()}
    assert skipped == {"train/healthy/blank.png": "image is blank (every pixel is 0): nothing to classify",
                       "test/tb/tiny.png": "image is 8x8 pixels: too small to be a radiograph (each side needs at least 16)"}
    assert sum(ds.image_counts().values()) == 120
    audit = audit_dataset(data, progress=False)
    assert {c["path"] for c in audit["corrupt"] if c["unusable"]} == set(skipped) and audit["n_decoded"] == 120
    said = [m for m in audit_messages(audit) if "blank" in m]
    assert len(said) == 1 and said[0].startswith("2 images are blank (one grey level, or nearly: fewer than 8 levels apart) or too small "
                                                 "to be a radiograph: left out of training")


def test_nearly_blank_multi_page_and_one_pixel_wide_images_are_refused(tmp_path, capsys):
    import io

    import cxrkit
    from cxrkit.data.decode import ImageDecodeError, UnsupportedImageError, UnusableImageError, read_grayscale

    rng = np.random.default_rng(0)
    radiograph = rng.integers(40, 220, (48, 48), dtype=np.uint8)
    # A 0-1 float image cast to uint8 (levels 0 and 1): "tb", P = 0.72, from an image with nothing in it.
    with pytest.raises(UnusableImageError, match="nearly blank .*span 0 to 1 of 0-255.*without scaling by 255"):
        cxrkit.data.decode.check_usable((radiograph / 255.0).round().astype(np.uint8))
    # The same mistake saved as 16 bits is stretched to 0 and 255 before the check: it got "tb", P 0.95.
    from cxrkit.data.decode import load_grayscale

    sixteen = io.BytesIO()
    Image.fromarray((radiograph > 127).astype(np.uint16)).save(sixteen, format="PNG")
    with pytest.raises(UnusableImageError, match="holds only 2 grey levels"):
        load_grayscale(sixteen.getvalue(), 32)
    # A two-page TIFF: page 1 was classified without a word, while a two-frame DICOM is refused.
    pages = tmp_path / "two.tif"
    Image.fromarray(radiograph).save(pages, save_all=True, append_images=[Image.fromarray(255 - radiograph)])
    with pytest.raises(UnsupportedImageError, match="TIFF file holds 2 images"):
        read_grayscale(pages)
    # A 1 x 40000 PNG is refused from its header (it was decoded first: a 1 x 39,000,000 one took 7 s): its pixel data cut off
    # here shows the order, "too small" and not "cannot decode".
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40000, 1), dtype=np.uint8)).save(buf, format="PNG")
    with pytest.raises(ImageDecodeError, match="is 1x40000 pixels: too small"):
        read_grayscale(buf.getvalue()[: len(buf.getvalue()) // 2])


def test_a_blank_image_in_a_medmnist_file_is_left_out(tmp_path):
    from cxrkit.data.dataset import load_dataset

    rng = np.random.default_rng(0)
    arrays = {}
    for split, m in (("train", 20), ("val", 6), ("test", 6)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (m, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.arange(m).reshape(-1, 1) % 2
    arrays["test_images"][2] = 7
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    ds = load_dataset(tmp_path / "pneumoniamnist.npz", 16, progress=False)
    assert [(split, reason) for _, split, reason in ds.skipped()] == [("test", "image is blank (every pixel is 7): nothing to classify")]
    assert ds.image_counts() == {"train": 20, "val": 6, "test": 5}


def test_a_link_to_nothing_or_a_link_loop_is_one_skipped_file_not_the_end_of_training(binary_data, tmp_path):
    # One dangling link stopped train, audit and evaluate ("No such file or directory" from a cache key's stat), a loop raised
    # "unexpected RuntimeError", and unreadable files were one "group of byte-identical copies" leaking across splits.
    from cxrkit.audit.dataset_audit import audit_before_training, audit_dataset
    from cxrkit.data.dataset import load_dataset

    data = tmp_path / "data"
    shutil.copytree(binary_data, data)
    (data / "test" / "tb" / "dangling.png").symlink_to("nowhere.png")
    (data / "train" / "tb" / "loop1.png").symlink_to("loop2.png")
    (data / "train" / "tb" / "loop2.png").symlink_to("loop1.png")
    ds = load_dataset(data, 32, progress=False)
    assert {p: r.split(":")[0] for p, _, r in ds.skipped()} == {"test/tb/dangling.png": "file not found", "train/tb/loop1.png": "cannot read file",
                                                                 "train/tb/loop2.png": "cannot read file"}
    audit = audit_dataset(data, progress=False)
    assert audit["n_decoded"] == 120 and len(audit["corrupt"]) == 3 and audit["duplicates"]["exact"]["clusters"] == 0
    summary = audit_before_training(ds, None, False, tmp_path / "run", progress=False)
    assert not summary.get("skipped") and not summary["leakage"]  # one link among the first 50 files skipped the audit as "arrays"
    from cxrkit.training.trainer import _note_dataset_findings

    said: list[str] = []
    _note_dataset_findings(ds, said.append)  # skipped.csv listed them, but training said nothing
    assert said == ["note: 3 image(s) could not be used and were left out (e.g. test/tb/dangling.png: file not found); skipped.csv in "
                    "the run lists them all"]
