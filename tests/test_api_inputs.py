"""Bad inputs to the Python API (cxrkit.load, Run.predict, Run.predict_files, cxrkit.train, cxrkit.evaluate) that once gave
a plausible-looking answer or a raw traceback: each is now a one-line ValueError (RunError for run folders)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import cxrkit
from cxrkit.run import RunError

from .conftest import record_calibration, record_decision, record_weights


def _copy_run(tiny_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoint", "plots", "report.html"))
    return run


def _edit_weights(run: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(run / "model.safetensors"))
    save_file(edit(state), str(run / "model.safetensors"))
    record_weights(run)


@pytest.mark.parametrize("dtype", ["int32", "bool"])
def test_weights_of_integers_are_refused(dtype, tiny_run, tmp_path):
    import torch

    run = _copy_run(tiny_run, tmp_path)
    # int weights were cast to float by load_state_dict: mostly zeros, P = 0.5 for every image, decided "healthy"
    _edit_weights(run, lambda s: {k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v for k, v in s.items()})
    with pytest.raises(RunError, match=rf"tensor\(s\) of another kind of number \(first .*: torch.{dtype} vs torch.float32\)"):
        cxrkit.load(run)


CALIBRATIONS = {
    # each of these once loaded and then changed every probability without an error
    "negative temperature": ({"method": "temperature", "params": {"temperature": -1.0}}, "positive finite"),
    "zero temperature": ({"method": "temperature", "params": {"temperature": 0}}, "positive finite"),
    "decreasing isotonic map": ({"method": "isotonic", "params": {"x": [0.0, 1.0], "y": [1.0, 0.0]}}, "non-decreasing"),
    # and these were a TypeError or KeyError at the first prediction
    "temperature as text": ({"method": "temperature", "params": {"temperature": "1"}}, "positive finite"),
    "params missing": ({"method": "temperature"}, "method and params"),
    "unknown key": ({"method": "temperature", "params": {"temperature": 1.0}, "foo": 1}, "unknown keys foo"),
    "platt without slope": ({"method": "platt", "params": {"intercept": 0.0}}, "slope and intercept"),
}


@pytest.mark.parametrize("name", list(CALIBRATIONS))
def test_damaged_calibration_is_refused_at_load(name, tiny_run, tmp_path):
    from cxrkit.cli import main

    content, words = CALIBRATIONS[name]
    run = _copy_run(tiny_run, tmp_path)
    (run / "calibration.json").write_text(json.dumps(content))
    record_calibration(run)
    with pytest.raises(RunError, match=rf"calibration.json: .*{words}.*--remove") as exc:
        cxrkit.load(run)
    assert "\n" not in str(exc.value)
    assert main(["calibrate", str(run), "--remove"]) == 0  # the way out the message names works on the damaged file
    assert not (run / "calibration.json").exists() and cxrkit.load(run).calibration is None


def _edit_meta(run: Path, edit) -> None:
    meta = json.loads((run / "meta.json").read_text())
    edit(meta)
    (run / "meta.json").write_text(json.dumps(meta))


def _two_finding_run(tiny_run: Path, tmp_path: Path) -> Path:
    """A copy of the tiny run whose one binary output becomes two independent findings (its last layer doubled)."""
    import torch

    run = _copy_run(tiny_run, tmp_path)
    _edit_weights(run, lambda s: {k: torch.cat([v, v]) if k.startswith("head.3.") else v for k, v in s.items()})
    _edit_meta(run, lambda m: m.update(task="multilabel", classes=["effusion", "nodule"], num_outputs=2, positive_class=None,
                                       thresholds={"effusion": {"value": 0.5}, "nodule": {"value": 0.5}},
                                       threshold={"rule": "youden", "value": None, "per_finding": True}))
    record_decision(run)
    return run


def test_two_finding_multilabel_prediction_has_no_single_probability(tiny_run, tmp_path):
    run = _two_finding_run(tiny_run, tmp_path)
    p = cxrkit.load(run).predict(np.tile(np.arange(108, 148, dtype=np.uint8), (40, 1)))
    assert set(p.probabilities) == {"effusion", "nodule"}
    assert p.probability is None  # was P(nodule), passed off as "P(positive)"


def test_scale_is_never_ignored(tiny_run):
    run = cxrkit.load(tiny_run)
    gray = np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)
    mask = (gray > 127).astype(np.uint8)  # 0/1 values, "1 means white": was read as 0-255, a black image, and classified
    with pytest.raises(ValueError, match=r"scale=1 applies to float arrays; a uint8 array is read as 0-255"):
        run.predict(mask, scale=1.0)
    with pytest.raises(ValueError, match=r"scale=4095 applies to float arrays; a uint16 array is read as a 16-bit image"):
        run.predict(gray.astype(np.uint16) * 16, scale=4095)
    with pytest.raises(ValueError, match="input 0 .*scale must be a positive number, got 'x'"):
        run.predict([gray, gray], scale="x")  # a uint8 array took any scale, text included
    expected = run.predict(gray).probability
    assert run.predict(gray, scale=255).probability == pytest.approx(expected, abs=1e-6)  # the scale a uint8 array has
    levels = (gray // 16).astype(np.uint8)  # 16 grey levels, 0-15 (a 0/1 mask is no radiograph: refused as nearly blank)
    assert run.predict(levels.astype(np.float32), scale=15).probability == pytest.approx(run.predict(levels * 17).probability, abs=1e-6)
    # a NumPy number (a.max()) is a number: it was refused as "not a positive number"
    floats = gray.astype(np.float64)
    assert run.predict(floats, scale=np.float64(255.0)).probability == pytest.approx(expected, abs=1e-6)
    assert run.predict(floats, scale=np.int64(255)).probability == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="scale must be a positive number"):
        run.predict(floats, scale=np.bool_(True))


def test_byte_order_masks_and_masked_arrays(tiny_run):
    run = cxrkit.load(tiny_run)
    a = (np.arange(40 * 40).reshape(40, 40) * 37 % 4096).astype(np.uint16)
    # big-endian uint16 (raw and FITS readers give it) is the same image: was "must be uint8, uint16 or float, got >u2"
    assert run.predict(a.astype(">u2")).probability == run.predict(a).probability
    with pytest.raises(ValueError, match=r"masked array's mask would be ignored; pass array.filled"):
        run.predict(np.ma.masked_array(a, a > 2000))  # the hidden pixels' values went to the model
    with pytest.raises(ValueError, match=r"got bool; for a 0/1 image pass array.astype\(np.float32\) with scale=1"):
        run.predict(a > 2000)  # the advice was .astype(np.uint8): a 0/1, all but black image


def test_scale_with_a_file_or_pil_image_is_refused(tiny_run, tmp_path):
    from PIL import Image

    run = cxrkit.load(tiny_run)
    dim = np.random.default_rng(0).uniform(0, 0.5, (40, 40)).astype(np.float32)  # a dark image: 1.0 would be white
    twelve_bit = (dim * 4095).astype(np.uint16)
    png = tmp_path / "twelve_bit.png"
    Image.fromarray(twelve_bit).save(png)
    as_array = run.predict(dim, scale=1.0).probability
    # Each was stretched from its minimum to its maximum, scale ignored: another probability than the array's, no error.
    refused = "scale=1.0 applies to NumPy float arrays; "
    for item, message in ((Image.fromarray(dim), refused + "a PIL image is read as its mode says"),
                          (png.read_bytes(), refused + "a file is read as its format says"),
                          (png, f"{png}: {refused}a file is read as its format says"), (str(png), f"{png}: {refused}a file")):
        with pytest.raises(ValueError, match="^" + re.escape(message)):
            run.predict(item, scale=1.0)
    with pytest.raises(ValueError, match=r"scale=4095 applies to NumPy float arrays; a file"):
        run.predict(png, scale=4095)
    with pytest.raises(ValueError, match=r"^input 1 \(.*twelve_bit.png\): scale=1.0 applies to NumPy float arrays"):
        run.predict([dim, png], scale=1.0)
    assert run.predict([dim], scale=1.0)[0].probability == pytest.approx(as_array, abs=1e-6)
    assert run.predict(twelve_bit.astype(np.float32), scale=4095).probability == pytest.approx(as_array, abs=1e-4)
    assert np.isfinite(run.predict(png).probability)  # without scale a file is read as before


def test_empty_pil_image_is_refused(tiny_run):
    from PIL import Image

    run = cxrkit.load(tiny_run)
    for size in ((0, 0), (0, 40), (40, 0)):
        with pytest.raises(ValueError, match=rf"the image is empty \({size[0]}x{size[1]} pixels\)"):
            run.predict(Image.new("L", size))  # was given a probability, like a black image


def test_predict_files_checks_its_arguments(tiny_run, tmp_path):
    from PIL import Image

    run = cxrkit.load(tiny_run)
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)).save(image)
    # batch_size=-1 gave a NaN row for every file and no error: "not classified" with no reason
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="batch_size must be a whole number >= 1"):
            run.predict_files([image], batch_size=bad)
    with pytest.raises(ValueError, match="workers must be a whole number"):
        run.predict_files([image], workers="2")  # was a TypeError from a comparison
    with pytest.raises(ValueError, match="paths must be a list of files, got one"):
        run.predict_files(str(image))  # was one "file not found" per letter of the path
    with pytest.raises(ValueError, match="paths must be a list of files, got one: PosixPath"):
        run.predict_files(tmp_path)  # a folder as a Path was a TypeError from len()
    with pytest.raises(ValueError, match="paths must be a list of file paths, got int"):
        run.predict_files(3)
    with pytest.raises(ValueError, match=r"item 1 is array \(40, 40\) uint8 \(Run.predict takes arrays"):
        run.predict_files([image, np.zeros((40, 40), np.uint8)])  # was a TypeError from open()
    probs, errors = run.predict_files([str(image), image], batch_size=1, workers=0)
    assert errors == {} and np.isfinite(probs).all() and np.allclose(probs[0], probs[1])
    # a generator was a TypeError (no len()), and on_batch=3 one after the first batch had been classified
    from_generator, _ = run.predict_files((p for p in [image, image]), workers=0)
    np.testing.assert_allclose(from_generator, probs, atol=1e-6)
    with pytest.raises(ValueError, match="on_batch must be a function of a uint8 batch, or None; got int"):
        run.predict_files([image], on_batch=3)
    from cxrkit.prediction.results import predict_results  # documented for batches: a generator was a TypeError

    assert [r["probabilities"]["tb"] for r in predict_results(run, (p for p in [image]), workers=0)] == pytest.approx([probs[0, 1]])


def test_calibrated_must_be_a_boolean(tiny_run, tmp_path):
    run_dir = _copy_run(tiny_run, tmp_path)
    (run_dir / "calibration.json").write_text(json.dumps({"method": "temperature", "params": {"temperature": 3.0}}))
    record_calibration(run_dir)
    run = cxrkit.load(run_dir)
    size = run.preprocessing.image_size
    images = np.random.default_rng(0).integers(0, 256, (2, size, size), dtype=np.uint8)
    raw = run.predict_arrays(images, calibrated=False)
    assert not np.allclose(raw, run.predict_arrays(images))  # the calibration changes these probabilities
    for bad in ("no", "false", 0, None):
        with pytest.raises(ValueError, match="calibrated must be True or False"):
            run.predict_arrays(images, calibrated=bad)  # "no" and "false" were truthy: calibrated probabilities came back
    np.testing.assert_array_equal(run.predict_arrays(images, calibrated=np.bool_(False)), raw)


def test_apply_calibration_checks_its_probabilities(tiny_run, tmp_path):
    run_dir = _copy_run(tiny_run, tmp_path)
    (run_dir / "calibration.json").write_text(json.dumps({"method": "temperature", "params": {"temperature": 2.0}}))
    record_calibration(run_dir)
    run = cxrkit.load(run_dir)
    assert run.apply_calibration([[0.2, 0.8]]) == pytest.approx(np.array([[1 / 3, 2 / 3]]))
    # each came back as plausible probabilities: logits (2.0 -> 0.9997), a NaN row, three columns for a two-class run
    for probs in ([[-1.0, 2.0]], [[np.nan, np.nan]]):
        with pytest.raises(ValueError, match="probabilities must be finite numbers from 0 to 1"):
            run.apply_calibration(np.array(probs))
    for probs in (np.array([[0.2, 0.3, 0.5]]), np.array([[0.2, 0.8j]])):
        with pytest.raises(ValueError, match=r"probabilities must be a numeric array of shape \(N, 2\)"):
            run.apply_calibration(probs)
    with pytest.raises(ValueError, match=r"probabilities must be a numeric array of shape \(N, 2\)"):
        run.decide(np.array([[0.2, 0.8j]]))  # complex numbers were compared with the threshold


def test_train_flags_must_be_booleans(tiny_run, binary_data, tmp_path):
    from cxrkit.config import ConfigError

    run = _copy_run(tiny_run, tmp_path)
    before = (run / "model.safetensors").read_bytes()
    for flag in ("overwrite", "resume", "progress"):
        with pytest.raises(ConfigError, match=f"{flag} must be True or False, got 'no'"):
            # overwrite="no" is truthy: the run in out was deleted and trained again
            cxrkit.train(binary_data, out=str(run), model="cnn", image_size=32, epochs=1, batch_size=16, **{flag: "no"})
    assert (run / "model.safetensors").read_bytes() == before


EVALUATE_OPTIONS = {
    "unknown option": ({"prevalance": 0.1}, r"unknown evaluate option\(s\) prevalance; known: .*prevalence"),  # was a TypeError
    "heat-map method unknown": ({"explain": "gradcam+"}, "explain must be one of auto, gradcam, gradcam"),  # silently no heat maps
    "heat-map method True": ({"explain": True}, "explain must be one of"),
    "prevalence as text": ({"prevalence": "0.1"}, "prevalence must be a number between 0 and 1"),  # was a TypeError
    "prevalence 1": ({"prevalence": 1}, "prevalence must be a number between 0 and 1"),
    "by a string": ({"by": "sex"}, r"by must be a list of strings, e.g. \['sex'\]"),  # was read as columns s, e, x
    "by_pattern a string": ({"by_pattern": "site=^a"}, "by_pattern must be a list of strings"),
    "class_map a string": ({"class_map": "tb"}, "class_map must map"),  # was "dictionary update sequence element #0"
    "data a number": ({"data": 3}, "data must be a dataset path, got int"),  # was a TypeError
    "split a number": ({"split": 1}, "split must be train, val, test or all, got 1"),
    # a TypeError from pathlib after the whole evaluation had run
    "recalibrate_on a number": ({"data": "elsewhere", "recalibrate_on": 3}, "recalibrate_on must be a path, got int"),
    "by_table a number": ({"by": ["sex"], "by_table": 3}, "by_table must be a path, got int"),
    "by_table without by": ({"by_table": "table.csv"}, r"by_table names the table of the by= columns; give by=\[...\] too"),  # ignored
    "write_report as text": ({"write_report": "no"}, "write_report must be True or False, got 'no'"),  # truthy: written
    "progress as text": ({"progress": "no"}, "progress must be True or False, got 'no'"),
}


@pytest.mark.parametrize("name", list(EVALUATE_OPTIONS))
def test_evaluate_options_are_checked_first(name, tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path)
    options, match = EVALUATE_OPTIONS[name]
    with pytest.raises(ValueError, match=match):
        cxrkit.evaluate(run, **options)
    assert not json.loads((run / "meta.json").read_text()).get("evaluations")  # nothing was evaluated or written


@pytest.mark.parametrize("path", [None, 3, b"runs/tiny"])
def test_run_path_of_another_type(path):
    with pytest.raises(RunError, match=f"the run must be a folder path \\(str or Path\\), got {type(path).__name__}"):
        cxrkit.load(path)  # was a TypeError from pathlib
    with pytest.raises(RunError, match="the run must be a folder path"):
        cxrkit.evaluate(path)


SHIFT_REFERENCES = {
    "a list": (lambda r: [], "must hold an object with overall and per_class"),  # was a TypeError
    "overall missing": (lambda r: {"per_class": r["per_class"]}, "must hold an object with overall"),  # was a KeyError
    "text in a statistic": (lambda r: {**r, "overall": {**r["overall"], "mean": ["a"]}}, "overall.mean must be a non-empty list"),
    "empty statistic": (lambda r: {**r, "overall": {**r["overall"], "p95": []}}, "overall.p95 must be a non-empty list"),
    "short histogram": (lambda r: {**r, "overall": {**r["overall"], "histogram": [1.0]}}, r"overall.histogram .*\(32 of them\)"),
    "class summary damaged": (lambda r: {**r, "per_class": {"tb": {**r["overall"], "std": None}}}, "per_class.tb.std"),
}


@pytest.mark.parametrize("name", list(SHIFT_REFERENCES))
def test_damaged_shift_reference(name, tiny_run, tmp_path):
    run_dir = _copy_run(tiny_run, tmp_path)
    edit, match = SHIFT_REFERENCES[name]
    ref = json.loads((run_dir / "shift_reference.json").read_text())
    (run_dir / "shift_reference.json").write_text(json.dumps(edit(ref)))
    with pytest.raises(RunError, match=rf"shift_reference.json: {match}.*delete it") as exc:
        cxrkit.load(run_dir).predict(np.tile(np.arange(108, 148, dtype=np.uint8), (40, 1)))
    assert "\n" not in str(exc.value)
    (run_dir / "shift_reference.json").unlink()
    # the way out works, and the answer says the check was not made rather than that the image passed it
    assert cxrkit.load(run_dir).predict(np.tile(np.arange(108, 148, dtype=np.uint8), (40, 1))).ood_warning is None


def test_a_shift_reference_that_is_not_json_is_a_run_error_at_load(tiny_run, tmp_path):
    run_dir = _copy_run(tiny_run, tmp_path)
    (run_dir / "shift_reference.json").write_text("{not json")
    # It was a RunRecordError (which `except cxrkit.RunError` missed) and only at the first prediction: serve started, then
    # answered every request with it.
    with pytest.raises(RunError, match=r"shift_reference.json .*delete it to predict without the out-of-distribution check"):
        cxrkit.load(run_dir)


def test_a_shift_reference_from_another_run_is_refused(tiny_run, tmp_path):
    run_dir = _copy_run(tiny_run, tmp_path)
    meta = json.loads((run_dir / "meta.json").read_text())
    assert len(meta["shift_reference_sha256"]) == 64  # training records it
    ref = json.loads((run_dir / "shift_reference.json").read_text())
    ref["overall"]["mean"] = [v + 0.2 for v in ref["overall"]["mean"]]  # a valid reference of brighter training images
    (run_dir / "shift_reference.json").write_text(json.dumps(ref))
    with pytest.raises(RunError, match=r"shift_reference.json is not the file .*meta.json was written with .*copied from another run") as exc:
        cxrkit.load(run_dir).predict(np.tile(np.arange(108, 148, dtype=np.uint8), (40, 1)))
    assert "\n" not in str(exc.value)
    meta.pop("shift_reference_sha256")  # a run written before the hash (schema 2): nothing to check it against
    meta["schema_version"] = 2
    (run_dir / "meta.json").write_text(json.dumps(meta))
    assert cxrkit.load(run_dir).predict(np.tile(np.arange(108, 148, dtype=np.uint8), (40, 1))).ood_warning in (True, False)
    meta["shift_reference_sha256"] = "abc"
    (run_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(RunError, match="shift_reference_sha256 must be the 64 hex digits"):
        cxrkit.load(run_dir)


@pytest.mark.parametrize("edit, match", [
    ({"complete": "false"}, "complete must be true or false, got 'false'"),  # was read as complete: the run decided
    ({"complete": 1}, "complete must be true or false, got 1"),
    ({"tta_flips": "yes"}, "tta_flips must be true or false, got 'yes'"),  # truthy: mirror views a threshold was not chosen on
    ({"thresholds": "0.5"}, "thresholds \\(one per finding\\) belong to multi-label runs; a binary run has null"),  # TypeError
])
def test_meta_flags_of_the_wrong_type(edit, match, tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path)
    _edit_meta(run, lambda m: m.update(edit))
    with pytest.raises(RunError, match=f"meta.json: {match}"):
        cxrkit.load(run).predict(np.tile(np.arange(108, 148, dtype=np.uint8), (40, 1)))


def test_group_pattern_must_be_a_regular_expression(binary_data, tmp_path):
    from cxrkit.config import ConfigError

    with pytest.raises(ConfigError, match=r"group_pattern \(--group-pattern\): '\(\[' is not a regular expression \(unterminated character set"):
        cxrkit.train(binary_data, out=str(tmp_path / "r"), model="cnn", image_size=32, epochs=1, group_pattern="([", progress=False)
    assert not (tmp_path / "r" / "meta.json").exists()


def _edit_config(run: Path, edit) -> None:
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    edit(cfg)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


@pytest.mark.parametrize("file, edit, match", [
    # the weights load at either size (the cnn pools adaptively): predictions came silently at meta.json's size
    ("config.yaml", {"image_size": 64}, "preprocessing.image_size 32 but .*config.yaml has image_size 64"),
    ("meta.json", {"preprocessing.image_size": 64}, "preprocessing.image_size 64 but .*config.yaml has image_size 32"),
    ("config.yaml", {"aspect": "squash"}, "preprocessing.aspect 'pad' but .*config.yaml has aspect 'squash'"),
    ("config.yaml", {"intensity": "histeq"}, "preprocessing.intensity 'none' but .*config.yaml has intensity 'histeq'"),
    ("config.yaml", {"crop_border": True}, "preprocessing.crop_border False but .*config.yaml has crop_border True"),
    ("config.yaml", {"model": "simple_cnn"}, "model 'cnn' but .*config.yaml has model 'simple_cnn'"),
    ("config.yaml", {"dropout": 0.3}, "model_options.dropout None but .*config.yaml has dropout 0.3"),
    ("config.yaml", {"task": "multiclass"}, "task 'binary' but .*config.yaml has task 'multiclass'"),
    ("meta.json", {"tta": False}, "tta False but .*config.yaml has tta True"),
])
def test_meta_and_config_that_disagree_are_refused(file, edit, match, tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path)
    if file == "config.yaml":
        _edit_config(run, lambda c: c.update(edit))
    else:
        def change(m: dict) -> None:
            for key, value in edit.items():
                *parents, last = key.split(".")
                target = m
                for part in parents:
                    target = target[part]
                target[last] = value

        _edit_meta(run, change)
    with pytest.raises(RunError, match=rf"^{run / 'meta.json'} has {match}: the run folder was edited or mixes files of two runs") as exc:
        cxrkit.load(run)
    assert "\n" not in str(exc.value)


def test_config_without_the_shared_settings_still_loads(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path)  # an older run's config.yaml, before these settings were recorded in it
    _edit_config(run, lambda c: [c.pop(k) for k in ("image_size", "aspect", "intensity", "crop_border", "tta", "width", "dropout")])
    reference = cxrkit.load(tiny_run).predict(np.tile(np.arange(108, 148, dtype=np.uint8), (40, 1))).probabilities
    assert cxrkit.load(run).predict(np.tile(np.arange(108, 148, dtype=np.uint8), (40, 1))).probabilities == reference


def test_calibration_is_parsed_once_and_again_when_it_changes(tiny_run, tmp_path, monkeypatch):
    from cxrkit.metrics.calibration import Calibration

    run_dir = _copy_run(tiny_run, tmp_path)
    (run_dir / "calibration.json").write_text(json.dumps({"method": "temperature", "params": {"temperature": 2.0}}))
    record_calibration(run_dir)
    run = cxrkit.load(run_dir)
    parsed = []
    real = Calibration.from_dict.__func__
    monkeypatch.setattr(Calibration, "from_dict", classmethod(lambda cls, d: parsed.append(d) or real(cls, d)))
    images = np.stack([v + np.tile(np.arange(32, dtype=np.uint8), (32, 1)) for v in (40, 110, 200)])
    raw = run.predict_arrays(images, calibrated=False)

    def temperature(t: float) -> np.ndarray:
        return real(Calibration, {"method": "temperature", "params": {"temperature": t}}).apply(raw)

    for _ in range(3):
        np.testing.assert_allclose(run.predict_arrays(images), temperature(2.0))
    assert run.predict(images[0]).calibrated
    assert len(parsed) == 0  # parsed (and validated) once, by Run.load: not again for every prediction

    run.calibration_data = {"method": "temperature", "params": {"temperature": 0.5}}  # replaced through the API
    np.testing.assert_allclose(run.predict_arrays(images), temperature(0.5))
    run.calibration_data["params"]["temperature"] = 3.0  # or edited in place
    np.testing.assert_allclose(run.predict_arrays(images), temperature(3.0))
    np.testing.assert_allclose(run.predict_arrays(images), temperature(3.0))
    assert len(parsed) == 2
    run.calibration_data["params"]["temperature"] = -1.0  # an edit that breaks it is refused, as before the cache
    with pytest.raises(ValueError, match="temperature must be a positive finite number"):
        run.predict_arrays(images)
    run.calibration_data = None
    np.testing.assert_allclose(run.predict_arrays(images), raw)


@pytest.mark.parametrize("recorded", [True, False], ids=["hash in meta.json", "older run without it"])
def test_model_id_names_the_weights_loaded_not_the_file_now(recorded, tiny_run, tmp_path):
    from PIL import Image
    from safetensors.torch import load_file, save_file

    from cxrkit.prediction.predict_csv import predict_to_csv

    run_dir = _copy_run(tiny_run, tmp_path)
    if not recorded:
        _edit_meta(run_dir, lambda m: (m.pop("weights_sha256"), m.update(schema_version=2)))
    original = cxrkit.load(tiny_run)
    run = cxrkit.load(run_dir)
    # A training --overwrite (or a copy) rewrites the weights after this run was loaded and before its first prediction.
    state = load_file(str(run_dir / "model.safetensors"))
    save_file({k: v * 1.5 if v.is_floating_point() else v for k, v in state.items()}, str(run_dir / "model.safetensors"))
    if recorded:
        record_weights(run_dir)  # the training finished: its meta.json names the new weights
    assert run.weights_sha256() == original.weights_sha256()
    # The id was the new file's: rows predicted with the old weights were stamped as the new model's, so a resumed CSV
    # took them for its own and mixed two models' results.
    assert run.model_id == original.model_id
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)).save(image)
    out = tmp_path / "p.csv"
    predict_to_csv(run, [image], out, progress=False)
    with pytest.raises(ValueError, match="holds predictions of another model"):
        predict_to_csv(cxrkit.load(run_dir), [image], out, progress=False)



def test_model_id_follows_a_threshold_or_calibration_set_on_the_loaded_run(tiny_run, tmp_path):
    from PIL import Image

    from cxrkit.prediction.predict_csv import predict_to_csv

    run = cxrkit.load(_copy_run(tiny_run, tmp_path))
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)).save(image)
    out = tmp_path / "p.csv"
    predict_to_csv(run, [image], out, progress=False)
    before = run.model_id
    run.record.set_threshold({**run.record.threshold, "value": 0.99})
    # The id was computed once: rows decided at 0.99 were stamped with the id of the rule that decided the first ones.
    assert run.model_id != before
    with pytest.raises(ValueError, match="holds predictions of another model"):
        predict_to_csv(run, [image], out, progress=False)
    run.record.set_threshold({**run.record.threshold, "value": cxrkit.load(tiny_run).threshold})
    assert run.model_id == before
    run.record.referral = {"lower": 0.1, "upper": 0.9}  # a band added later: images in it are "refer", so another decision rule
    assert run.model_id != before
    run.record.referral = None
    assert run.model_id == before


def test_train_resume_continues_with_the_runs_own_settings(tiny_run, binary_data, tmp_path):
    from cxrkit.config import ConfigError

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)  # with its checkpoint
    before = (run_dir / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match=r"^resume=True continues .* with its own settings, which differ: model 'cnn' \(given 'mlp'\)$"):
        cxrkit.train(binary_data, out=str(run_dir), resume=True, progress=False, model="mlp")
    with pytest.raises(ConfigError, match=r"^data must be a dataset path .* got list; several sites"):
        cxrkit.train([binary_data, binary_data], out=str(tmp_path / "two"), progress=False)  # was "dataset path [...] does not exist"
    # Was refused, "these differ: batch_size, epochs, image_size, ...": the defaults, not the run's config.yaml, were compared
    # with the run (the same call that trained it, plus resume=True, was refused when it had chosen the image size).
    run = cxrkit.train(binary_data, out=str(run_dir), resume=True, progress=False, threshold_rule="sensitivity:0.9")
    assert run.preprocessing.image_size == 32 and run.record.model == "cnn" and run.record.threshold["rule"] == "sensitivity:0.9"
    assert (run_dir / "model.safetensors").read_bytes() == before  # the finished run's weights, not a new training


def test_identical_weights_make_identical_files_in_every_process(tmp_path):
    """The safetensors writer keeps the header's metadata in a hash map: identical runs wrote files whose SHA-256 (the
    run's weights id) differed from process to process."""
    import subprocess
    import sys

    code = ("import sys, torch; from pathlib import Path; from cxrkit.run import save_weights; torch.manual_seed(0); "
            "save_weights(torch.nn.Linear(3, 2), Path(sys.argv[1]), classes=['a', 'b'], inputs={'image_size': 32, 'tta': True})")
    files = [tmp_path / f"w{i}.safetensors" for i in range(3)]
    for f in files:
        subprocess.run([sys.executable, "-c", code, str(f)], check=True, timeout=120)
    assert len({f.read_bytes() for f in files}) == 1
    from safetensors import safe_open

    with safe_open(str(files[0]), "pt") as f:
        assert f.metadata()["cxrkit_classes"] == '["a", "b"]' and sorted(f.keys()) == ["bias", "weight"]


def test_referral_on_a_multilabel_run_says_it_needs_a_binary_run(tiny_run, tmp_path, capsys):
    from cxrkit.cli import main

    run = _two_finding_run(tiny_run, tmp_path)
    # Was "has no validation predictions in predictions.csv to choose the band on, and its training data is not at hand".
    assert main(["referral", str(run), "npv:0.98"]) == 2
    assert capsys.readouterr().err.strip() == f"error: a referral band needs a binary run (one disease against normal); {run} is a multilabel run"


def test_rows_that_are_not_probabilities_of_one_class_are_not_decided(tiny_run):
    import cxrkit

    run = cxrkit.load(tiny_run)
    # [0.9, 0.9] was decided "tb" and [0, 0] "healthy": scores of two models, or logits squashed one by one, not one image's classes
    for rows in ([[0.9, 0.9]], [[0.0, 0.0]]):
        with pytest.raises(ValueError, match="summing to 1; row 0 sums to"):
            run.decision_labels(np.array(rows))
        with pytest.raises(ValueError, match="summing to 1"):
            run.decide(np.array(rows))
    assert run.decision_labels(np.array([[0.25, 0.75], [1.0, 0.0]]))[1] == "healthy"
