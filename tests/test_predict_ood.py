"""cxrkit predict flags each out-of-distribution image as serve does (CLI and Python API), and reads broken DICOM quietly."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrkit.cli import main
from cxrkit.prediction.results import predict_results
from cxrkit.run import Run

from .test_dicom import ramp, write_dicom


def _odd_images(folder: Path, binary_data: Path) -> dict[str, Path]:
    folder.mkdir()
    ramp = np.tile(np.arange(16, dtype=np.uint8).repeat(4), (64, 1))  # not one grey level: a blank image is refused, not flagged
    Image.fromarray(ramp).save(folder / "black.png")
    Image.fromarray(240 + ramp).save(folder / "white.png")
    normal = sorted((binary_data / "test" / "healthy").glob("*.png"))[0]
    (folder / "normal.png").write_bytes(normal.read_bytes())
    return {p.name: p for p in folder.iterdir()}


def test_python_api_flags_each_odd_image(tiny_run, binary_data, tmp_path):
    files = _odd_images(tmp_path / "odd", binary_data)
    results = {Path(r["path"]).name: r for r in predict_results(Run.load(tiny_run, engine="torch"), sorted(files.values()), workers=0)}
    assert results["black.png"]["ood_warning"] and results["white.png"]["ood_warning"]
    assert any("brightness" in f for f in results["black.png"]["ood_findings"])
    assert not results["normal.png"]["ood_warning"] and results["normal.png"]["ood_findings"] == []
    assert abs(sum(results["normal.png"]["probabilities"].values()) - 1) < 1e-5 and results["normal.png"]["decision"]


def test_cli_flags_a_single_image_and_each_image_of_a_folder(tiny_run, binary_data, tmp_path, capsys):
    files = _odd_images(tmp_path / "odd", binary_data)
    assert main(["predict", str(tiny_run), str(files["black.png"]), "--engine", "torch"]) == 0
    out = capsys.readouterr()
    assert "black.png" in out.out and "warning:" in out.err and "outside the training images' range" in out.err
    assert main(["predict", str(tiny_run), str(files["normal.png"]), "--engine", "torch"]) == 0
    assert "warning" not in capsys.readouterr().err

    assert main(["predict", str(tiny_run), str(tmp_path / "odd"), "--engine", "torch"]) == 0
    out = capsys.readouterr()
    rows = {Path(r["path"]).name: r for r in csv.DictReader(io.StringIO(out.out))}
    assert [rows[n]["ood_warning"] for n in ("black.png", "normal.png", "white.png")] == ["yes", "no", "yes"]
    assert "2 of 3 image(s) lie outside" in out.err

    csv_out = tmp_path / "preds.csv"
    assert main(["predict", str(tiny_run), str(tmp_path / "odd"), "--engine", "torch", "--out", str(csv_out)]) == 0
    assert "2 of 3 image(s)" in capsys.readouterr().err
    with open(csv_out, newline="") as f:
        assert sorted(r["ood_warning"] for r in csv.DictReader(f)) == ["no", "yes", "yes"]
    # --json says it as Python does: an in-range image was null there, which the docs give for "not checked"
    assert main(["predict", str(tiny_run), str(tmp_path / "odd"), "--engine", "torch", "--json"]) == 0
    rows = {Path(r["path"]).name: r for r in json.loads(capsys.readouterr().out)["results"]}
    assert [rows[n]["ood_warning"] for n in ("black.png", "normal.png", "white.png")] == [True, False, True]


def test_broken_dicom_is_reported_in_one_line(tiny_run, tmp_path):
    good = write_dicom(tmp_path / "scan.dcm", ramp()).read_bytes()
    broken = tmp_path / "broken.dcm"
    # An invalid UID (pydicom warns with the raw value) and the pixel data cut off.
    broken.write_bytes(good.replace(b"1.2.840.10008.1.2.1", b"1.k.840.10008.1.2.1")[: len(good) - 1000])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "cxrkit", "predict", str(tiny_run), str(broken), "--engine", "torch"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith(f"{broken}: could not be read")


def test_a_run_without_its_shift_reference_says_the_check_was_not_made(tiny_run, binary_data, tmp_path, capsys):
    """Every answer said ood_warning False (in range) for a run whose shift_reference.json was missing: no check passed as a clean one."""
    import json
    import shutil
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("checkpoint", "plots", "report.html"))
    (run_dir / "shift_reference.json").unlink()
    files = _odd_images(tmp_path / "odd", binary_data)

    results = predict_results(Run.load(run_dir, engine="torch"), sorted(files.values()), workers=0)
    assert [r["ood_warning"] for r in results] == [None, None, None]  # the nearly black image too: not checked, not passed

    assert main(["predict", str(run_dir), str(tmp_path / "odd"), "--engine", "torch"]) == 0
    out = capsys.readouterr()
    assert [r["ood_warning"] for r in csv.DictReader(io.StringIO(out.out))] == ["unchecked"] * 3
    assert "has no shift_reference.json" in out.err and "no out-of-distribution check was made" in out.err
    csv_out = tmp_path / "preds.csv"
    assert main(["predict", str(run_dir), str(tmp_path / "odd"), "--engine", "torch", "--out", str(csv_out)]) == 0
    err = capsys.readouterr().err
    assert "lie outside" not in err and "has no shift_reference.json" in err  # "unchecked" is not counted as out of range
    with open(csv_out, newline="") as f:
        assert [r["ood_warning"] for r in csv.DictReader(f)] == ["unchecked"] * 3
    assert main(["predict", str(run_dir), str(tmp_path / "odd"), "--engine", "torch", "--json"]) == 0
    assert [r["ood_warning"] for r in json.loads(capsys.readouterr().out)["results"]] == [None] * 3

    assert main(["evaluate", str(run_dir), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert "shift check: the run has no shift_reference.json" in json.dumps(doc)

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from cxrkit.serve.app import create_app

    with TestClient(create_app(run_dir, engine="torch", api_key="")) as client:
        r = client.post("/v1/predict", files=[("files", ("black.png", files["black.png"].read_bytes(), "image/png"))])
        assert r.status_code == 200 and r.json()["results"][0]["ood_warning"] is None
        assert any("no shift_reference.json" in x for x in client.get("/v1/model").json()["limitations"])


def test_a_blank_or_tiny_image_is_refused_not_classified(tiny_run, tmp_path, capsys):
    """A 1x1 pixel or all-black image was resized to the model's input and given a confident diagnosis beside an OOD flag."""
    import cxrkit
    from cxrkit.data.errors import UnusableImageError

    folder = tmp_path / "odd"
    folder.mkdir()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(folder / "black.png")
    Image.fromarray(np.full((1, 1), 120, np.uint8)).save(folder / "one_pixel.png")
    Image.fromarray(np.tile(np.arange(200, dtype=np.uint8), (4, 1))).save(folder / "strip.png")  # 200x4: no radiograph
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8), (64, 1))).save(folder / "ramp.png")
    assert main(["predict", str(tiny_run), str(folder), "--engine", "torch", "--json"]) == 0  # a folder's errors are its rows
    rows = {Path(r["path"]).name: r for r in json.loads(capsys.readouterr().out)["results"]}
    assert rows["ramp.png"]["prediction"] and rows["ramp.png"]["error"] is None
    assert "blank (every pixel is 0)" in rows["black.png"]["error"] and rows["black.png"]["prediction"] is None
    assert "1x1 pixels: too small" in rows["one_pixel.png"]["error"]
    assert "200x4 pixels: too small" in rows["strip.png"]["error"]
    run = cxrkit.load(tiny_run)
    with pytest.raises(UnusableImageError, match="blank"):
        run.predict(np.full((40, 40), 128, np.uint8))
    with pytest.raises(UnusableImageError, match="blank"):
        run.predict(Image.new("L", (40, 40), 30))
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from cxrkit.serve.app import create_app

    with TestClient(create_app(tiny_run, engine="torch", api_key="")) as client:
        r = client.post("/v1/predict", files=[("files", ("black.png", (folder / "black.png").read_bytes(), "image/png"))])
        assert r.status_code == 422 and r.json()["error"]["code"] == "unusable_image" and r.json()["error"]["file"] == "black.png"


def test_no_training_image_is_outside_the_training_range_and_the_message_shows_the_difference():
    """Every training image that set a bound (min or max) was flagged: the reference is stored to 5 decimals."""
    from cxrkit.data.shift import build_reference, image_outliers, image_stats

    rng = np.random.default_rng(0)
    images = np.clip(rng.normal(rng.uniform(60, 190, (120, 1, 1)), rng.uniform(20, 60, (120, 1, 1)), (120, 32, 32)), 0, 255).astype(np.uint8)
    ref = json.loads(json.dumps(build_reference(images, np.arange(120) % 2, ["a", "b"])))  # as stored and read back
    assert image_outliers(ref, image_stats(images)) == [[] for _ in range(120)]
    hi = float(np.max(ref["overall"]["mean"]))
    brighter = images[int(np.argmax(image_stats(images)["mean"]))].astype(int) + 1  # one grey level: 1/255 brighter
    (found,) = image_outliers(ref, image_stats(np.clip(brighter, 0, 255).astype(np.uint8)[None]))
    message = next(f["message"] for f in found if f["statistic"] == "mean")
    shown, top = message.split(" is outside")[0].split()[-1], message.split("-")[-1]
    assert float(shown) > hi and shown != top


def test_a_runs_own_images_do_not_differ_from_its_training_data_when_their_statistics_tie():
    # Histogram-equalised images share their 95th percentile (243/255 = 0.952941...): against the stored 0.95294 every
    # incoming value sorted above every reference value, and the run's own test split "differed, KS D 0.92".
    from cxrkit.data.intensity import normalize_intensity
    from cxrkit.data.shift import build_reference, check_shift

    rng = np.random.default_rng(0)
    images = np.stack([normalize_intensity(np.clip(rng.normal(rng.uniform(60, 190), 40, (32, 32)), 0, 255).astype(np.uint8), "histeq")
                       for _ in range(80)])
    ref = json.loads(json.dumps(build_reference(images, np.arange(80) % 2, ["a", "b"])))  # as stored and read back
    result = check_shift(ref, images, np.arange(80) % 2, ["a", "b"])
    assert not result["warning"], result["message"]


def test_a_multi_site_reference_says_which_training_site_incoming_images_resemble():
    from cxrkit.data.shift import build_reference, check_shift
    from cxrkit.data.synthetic import synthetic_cxr

    rng = np.random.default_rng(0)
    dark = np.stack([synthetic_cxr(rng, 48) // 2 for _ in range(60)])
    bright = np.stack([np.clip(synthetic_cxr(rng, 48).astype(int) + 90, 0, 255).astype(np.uint8) for _ in range(60)])
    labels = np.arange(60) % 2
    ref = build_reference(np.concatenate([dark, bright]), np.r_[labels, labels], ["healthy", "tb"])
    # per_site was written into shift_reference.json by every multi-site training and read by nothing
    ref["per_site"] = {"alpha": build_reference(dark, labels, ["healthy", "tb"])["overall"],
                       "beta": build_reference(bright, labels, ["healthy", "tb"])["overall"]}
    incoming = np.stack([np.clip(synthetic_cxr(rng, 48).astype(int) + 90, 0, 255).astype(np.uint8) for _ in range(40)])
    result = check_shift(ref, incoming)
    assert result["nearest_site"] == "beta" and result["site_distance"]["beta"] < result["site_distance"]["alpha"]
    assert "of the training sites they look most like beta (mean KS D" in result["message"]
    assert "nearest_site" not in check_shift({k: v for k, v in ref.items() if k != "per_site"}, incoming)  # one site: nothing to say
