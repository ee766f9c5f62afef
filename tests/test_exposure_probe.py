"""The exposure probe (brightness and contrast alone against the label) and what `--intensity auto` picks from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxrkit.audit.dataset_audit import audit_dataset, audit_messages
from cxrkit.audit.exposure import choose_intensity, exposure_probe
from cxrkit.config import ConfigError, TrainConfig
from cxrkit.data.synthetic import make_synthetic_site, synthetic_cxr


def _stats(rng: np.random.Generator, n: int, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return rng.normal(0.5, 0.05, n) + offset, rng.normal(0.2, 0.03, n)


def test_a_shortcut_at_one_site_is_found_there_though_diluted_in_the_pool():
    rng = np.random.default_rng(0)
    labels = np.tile(np.repeat([0, 1], 40), 3)
    sites = np.repeat(["a", "b", "c"], 80)
    offset = np.where((sites == "a") & (labels == 1), 0.15, 0.0)  # tb brighter at site a only
    mean, std = _stats(rng, 240, offset)
    r = exposure_probe(mean, std, labels, ["healthy", "tb"], sites)
    pooled = next(c for c in r["checks"] if c["site"] is None)
    assert pooled["auc"] < 0.75  # the pooled figure alone would miss it
    assert r["warning"] and r["site"] == "a" and r["auc"] > 0.95 and r["class"] == "tb"
    assert r["message"].startswith("brightness and contrast alone tell tb from healthy at site a (cross-validated AUC")
    assert {c["site"] for c in r["checks"]} == {None, "a", "b", "c"}


def test_no_warning_without_an_exposure_difference():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 100)
    mean, std = _stats(rng, 200, np.zeros(200))
    r = exposure_probe(mean, std, labels, ["healthy", "tb"])
    assert not r["warning"] and 0.3 < r["auc"] < 0.7
    assert r["message"].startswith("brightness and contrast alone do not tell the classes apart")


def test_several_classes_each_against_the_rest_and_bad_values_left_out():
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1, 2], 50)
    mean, std = _stats(rng, 150, np.zeros(150))
    std[labels == 2] += 0.1  # one class is higher in contrast
    mean[:5] = np.nan  # undecodable files
    r = exposure_probe(mean, std, labels, ["covid", "normal", "viral"])
    assert r["warning"] and r["class"] == "viral" and "viral from the other classes" in r["message"]
    assert {c["class"] for c in r["checks"]} == {"covid", "normal", "viral"}
    assert next(c for c in r["checks"] if c["class"] == "covid")["n"] == 145


def test_too_few_images_and_mismatched_inputs():
    r = exposure_probe(np.linspace(0, 1, 30), np.ones(30), np.repeat([0, 1], 15), ["healthy", "tb"])
    assert r["auc"] is None and not r["warning"] and "fewer than 20 images of a class" in r["message"]
    with pytest.raises(ValueError, match="one mean, std, label"):
        exposure_probe(np.ones(5), np.ones(4), np.zeros(5), ["a", "b"])


def _images(rng: np.random.Generator, labels: np.ndarray, bright: np.ndarray) -> np.ndarray:
    return np.stack([np.clip(synthetic_cxr(rng, 32, pattern=int(y)).astype(int) + (50 if b else 0), 0, 255).astype(np.uint8)
                     for y, b in zip(labels, bright)])


def test_auto_picks_histeq_for_a_training_exposure_shortcut_and_never_looks_at_test_images():
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1], 40)
    images = _images(rng, labels, labels == 1)  # every tb image brighter
    mode, r = choose_intensity(images, labels, ["healthy", "tb"], np.arange(80))
    assert mode == "histeq" and r["intensity"] == "histeq" and r["asked"] == "auto" and r["auc"] > 0.9
    assert "histogram-equalised (--intensity histeq" in r["message"]
    # Same images, but the brighter ones are outside the index (the test split): nothing to find in what is given.
    test = np.r_[20:40, 60:80]
    labels2 = labels.copy()
    images2 = _images(rng, labels2, np.isin(np.arange(80), test) & (labels2 == 1))
    keep = np.setdiff1d(np.arange(80), test)
    images2 = np.concatenate([images2, _images(rng, labels2[keep], np.zeros(40, bool))])
    labels2 = np.concatenate([labels2, labels2[keep]])
    index = np.concatenate([keep, 80 + np.arange(40)])
    mode, r = choose_intensity(images2, labels2, ["healthy", "tb"], index)
    assert mode == "none" and r["auc"] < 0.75 and "kept as they are (--intensity none)" in r["message"]


def test_the_audit_names_an_exposure_shortcut(tmp_path: Path):
    make_synthetic_site(tmp_path / "data", n_per_class=24, size=32, seed=4, exposure=(0.0, 0.2))
    audit = audit_dataset(tmp_path / "data", cache_dir=tmp_path / "cache", progress=False)
    assert audit["verdict"]["exposure"] and audit["exposure_probe"]["auc"] > 0.9
    assert any(m.startswith("EXPOSURE SHORTCUT: brightness and contrast alone tell tb from healthy") for m in audit_messages(audit))
    make_synthetic_site(tmp_path / "plain", n_per_class=24, size=32, seed=4)
    plain = audit_dataset(tmp_path / "plain", cache_dir=tmp_path / "cache", progress=False)
    assert not plain["verdict"]["exposure"]
    assert any(m.startswith("exposure probe: brightness and contrast alone do not tell") for m in audit_messages(plain))
    assert "below the 0.75 that flags a shortcut" in plain["exposure_probe"]["message"]  # "AUC 0.75" read as at the threshold
    # In a training whose --intensity auto (training + validation only) found no shortcut, the audit's finding on every image
    # says so, instead of "`cxrkit train` histogram-equalises" beside "images kept as they are".
    said = audit_messages({**audit, "intensity_choice": {"intensity": "none", "auc": 0.712}})
    shortcut = next(m for m in said if "EXPOSURE SHORTCUT" in m)
    assert shortcut.startswith("EXPOSURE SHORTCUT on all the images, test split included: brightness and contrast alone tell tb")
    assert "alone the probe's AUC is 0.712" in shortcut and "histogram-equalises" not in shortcut
    assert "histogram-equalises" in next(m for m in audit_messages({**audit, "intensity_choice": {"intensity": "histeq", "auc": 0.95}})
                                         if "EXPOSURE SHORTCUT" in m)
    assert any(m.startswith("exposure probe (all images, test split included): ")
               for m in audit_messages({**plain, "intensity_choice": {"intensity": "none", "auc": 0.6}}))


def test_auto_is_the_default_and_only_a_training_choice():
    assert TrainConfig(data="x").intensity == "auto"
    with pytest.raises(ConfigError, match=r"intensity \(--intensity\) must be one of auto, none"):
        TrainConfig(data="x", intensity="equalise")


def test_train_quiet_drops_chatter_but_not_the_audit_warning(tmp_path: Path, capsys):
    from cxrkit.audit.messages import is_warning
    from cxrkit.cli import main

    assert is_warning("audit: SHORTCUT: a classifier ...") and is_warning("warning: the test split has no tb images")
    assert not is_warning("audit: shortcut probe: AUC 0.46 ..., no strong shortcut found") and not is_warning("note: SHORTCUT: x")
    assert is_warning("splits: the file names look like they carry patient IDs, and 80 of these IDs have images in two splits")
    assert not is_warning("splits: 3 groups of identical or near-identical images kept in one split each")
    make_synthetic_site(tmp_path / "data", n_per_class=24, size=32, seed=4, exposure=(0.0, 0.2))
    assert main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--epochs", "1", "--image-size", "32",
                 "--intensity", "none", "--quiet"]) == 0
    cap = capsys.readouterr()
    # --quiet printed the figures and nothing else: a training on a shortcut the audit had named gave no word of it.
    assert "audit: EXPOSURE SHORTCUT" in cap.err and "epoch" not in cap.err + cap.out and "shortcut probe" not in cap.err
