"""External validation: class matching, evaluation on another dataset, and the dataset-shift check."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrkit.cli import main
from cxrkit.data.dataset import match_classes
from cxrkit.data.sources import DatasetError
from cxrkit.data.synthetic import make_synthetic_dataset
from cxrkit.evaluation.evaluate import parse_class_map

FAST = ["--image-size", "32", "--epochs", "4", "--patience", "4", "--batch-size", "16", "--lr", "3e-3", "--model", "cnn"]


def test_class_matching():
    assert match_classes(["healthy", "TB"], ["normal", "tb"]) == {"healthy": "normal", "TB": "tb"}
    assert match_classes(["a", "b"], ["normal", "tb"], {"a": "normal", "b": "tb"}) == {"a": "normal", "b": "tb"}
    with pytest.raises(DatasetError, match=r"\['sick'\] cannot be matched .* --class-map DATASET_CLASS=MODEL_CLASS.*--class-map sick=<normal or tb>"):
        match_classes(["healthy", "sick"], ["normal", "tb"])
    with pytest.raises(DatasetError, match="not classes of the model"):
        match_classes(["healthy", "sick"], ["normal", "tb"], {"sick": "pneumonia"})
    with pytest.raises(DatasetError, match="not classes of the dataset"):
        match_classes(["healthy", "sick"], ["normal", "tb"], {"ill": "tb"})
    # A model of a 0/1 "tb" column ("no tb", "tb") met a normal/ folder with "cannot be matched"; "no tb" is a normal model class too.
    assert match_classes(["normal", "tb"], ["no tb", "tb"]) == {"normal": "no tb", "tb": "tb"}
    assert match_classes(["No_TB", "TB"], ["normal", "tb"]) == {"No_TB": "normal", "TB": "tb"}
    with pytest.raises(DatasetError, match=r"\['non-covid'\] cannot be matched"):  # the absence of another disease is not "normal"
        match_classes(["non-covid", "tb"], ["normal", "tb"])
    assert parse_class_map("healthy=normal, TB=tb") == {"healthy": "normal", "TB": "tb"}
    with pytest.raises(ValueError, match="DATASET_CLASS=MODEL_CLASS"):
        parse_class_map("healthy:normal")
    with pytest.raises(ValueError, match=r"maps 'normal' twice \(normal=healthy and normal=tb\)"):
        parse_class_map("normal=healthy,normal=tb")  # the last one won: every normal image was counted as tb
    assert parse_class_map("normal=healthy, normal=healthy") == {"normal": "healthy"}


def _brighten(src: Path, dst: Path, amount: int, only_class: str | None = None) -> Path:
    for p in src.rglob("*.png"):
        q = dst / p.relative_to(src)
        q.parent.mkdir(parents=True, exist_ok=True)
        a = np.asarray(Image.open(p)).astype(int)
        if only_class is None or p.parent.name == only_class:
            a = np.clip(a + amount, 0, 255)
        Image.fromarray(a.astype(np.uint8)).save(q)
    return dst


@pytest.fixture(scope="module")
def internal_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ext")
    data = make_synthetic_dataset(root / "site_a", n_per_class=60, size=48, seed=1, classes=("normal", "tb"), signal=1.0)
    run = root / "run"
    assert main(["train", str(data), "--out", str(run), *FAST]) == 0
    assert main(["evaluate", str(run)]) == 0
    return root, data, run


def test_external_evaluation_side_by_side_and_quiet_shift_check(internal_run, capsys):
    root, _, run = internal_run
    other = make_synthetic_dataset(root / "site_b", n_per_class=40, size=48, seed=9, classes=("healthy", "TB"), signal=1.0)
    assert main(["evaluate", str(run), str(other)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"val", "test", "external:site_b"} <= set(metrics)  # the internal test figures are kept
    ext = metrics["external:site_b"]
    assert ext["n"] == 80 and ext["source_split"] == "all"  # every image of the other site, not a 15% cut
    assert ext["classes"] == ["normal", "tb"] and ext["n_positive"] == 40
    assert ext["shift"]["checked"] == 80 and not ext["shift"]["warning"], ext["shift"]["message"]
    # The validation threshold's rates are compared with validation's, from the counts of both confusion tables.
    moved = ext["threshold_transfer"]["rates"]
    assert moved["sensitivity"]["counts_here"] == [ext["confusion"]["tp"], 40]
    assert moved["specificity"]["counts_validation"] == [metrics["val"]["confusion"]["tn"], metrics["val"]["n_negative"]]
    assert ext["threshold_transfer"]["holds"] == (not any("does not hold here" in n for n in ext["notes"]))
    html = (run / "report.html").read_text()
    assert "Internal vs external" in html and "external (site_b)" in html
    # Classes that cannot be matched fail with the fix in the message.
    odd = make_synthetic_dataset(root / "site_c", n_per_class=12, size=48, seed=3, classes=("healthy", "sick"))
    assert main(["evaluate", str(run), str(odd)]) == 2
    assert "--class-map sick=<normal or tb>" in capsys.readouterr().err
    # A .jfif is a JPEG (Windows saves them so) and is read; a .webp is not, and the evaluation says so: 10 of 30 images were
    # left out of an external set without a word, and the prevalence it showed was not the set's.
    jpeg = next(odd.glob("sick/*.png"))
    Image.open(jpeg).convert("L").save(odd / "sick" / "photo.jfif", format="JPEG")
    Image.open(jpeg).save(odd / "sick" / "scan.webp", format="WEBP")
    assert main(["evaluate", str(run), str(odd), "--class-map", "sick=tb", "--explain", "none"]) == 0
    out = capsys.readouterr().out
    assert "note: 1 image(s) in a format cxrkit does not read were left out (e.g. " in out and "scan.webp" in out
    assert json.loads((run / "metrics.json").read_text())["external:site_c"]["n"] == 25


def test_external_data_that_holds_the_runs_own_images_is_called_out(internal_run, tmp_path, capsys):
    import shutil
    import zipfile

    root, data, run = internal_run
    # "another hospital" that is really a zip of some of the training data plus 10 new images, renamed
    copied = sorted(data.rglob("*.png"))
    new = make_synthetic_dataset(tmp_path / "new", n_per_class=5, size=48, seed=11, classes=("normal", "tb"), signal=1.0)
    folder = tmp_path / "hospital_b"
    for i, p in enumerate(copied[::4]):
        (folder / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, folder / p.parent.name / f"scan_{i}.png")
    for p in new.rglob("*.png"):
        shutil.copy(p, folder / p.parent.name / f"new_{p.name}")
    archive = tmp_path / "hospital_b.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in folder.rglob("*.png"):
            zf.write(p, p.relative_to(folder).as_posix())
    splits = {r.split(",")[0]: r.split(",")[2] for r in (run / "splits.csv").read_text().splitlines()[1:]}
    expected = {}
    for p in copied[::4]:
        s = splits[p.relative_to(data).as_posix()]
        expected[s] = expected.get(s, 0) + 1
    assert main(["evaluate", str(run), str(archive)]) == 0
    captured = capsys.readouterr()
    ext = json.loads((run / "metrics.json").read_text())["external:hospital_b.zip"]  # named as the user named it
    n_copied = len(copied[::4])
    assert ext["training_overlap"] == {"identical": n_copied, "of": n_copied + 10, "by_split": expected}
    assert f"{n_copied} of these {n_copied + 10} images are identical to images of this run's own splits" in captured.out
    assert f"({expected['train']} it was trained on" in captured.out and "this is not independent data" in captured.out
    assert f"external data: {archive}" in captured.out and "cache" not in captured.out.split("external data:")[1].split("\n")[0]
    # a folder of new images only: nothing said
    assert main(["evaluate", str(run), str(new)]) == 0
    assert "identical" not in capsys.readouterr().out
    assert "training_overlap" not in json.loads((run / "metrics.json").read_text())["external:new"]


def test_shift_check_fires_on_brightened_images_and_one_brightened_class(internal_run, capsys):
    root, data, run = internal_run
    bright = _brighten(data, root / "bright", 45)
    assert main(["evaluate", str(run), str(bright)]) == 0
    m = json.loads((run / "metrics.json").read_text())["external:bright"]
    assert m["shift"]["warning"]
    assert any(f["statistic"] == "mean" and f["incoming_median"] > f["training_median"] for f in m["shift"]["findings"])
    assert any(n.startswith("shift check:") for n in m["notes"])
    one = _brighten(data, root / "one_class", 45, only_class="tb")
    assert main(["evaluate", str(run), str(one)]) == 0
    findings = json.loads((run / "metrics.json").read_text())["external:one_class"]["shift"]["findings"]
    assert any(f["scope"] == "class tb" for f in findings) and not any(f["scope"] == "class normal" for f in findings)
    # predict warns on a folder of shifted images and stays quiet on the training images.
    capsys.readouterr()
    assert main(["predict", str(run), str(bright), "--out", str(root / "p.csv")]) == 0
    assert "warning: images differ from the training data" in capsys.readouterr().err
    assert main(["predict", str(run), str(data), "--out", str(root / "q.csv")]) == 0
    assert "warning" not in capsys.readouterr().err


def test_recalibrate_on_a_sample_of_the_new_site(internal_run, capsys):
    root, data, run = internal_run
    site = _brighten(data, root / "site_d", 45)
    sample = make_synthetic_dataset(root / "site_d_sample", n_per_class=15, size=48, seed=11, classes=("normal", "tb"), signal=1.0)
    sample = _brighten(sample, root / "site_d_sample_bright", 45)
    assert main(["evaluate", str(run), str(site), "--recalibrate-on", str(sample)]) == 0
    m = json.loads((run / "metrics.json").read_text())["external:site_d"]
    r = m["recalibrated"]
    assert r["n"] == 30 and r["rule"] == "youden" and 0 <= r["threshold"] <= 1
    meta = json.loads((run / "meta.json").read_text())
    assert meta["threshold"]["value"] != r["threshold"]  # the run's own threshold is not changed
    # The reported figures are those of the evaluated images at the new threshold.
    with open(run / "predictions.csv", newline="") as f:
        import csv

        rows = [x for x in csv.DictReader(f) if x["split"] == "external:site_d"]
    # predictions.csv holds the probabilities unrounded: the count read back from it is exact (at 6 decimals, a probability
    # within 5e-7 of the threshold sat on either side, and this 4-epoch model's probabilities crowd within 1e-4 of one another).
    tp = sum(x["true"] == "tb" and float(x["prob_tb"]) >= r["threshold"] for x in rows)
    assert r["confusion"]["tp"] == tp
    assert "re-chosen on" in (run / "report.html").read_text()
    assert "at the re-chosen threshold" in capsys.readouterr().out
    assert r["positives"] == 15 and "with under 20 images of a class the chosen threshold moves a lot" in " ".join(m["notes"])
    # The sample must be other images than the evaluated ones: the same folder, or the same images renamed.
    assert main(["evaluate", str(run), str(site), "--recalibrate-on", str(site)]) == 2
    import shutil

    renamed = root / "site_d_renamed"
    for p in sorted(site.rglob("*.png"))[:6]:
        (renamed / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, renamed / p.parent.name / f"renamed_{p.name}")
    capsys.readouterr()
    assert main(["evaluate", str(run), str(site), "--recalibrate-on", str(renamed)]) == 2
    assert "6 image(s) of the recalibration sample are identical to evaluated images (decoded pixels)" in capsys.readouterr().err


def test_shift_message_names_the_largest_differences_first_and_counts_the_rest():
    from cxrkit.data.shift import describe

    findings = [{"scope": "all images", "statistic": "mean", "ks_d": 0.35, "p_value": 1e-5, "training_median": 0.5, "incoming_median": 0.6},
                {"scope": "all images", "statistic": "histogram", "js_distance": 0.9},
                {"scope": "class tb", "statistic": "std", "ks_d": 0.8, "p_value": 1e-9, "training_median": 0.2, "incoming_median": 0.1},
                {"scope": "class tb", "statistic": "border", "ks_d": 0.4, "p_value": 1e-6, "training_median": 0.0, "incoming_median": 0.3},
                {"scope": "class normal", "statistic": "p5", "ks_d": 0.31, "p_value": 1e-4, "training_median": 0.1, "incoming_median": 0.2}]
    msg = describe(findings)
    assert msg.index("Jensen-Shannon distance 0.90") < msg.index("contrast (std) 0.100 (training 0.200, KS D 0.80)") < msg.index("border")
    assert "mean brightness" not in msg and "dark level" not in msg
    assert msg.endswith("2 more differences recorded")
    assert "more" not in describe(findings[:3])


def test_two_external_sets_of_one_folder_name_keep_their_own_results(internal_run, tmp_path):
    import shutil

    from cxrkit.evaluation.evaluate import external_key

    _, _, run = internal_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoint"))
    # Two sites' test/ folders: the second evaluation replaced the first's results without a word.
    one = make_synthetic_dataset(tmp_path / "s1" / "test", n_per_class=12, size=48, seed=3, classes=("normal", "tb"), signal=1.0)
    two = make_synthetic_dataset(tmp_path / "s2" / "test", n_per_class=15, size=48, seed=4, classes=("normal", "tb"), signal=1.0)
    assert main(["evaluate", str(copy), str(one), "--explain", "none"]) == 0
    assert main(["evaluate", str(copy), str(two), "--explain", "none"]) == 0
    assert main(["evaluate", str(copy), str(one), "--explain", "none"]) == 0  # evaluated again: its own key, replaced
    metrics = json.loads((copy / "metrics.json").read_text())
    # (the shared run may hold other tests' external sets too)
    assert {k for k in metrics if k.startswith("external:") and "test" in k} == {"external:test", "external:s2/test"}
    assert metrics["external:test"]["n"] != metrics["external:s2/test"]["n"]
    assert external_key({"external:test": "/a/test", "external:b/test": "/x/b/test"}, Path("/b/test"), Path("/b/test")) == "external:b/test-2"


def test_another_sites_file_names_need_not_fit_the_runs_group_pattern(binary_data, tmp_path, capsys):
    # A run trained with --group-pattern refused every other site whose files are named otherwise ("finds no patient ID"),
    # though only the patient count of its intervals needs the pattern.
    import shutil

    out = tmp_path / "run"
    assert main(["train", str(binary_data), "--out", str(out), "--image-size", "32", "--epochs", "1", "--model", "mlp",
                 "--group-pattern", r"^([a-z]+_\d\d\d)", "--resplit", "--quiet"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["data"]["patient_ids"]
    other = tmp_path / "other"
    for cls in ("healthy", "tb"):
        (other / cls).mkdir(parents=True)
        for i, f in enumerate(sorted((binary_data / "test" / cls).glob("*.png"))):
            shutil.copy(f, other / cls / f"scan{i}.png")
    capsys.readouterr()
    assert main(["evaluate", str(out), str(other), "--explain", "none", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)["metrics"]
    assert any("finds no patient ID in these file names, so each image counts as its own patient" in n for n in m["notes"])
    assert "intervals_by" not in m and m["n"] == 30
    # the run's own data still uses its pattern: 10 images per patient, so the intervals count patients
    assert main(["evaluate", str(out), "--split", "val", "--explain", "none", "--json"]) == 0
    own = json.loads(capsys.readouterr().out)["metrics"]
    assert own["intervals_by"] == "patient" and own["n_patients"] < own["n"]
    # plan's counts are independent cases: "needed: 762 images" read as films left a study of repeat films too small
    assert main(["plan", str(out), "--split", "val", "--half-width", "0.1"]) == 0
    said = capsys.readouterr().out
    per = own["n"] / own["n_patients"]
    assert f"plan them as patients, one image each. That split had {per:.1f} images per patient" in said


def test_a_copy_of_the_test_split_evaluated_as_external_counts_as_a_look_at_test(internal_run, tmp_path, capsys):
    # Renamed copies of the run's test images evaluated as "another site" were a fresh look at test that counted as none.
    import shutil

    root, data, run = internal_run
    mine = tmp_path / "run"
    shutil.copytree(run, mine)
    assert main(["evaluate", str(mine), "--explain", "none"]) == 0  # the one honest look at test
    splits = {r.split(",")[0]: r.split(",")[2] for r in (mine / "splits.csv").read_text().splitlines()[1:]}
    copy = tmp_path / "site_x"
    for i, (rel, split) in enumerate(sorted(splits.items())):
        if split == "test":
            (copy / Path(rel).parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(data / rel, copy / Path(rel).parent.name / f"x{i}.png")
    # a run never evaluated on test: the copies are its first look, said so, and counted by the next test evaluation
    fresh = tmp_path / "fresh"
    shutil.copytree(run, fresh)
    meta = json.loads((fresh / "meta.json").read_text())
    meta["evaluations"] = []
    (fresh / "meta.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["evaluate", str(fresh), str(copy), "--explain", "none"]) == 0
    assert "copies of the run's test images make this a look at the test split; later evaluations of the test split count it" in (
        capsys.readouterr().out)
    assert main(["evaluate", str(fresh), "--explain", "none"]) == 0
    assert "this test split was evaluated 1 time(s) before" in capsys.readouterr().out
    # the looks at test so far: ours, and whatever the shared fixture run went through in this worker (copies included)
    looks = sum(e["split"] == "test" or bool(e.get("test_copies")) for e in json.loads((mine / "meta.json").read_text())["evaluations"])
    assert looks >= 1
    capsys.readouterr()
    assert main(["evaluate", str(mine), str(copy), "--explain", "none"]) == 0
    out = capsys.readouterr().out
    n = sum(s == "test" for s in splits.values())
    assert f"its {n} copies of the run's test images make this a look at the test split, which was looked at {looks} time(s) before" in out
    # ... and the next evaluation of the test split counts it (it said "evaluated 2 time(s) before", as if it had not happened)
    assert main(["evaluate", str(mine), "--explain", "none"]) == 0
    assert f"this test split was evaluated {looks + 1} time(s) before" in capsys.readouterr().out
