"""The public Python API: cxrkit.load / train / evaluate, and Run.predict on every kind of input."""

from __future__ import annotations

import csv
import io
import shutil

import numpy as np
import pytest
from PIL import Image

import cxrkit
from cxrkit.cli import main


def _cli_probability(run, path, tmp_path) -> float:
    out = tmp_path / f"{path.stem}.csv"
    assert main(["predict", str(run), str(path), "--out", str(out)]) == 0
    with open(out, newline="") as f:
        return float(next(csv.DictReader(f))["prob_tb"])


def test_same_image_every_way_gives_the_cli_probability(tiny_run, binary_data, tmp_path):
    run = cxrkit.load(tiny_run)
    path = sorted((binary_data / "test" / "tb").glob("*.png"))[0]
    gray = np.asarray(Image.open(path))
    assert gray.dtype == np.uint8 and gray.ndim == 2 and gray.shape != (32, 32)  # not the run's size: predict resizes
    expected = _cli_probability(tiny_run, path, tmp_path)
    inputs = {
        "path": (str(path), {}),
        "bytes": (path.read_bytes(), {}),
        "PIL": (Image.open(path), {}),
        "uint8 array": (gray, {}),
        "RGB uint8 array": (np.repeat(gray[..., None], 3, axis=2), {}),
        "float in [0, 1]": (gray / 255.0, {"scale": 1.0}),
        "float in [0, 255]": (gray.astype(np.float32), {"scale": 255}),
    }
    for name, (x, kw) in inputs.items():
        p = run.predict(x, **kw)
        assert p.probability == pytest.approx(expected, abs=1e-4), name
        assert p.decision == ("tb" if p.probability >= run.threshold else "healthy")
        assert set(p.probabilities) == {"healthy", "tb"}

    # A 16-bit radiograph: the array and the 16-bit PNG file give the same answer.
    wide = (gray.astype(np.uint16) * 200 + 1000).astype(np.uint16)
    png16 = tmp_path / "wide.png"
    Image.fromarray(wide).save(png16)
    assert Image.open(png16).mode.startswith("I")
    assert run.predict(wide).probability == pytest.approx(_cli_probability(tiny_run, png16, tmp_path), abs=1e-4)


def test_predict_list_and_errors(tiny_run, binary_data):
    run = cxrkit.load(tiny_run)
    path = sorted((binary_data / "test" / "healthy").glob("*.png"))[0]
    gray = np.asarray(Image.open(path))
    many = run.predict([path, gray])
    assert len(many) == 2 and many[0].probabilities == pytest.approx(many[1].probabilities, abs=1e-6)
    assert run.predict([]) == []
    with pytest.raises(ValueError, match="needs scale="):
        run.predict(gray / 255.0)  # without scale a float array is ambiguous: refused, not guessed
    with pytest.raises(ValueError, match=r"lie in \[0, scale=1\]"):
        run.predict(gray.astype(float), scale=1.0)
    with pytest.raises(ValueError, match="NaN"):
        run.predict(np.full((40, 40), np.nan), scale=1.0)
    with pytest.raises(ValueError, match="shape"):
        run.predict(np.zeros((2, 3, 40, 40), np.uint8))
    with pytest.raises(ValueError, match="uint8, uint16 or float"):
        run.predict(gray.astype(np.int64))
    with pytest.raises(ValueError, match="input 1"):
        run.predict([path, "no/such/file.png"])
    with pytest.raises(ValueError, match=r"^no/such/file.png: file not found$"):
        run.predict("no/such/file.png")  # was "file not found", naming no file
    with pytest.raises(ValueError, match=rf"^{binary_data}: cannot read file: .*Is a directory"):
        run.predict(binary_data)
    with pytest.raises(ValueError, match="cannot predict on a dict"):
        run.predict({"image": 1})
    # The low-level array entry point takes only what the run itself decoded.
    with pytest.raises(ValueError, match="Run.predict"):
        run.predict_arrays(gray / 255.0)


def test_batch_size_tta_and_probabilities_are_checked(tiny_run):
    run = cxrkit.load(tiny_run)
    size = run.preprocessing.image_size
    images = np.random.default_rng(0).integers(0, 256, (3, size, size), dtype=np.uint8)
    # A negative batch size once gave zero rows of probabilities for three images, without an error.
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size must be a whole number >= 1"):
            run.predict_arrays(images, batch_size=bad)
        with pytest.raises(ValueError, match="batch_size must be a whole number >= 1"):
            run.predict(list(images), batch_size=bad)
    with pytest.raises(ValueError, match="tta must be True, False or None"):
        run.predict_arrays(images, tta="no")  # a non-empty string is truthy: it would have turned TTA on
    assert run.predict_arrays(images, batch_size=np.int64(2)).shape == (3, 2)
    probs = run.predict_arrays(images)
    np.testing.assert_array_equal(run.decide(probs), (probs[:, 1] >= run.threshold).astype(int))
    # NaN >= threshold is False: a NaN row would have been decided "healthy".
    for bad, match in (([[np.nan, np.nan]], "finite"), ([[0.2, 1.3]], "from 0 to 1"), ([0.2, 0.8], r"shape \(N, 2\)"),
                       ([[0.1, 0.2, 0.7]], r"shape \(N, 2\)"), ([["a", "b"]], "numeric")):
        with pytest.raises(ValueError, match=match):
            run.decide(np.array(bad))
        with pytest.raises(ValueError, match=match):
            run.decision_labels(np.array(bad))


def test_ood_warning_for_a_nearly_black_image(tiny_run):
    run = cxrkit.load(tiny_run)
    p = run.predict(np.tile(np.arange(16, dtype=np.uint8).repeat(4), (64, 1)))  # an all-black one is refused: nothing to read
    assert p.ood_warning and any("brightness" in f or "outside the training range" in f for f in p.ood_findings)


def test_train_and_evaluate_through_the_api(binary_data, tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        cxrkit.train(binary_data, out=str(tmp_path / "bad"), image_size="big")
    run = cxrkit.train(binary_data, out=str(tmp_path / "r"), model="cnn", image_size=32, epochs=1, batch_size=16,
                       augment={"hflip": "false"}, progress=False)
    assert isinstance(run, cxrkit.Run) and run.record.complete and run.threshold is not None
    assert run.config().augment.hflip is False  # the YAML-style string means off, not "truthy"
    m = cxrkit.evaluate(run)
    assert m["split"] == "test" and m["n"] == 30
    assert 0 <= m["metrics"]["roc_auc"]["value"] <= 1


def test_moved_run_with_its_data_still_evaluates(tiny_run, binary_data, tmp_path):
    """The data path is stored relative to the run folder too, so a project folder can move as a whole."""
    project = tmp_path / "project"
    shutil.copytree(binary_data, project / "data")
    assert cxrkit.train(project / "data", out=str(project / "runs" / "r"), model="cnn", image_size=32, epochs=1, batch_size=16,
                        progress=False).record.complete
    moved = tmp_path / "elsewhere"
    shutil.move(str(project), str(moved))
    m = cxrkit.evaluate(moved / "runs" / "r")
    assert m["split"] == "test" and m["n"] == 30


def test_bytes_of_a_non_image_is_a_value_error(tiny_run):
    run = cxrkit.load(tiny_run)
    with pytest.raises(ValueError, match="not a supported image"):
        run.predict(b"hello world, not an image")
    buf = io.BytesIO()
    Image.fromarray(np.stack([np.tile(np.arange(50, dtype=np.uint8) * 4, (40, 1))] * 3, axis=-1)).save(buf, format="JPEG")
    assert 0 <= run.predict(buf.getvalue()).probability <= 1
