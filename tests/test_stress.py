"""Stress test: perturbations do what they say, and a model that reads exposure is called out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrkit.cli import main
from cxrkit.data.perturb import brightness, mask_border, mask_corners, resample, restandardise, standard_perturbations
from cxrkit.data.synthetic import synthetic_cxr


def test_restandardise_gives_every_image_the_reference_mean_and_std():
    rng = np.random.default_rng(0)
    imgs = np.stack([np.clip(synthetic_cxr(rng, 32).astype(int) + off, 0, 255).astype(np.uint8) for off in (-40, 0, 40)])
    out = restandardise(imgs, 0.45, 0.2) / 255.0
    assert np.allclose(out.mean(axis=(1, 2)), 0.45, atol=0.02)
    assert np.allclose(out.std(axis=(1, 2)), 0.2, atol=0.02)
    assert np.abs(imgs.mean(axis=(1, 2)) / 255 - 0.45).max() > 0.1  # the inputs really differed


def test_masks_brightness_and_resampling_change_only_what_they_name():
    x = np.full((2, 40, 40), 128, np.uint8)
    c = mask_corners(x, 0.2)
    assert (c[:, :8, :8] == 0).all() and (c[:, -8:, -8:] == 0).all() and (c[:, 8:32, :] == 128).all()
    b = mask_border(x, 0.1)
    assert (b[:, :4] == 0).all() and (b[:, :, -4:] == 0).all() and (b[:, 4:36, 4:36] == 128).all()
    assert brightness(x, 0.1)[0, 0, 0] == 128 + 26 and brightness(np.full((1, 4, 4), 250, np.uint8), 0.1).max() == 255
    assert resample(x, 0.5).shape == x.shape and (resample(x, 0.5) == 128).all()  # a flat image survives resampling
    names = [p.name for p in standard_perturbations(0.5, 0.2)]
    assert {"restandardised", "brighter", "darker", "border masked", "corners masked", "down-sampled", "up-sampled"} <= set(names)


def _exposure_shortcut_data(root: Path, n: int = 50, size: int = 40) -> Path:
    """No disease signal at all; the tb class is simply exposed brighter (+0.18) than the healthy class."""
    rng = np.random.default_rng(3)
    for cls, off in (("healthy", 0), ("tb", 46)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            img = synthetic_cxr(rng, size, pattern=0).astype(int) + off + int(rng.integers(-10, 11))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / cls / f"{cls}_{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def shortcut_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cxrkit.config import TrainConfig
    from cxrkit.data.augment import AugmentConfig
    from cxrkit.training import train

    data = _exposure_shortcut_data(tmp_path_factory.mktemp("shortcut"))
    out = tmp_path_factory.mktemp("runs") / "shortcut"
    # pinned: plain augmentation and no normalisation, so that exposure is learnable
    train(TrainConfig(data=str(data), out=str(out), model="cnn", image_size=32, epochs=4, patience=4, batch_size=16, lr=3e-3,
                      intensity="none", augment=AugmentConfig()), progress=False)
    return out


def test_stress_names_an_exposure_shortcut(shortcut_run: Path, capsys: pytest.CaptureFixture):
    import json

    assert main(["stress", str(shortcut_run), "--split", "val"]) == 0
    text = capsys.readouterr().out
    r = json.loads((shortcut_run / "stress.json").read_text())["val"]
    assert r["auc"] > 0.9  # brightness alone separates the classes
    rows = {p["name"]: p for p in r["perturbations"]}
    assert rows["restandardised"]["auc"] < 0.75 and rows["restandardised"]["shortcut"]
    assert rows["restandardised"]["change"] < -0.15 and rows["restandardised"]["p_value"] < 0.05
    assert "SHORTCUT" in r["verdict"] and "restandardised" in r["verdict"]
    assert "restandardised" in text and "<- shortcut" in text
    assert main(["stress", str(shortcut_run), "--split", "val", "--json"]) == 0  # for scripts: the same result, as JSON on stdout
    doc = json.loads(capsys.readouterr().out)
    assert doc["auc"] == r["auc"] and doc["verdict"] == r["verdict"] and len(doc["perturbations"]) == len(r["perturbations"])


def test_stress_bad_inputs_are_one_line_errors(shortcut_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    assert main(["stress", str(tmp_path / "nope")]) == 2
    assert main(["stress", str(shortcut_run), "--split", "all"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 2 and "Traceback" not in err


@pytest.mark.parametrize("intensity", ["none", "zscore"])
def test_stress_on_copies_of_the_runs_own_images_says_so(intensity: str, tmp_path: Path, capsys: pytest.CaptureFixture):
    # "Another" folder holding the run's own images gave a stress table with no word that the model had seen them (evaluate
    # said so). With a per-image normalisation the raw images stress reads hash differently, so they are read as trained.
    import json
    import shutil

    from cxrkit.config import TrainConfig
    from cxrkit.training import train

    data = _exposure_shortcut_data(tmp_path / "site", n=24, size=24)
    run = train(TrainConfig(data=str(data), out=str(tmp_path / "run"), model="mlp", image_size=16, epochs=1, intensity=intensity),
                progress=False)
    other = tmp_path / "other"
    for cls in ("healthy", "tb"):
        shutil.copytree(data / cls, other / cls)
    capsys.readouterr()
    assert main(["stress", str(run), str(other)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("note: 48 of these 48 images are identical to images of this run's own splits (")
    assert json.loads((run / "stress.json").read_text())["external:other"]["training_overlap"]["identical"] == 48


def test_the_verdict_never_contradicts_its_own_table():
    from cxrkit.evaluation.stress import verdict

    row = {"name": "corners masked", "touches_anatomy": False, "shortcut": False}
    big = verdict([{**row, "change": -0.12, "p_value": 0.09}])
    # "no change ... lowered ROC-AUC by 0.05 or more (largest drop: corners masked, -0.120)" contradicted itself
    assert big.startswith("no shortcut found: no change that leaves the lungs alone lowered ROC-AUC by 0.05 or more with p < 0.05;")
    assert "corners masked (-0.120, p=0.09), is not significant on these images" in big
    assert verdict([{**row, "change": 0.0, "p_value": 1.0}]).endswith("with p < 0.05 (none lowered it)")  # was "largest drop: +0.000"
    assert verdict([{**row, "change": -0.02, "p_value": 0.4}]).endswith("(largest drop: corners masked, -0.020)")


def test_p_values_are_shown_as_they_compare_with_005():
    from cxrkit.evaluation.stress import p_text

    # 0.0496 was "p=0.05" beside a verdict that counted it below 0.05.
    assert [p_text(p) for p in (0.0496, 0.04999, 0.0004, 0.05, 0.123)] == ["0.0496", "<0.05", "<0.001", "0.05", "0.12"]


def test_stress_counts_patients_where_they_have_several_films(tiny_run: Path):
    # Two films per patient: counted as images, every perturbation's interval and paired test looked twice as sure.
    import numpy as np

    from cxrkit.evaluation.stress import stress_arrays
    from cxrkit.run import Run, load_run_dataset

    run = Run.load(tiny_run)
    ds, _ = load_run_dataset(run, progress=False, raw_intensity=True)
    idx = ds.index("test")
    images, y = np.repeat(np.asarray(ds.images[idx]), 2, axis=0), np.repeat(ds.labels[idx], 2)
    once = stress_arrays(run, np.asarray(ds.images[idx]), ds.labels[idx])
    images_only = stress_arrays(run, images, y)
    patients = stress_arrays(run, images, y, patients=np.repeat(np.arange(len(idx)), 2))
    assert patients["intervals_by"] == "patient" and patients["n_patients"] == len(idx)
    assert patients["ci"] == pytest.approx(once["ci"], abs=1e-6) and (patients["ci"][1] - patients["ci"][0]) > 1.3 * (
        images_only["ci"][1] - images_only["ci"][0])
    for a, b in zip(patients["perturbations"], images_only["perturbations"]):  # some changes draw noise: compare like with like
        assert a["p_value"] >= b["p_value"] - 1e-12 and (a["ci"][1] - a["ci"][0]) >= (b["ci"][1] - b["ci"][0]) - 1e-12
