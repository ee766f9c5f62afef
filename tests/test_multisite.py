"""Several sources in one run: sites recorded, every site in validation and test, per-site figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from cxrkit.cli import main
from cxrkit.data.dataset import load_dataset
from cxrkit.data.multisite import site_factors
from cxrkit.data.synthetic import make_synthetic_site


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("sites")
    a = make_synthetic_site(base / "alpha", n_per_class=30, size=40, seed=1)
    b = make_synthetic_site(base / "beta" / "train", n_per_class=20, size=40, seed=2, classes=("normal", "tb"), exposure=(0.15, 0.15))
    return a, b


def test_sources_file_matches_classes_and_stratifies_by_site(two_sites, tmp_path: Path):
    a, b = two_sites
    src = tmp_path / "sources.yaml"
    src.write_text(yaml.safe_dump({"sites": {"alpha": str(a), "beta": str(b)}}))
    ds = load_dataset(src, 32, cache_dir=tmp_path / "cache", progress=False)
    assert ds.class_names == ["healthy", "tb"]  # beta's "normal" is the same class
    assert sorted(set(ds.sites)) == ["alpha", "beta"] and (ds.sites == "beta").sum() == 40
    for split in ("val", "test"):
        for site in ("alpha", "beta"):
            sel = (ds.splits == split) & (ds.sites == site)
            assert sel.sum() >= 4 and set(ds.labels[sel]) == {0, 1}  # every site and class in every split
    assert all(r.split("/")[0] in ("alpha", "beta") for r in ds.relpaths)
    assert np.allclose(site_factors(np.array(["a"] * 6 + ["b"] * 2)), [1] * 6 + [3] * 2)


def test_site_with_split_folders_mixed_with_one_without(two_sites, tmp_path: Path):
    a, _ = two_sites
    gamma = tmp_path / "gamma"
    make_synthetic_site(gamma / "train", n_per_class=20, size=40, seed=3)
    make_synthetic_site(gamma / "test", n_per_class=6, size=40, seed=4)
    src = tmp_path / "sources.yaml"
    src.write_text(yaml.safe_dump({"sites": {"alpha": str(a), "gamma": str(gamma)}}))
    ds = load_dataset(src, 32, cache_dir=tmp_path / "cache", progress=False)
    g_test = (ds.sites == "gamma") & (ds.splits == "test")
    assert g_test.sum() == 12 and all("/test/" in ds.relpaths[i] for i in np.flatnonzero(g_test))  # gamma keeps its own test/
    a_test = (ds.sites == "alpha") & (ds.splits == "test")
    assert a_test.sum() == 9 and set(ds.labels[a_test]) == {0, 1}  # alpha (no split folders) gets its own 15% test cut
    for site in ("alpha", "gamma"):
        assert ((ds.sites == site) & (ds.splits == "val")).sum() >= 4


def test_copies_of_one_image_at_two_sites_stay_in_one_split(two_sites, tmp_path: Path):
    # A dataset re-packaged from another (public TB sets include Shenzhen's images): each site is cut on its own,
    # so the same image could be train at one site and test at the other; the audit then refused to train with
    # advice about split folders that do not exist.
    import shutil

    from cxrkit.audit.dataset_audit import duplicate_group_ids

    a, _ = two_sites
    copy = tmp_path / "repackaged"
    shutil.copytree(a, copy)
    src = tmp_path / "sources.yaml"
    src.write_text(yaml.safe_dump({"sites": {"alpha": str(a), "copy": str(copy)}}))
    ds = load_dataset(src, 32, cache_dir=tmp_path / "cache", progress=False,
                      duplicate_groups=lambda paths: duplicate_group_ids(paths, tmp_path / "cache", False))
    assert ds.duplicate_groups >= 60  # every alpha image has its copy
    names = [r.split("/", 1)[1] for r in ds.relpaths]
    split_of: dict[str, set] = {}
    for n, sp in zip(names, ds.splits):
        split_of.setdefault(n, set()).add(sp)
    assert all(len(v) == 1 for v in split_of.values())
    assert {"train", "val", "test"} <= {sp for v in split_of.values() for sp in v}


def test_train_on_two_folders_records_sites_and_reports_per_site(two_sites, tmp_path: Path, capsys: pytest.CaptureFixture):
    a, b = two_sites
    out = tmp_path / "run"
    assert main(["train", str(a), str(b), "--out", str(out), "--image-size", "32", "--epochs", "1", "--batch-size", "16",
                 "--cache-dir", str(tmp_path / "cache")]) == 0  # several sites: balanced by default
    assert yaml.safe_load((out / "sources.yaml").read_text())["sites"] == {"alpha": str(a.resolve()), "beta": str(b.resolve())}
    meta = json.loads((out / "meta.json").read_text())
    sites = meta["data"]["sites"]
    assert set(sites) == {"alpha", "beta"} and sum(sites["alpha"].values()) == 60 and sum(sites["beta"].values()) == 40
    assert all(sites[s]["val"] > 0 and sites[s]["test"] > 0 for s in sites)
    assert meta["training"]["site_balanced"]["images_per_epoch"] == pytest.approx(2 * sites["alpha"]["train"])
    ref = json.loads((out / "shift_reference.json").read_text())
    assert ref["per_site"]["beta"]["n"] == sites["beta"]["train"]
    assert np.median(ref["per_site"]["beta"]["mean"]) > np.median(ref["per_site"]["alpha"]["mean"]) + 0.1  # beta is brighter
    val = json.loads((out / "metrics.json").read_text())["val"]
    assert {s: e["n"] for s, e in val["per_site"].items()} == {s: sites[s]["val"] for s in sites}
    capsys.readouterr()
    assert main(["evaluate", str(out), "--explain", "none"]) == 0
    text = capsys.readouterr().out
    assert f"site alpha ({sites['alpha']['test']} images): ROC-AUC" in text and f"site beta ({sites['beta']['test']} images)" in text
    html = (out / "report.html").read_text()
    assert "<td>alpha</td>" in html and "<td>beta</td>" in html
    # Subgroups by site: the per-image site of a multi-source run, with its heterogeneity tests.
    assert main(["evaluate", str(out), "--by", "site", "--explain", "none"]) == 0
    sub = json.loads((out / "metrics.json").read_text())["test"]["subgroups"]["site"]
    assert {g["group"]: g["n"] for g in sub["groups"]} == {s: sites[s]["test"] for s in sites}
    # Another copy of the same sources file (an adapted run keeps one, its source another) is this run's data, not a new site's.
    from cxrkit.run import Run

    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "sources.yaml").write_text((out / "sources.yaml").read_text())
    (tmp_path / "copy" / "other.yaml").write_text(yaml.safe_dump({"sites": {"alpha": str(a.resolve())}}))
    run = Run.load(out)
    assert run.is_own_data(tmp_path / "copy" / "sources.yaml") and not run.is_own_data(tmp_path / "copy" / "other.yaml")
    assert main(["evaluate", str(out), str(tmp_path / "copy" / "sources.yaml"), "--explain", "none"]) == 0
    assert "test" in json.loads((out / "metrics.json").read_text()) and "external" not in capsys.readouterr().out


def test_multisite_bad_inputs_are_one_line_errors(two_sites, tmp_path: Path, capsys: pytest.CaptureFixture):
    a, _ = two_sites
    bad = tmp_path / "bad.yaml"
    bad.write_text("sites: 3\n")
    assert main(["train", str(bad), "--out", str(tmp_path / "r1"), "--epochs", "1"]) == 2
    assert main(["train", str(a), str(tmp_path / "missing"), "--out", str(tmp_path / "r2"), "--epochs", "1"]) == 2
    assert main(["train", str(a), "--out", str(tmp_path / "r3"), "--epochs", "1", "--site-balanced", "--image-size", "32",
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 3 and "Traceback" not in err and "--site-balanced needs several sources" in err


def test_site_balancing_is_automatic_unless_turned_off(tmp_path: Path):
    from cxrkit.cli import _config_from_args, build_parser
    from cxrkit.config import TrainConfig

    def balanced(*extra: str) -> bool | None:
        return _config_from_args(build_parser().parse_args(["train", "a", "b", *extra]), "a", "out").site_balanced

    assert balanced() is None and balanced("--site-balanced") is True and balanced("--no-site-balanced") is False
    old = tmp_path / "config.yaml"
    old.write_text("data: d\n")  # a run saved before site balancing existed trained on the natural shares
    assert TrainConfig.load_saved(old).site_balanced is False and TrainConfig.load(old).site_balanced is None


@pytest.mark.parametrize("text, says", [
    # PyYAML kept the last of two equal keys: site alpha was dropped without a word
    ("sites:\n  alpha: {a}\n  alpha: {b}\n", r"is not valid YAML \(line 3\): the key 'alpha' is given twice"),
    ("sites:\n  1: {a}\n  '1': {b}\n", "two sites are named '1'"),  # str(1) == '1': the same
    # the same folder twice: every image in two sites, possibly train at one and test at the other
    ("sites:\n  a: {a}\n  b: {a}/\n", r"site a \(.*alpha\) is the same folder as site b"),
    ("sites:\n  a: {a}\n  b: {a}/..\n", r"site a \(.*alpha\) is inside site b"),
    # '/' in a site name made every image path 'a/b/...', and reading it back was "unexpected KeyError: 'a'"
    ("sites:\n  a/b: {a}\n  c: {b}\n", "the site name 'a/b' cannot be a folder name in the run's image paths"),
    ("sites:\n  '..': {a}\n  c: {b}\n", "the site name '..' cannot be"),
    ("sites:\n  a: {a}\n  b:\n", "site b: expected a folder, got nothing"),  # was 'dataset path .../None does not exist'
    # nested aliases: the folder's text was a 200-MB error line ("File name too long: '[[[['x', ...")
    ("x: &x [a, a, a, a, a, a, a, a]\ny: &y [*x, *x, *x, *x, *x, *x, *x, *x]\nz: &z [*y, *y, *y, *y, *y, *y, *y, *y]\n"
     "sites: {{a: {a}, b: *z}}\n", "site b: expected a folder, got list"),
])
def test_sources_files_that_would_drop_double_or_break_a_site_are_refused(two_sites, tmp_path: Path, text: str, says: str):
    from cxrkit.data.sources import DatasetError

    a, b = two_sites
    src = tmp_path / "sources.yaml"
    src.write_text(text.format(a=a, b=b))
    with pytest.raises(DatasetError, match=says):
        load_dataset(src, 32, cache_dir=tmp_path / "cache", progress=False)


def test_a_site_with_other_classes_is_refused_without_a_flag_that_does_not_exist(two_sites, tmp_path: Path):
    from cxrkit.data.sources import DatasetError

    a, _ = two_sites
    other = make_synthetic_site(tmp_path / "gamma", n_per_class=4, size=40, seed=3, classes=("normal", "pneumonia"))
    src = tmp_path / "sources.yaml"
    src.write_text(yaml.safe_dump({"sites": {"alpha": str(a), "gamma": str(other)}}))
    # was match_classes' advice to pass --class-map, which train and audit do not have
    with pytest.raises(DatasetError, match=r"site gamma \(.*\) has the classes \['normal', 'pneumonia'\], which are not among site alpha's") as err:
        load_dataset(src, 32, cache_dir=tmp_path / "cache", progress=False)
    assert "--class-map" not in str(err.value)


def test_a_site_without_one_class_joins_the_others_and_is_warned_about(two_sites, tmp_path: Path):
    # `cxrkit train A B` with B holding tb/ alone was refused ("only one class folder has images"), though A has both.
    from cxrkit.training.trainer import _note_dataset_findings

    a, _ = two_sites
    clinic = make_synthetic_site(tmp_path / "clinic", n_per_class=12, size=40, seed=4, classes=("normal", "tb"))
    import shutil

    shutil.rmtree(clinic / "normal")
    src = tmp_path / "sources.yaml"
    src.write_text(yaml.safe_dump({"sites": {"clinic": str(clinic), "alpha": str(a)}}))
    ds = load_dataset(src, 32, cache_dir=tmp_path / "cache", progress=False)
    assert ds.class_names == ["healthy", "tb"] and (ds.sites == "clinic").sum() == 12 and set(ds.labels[ds.sites == "clinic"]) == {1}
    said: list[str] = []
    _note_dataset_findings(ds, said.append)
    assert said == ["warning: site clinic has no healthy images: the model can learn that clinic's images are never healthy (a shortcut "
                    "through the site), and clinic's own figures have no ROC-AUC"]


def test_training_on_one_folder_twice_is_refused_before_the_run_folder_is_made(two_sites, tmp_path: Path, capsys: pytest.CaptureFixture):
    a, _ = two_sites
    # Every image was in two sites (and could be train at one, test at the other).
    assert main(["train", str(a), f"{a}/", "--out", str(tmp_path / "run"), "--epochs", "1"]) == 2
    assert "site alpha (" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_a_merge_key_in_a_sources_file_is_read(two_sites, tmp_path: Path):
    from cxrkit.data.multisite import read_sources_file

    a, b = two_sites
    src = tmp_path / "sources.yaml"  # the duplicate-key check read '<<' as a key: "could not determine a constructor"
    src.write_text(f"common: &c\n  alpha: {a}\nsites:\n  <<: *c\n  beta: {b}\n")
    assert read_sources_file(src) == {"alpha": a.resolve(), "beta": b.resolve()}


def test_a_list_of_sites_with_two_folders_of_one_name_keeps_both(two_sites, tmp_path: Path):
    import shutil

    a, _ = two_sites
    for where in ("x", "y"):
        shutil.copytree(a, tmp_path / where / "data")
    src = tmp_path / "sources.yaml"
    src.write_text("sites:\n  - x/data\n  - y/data\n")  # both sites were named 'data': the first was dropped
    ds = load_dataset(src, 32, cache_dir=tmp_path / "cache", progress=False)
    assert sorted(set(ds.sites)) == ["data", "data_2"] and len(ds.relpaths) == 120
