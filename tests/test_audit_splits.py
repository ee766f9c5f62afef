"""The audit compares each class across splits, and training prints what it finds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrkit.audit.dataset_audit import audit_dataset, audit_messages
from cxrkit.audit.split_shift import compare_splits
from cxrkit.cli import main
from cxrkit.data.synthetic import synthetic_cxr


def _brighter_test_healthy(root: Path, n: int = 24, size: int = 40, offset: int = 60) -> Path:
    """train/ and test/ folders; only the test split's healthy images are exposed brighter."""
    rng = np.random.default_rng(5)
    for split, count in (("train", 2 * n), ("test", n)):
        for cls in ("healthy", "tb"):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                img = synthetic_cxr(rng, size, pattern=int(cls == "tb")).astype(int)
                if split == "test" and cls == "healthy":
                    img = img + offset
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / split / cls / f"{split}_{cls}_{i:03d}.png")
    return root


def test_compare_splits_names_the_class_split_and_direction():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 60)
    splits = np.tile(np.array(["train"] * 40 + ["test"] * 20), 2)
    mean = rng.normal(0.5, 0.03, 120)
    mean[(labels == 0) & (splits == "test")] += 0.2
    found = compare_splits({"mean": mean, "std": rng.normal(0.2, 0.02, 120)}, labels, splits, ["healthy", "tb"])
    assert [(f["class"], f["split"]) for f in found] == [("healthy", "test")]
    f = found[0]["findings"][0]
    assert f["statistic"] == "mean" and f["ks_d"] > 0.9 and abs(f["split_median"] - 0.7) < 0.03 and abs(f["train_median"] - 0.5) < 0.03
    assert found[0]["message"].startswith("test/healthy images are brighter than train/healthy (mean brightness 0.7")
    assert "test figures will not reflect the training data" in found[0]["message"]


def test_no_finding_when_splits_match():
    rng = np.random.default_rng(1)
    labels, splits = np.repeat([0, 1], 60), np.tile(np.array(["train"] * 40 + ["test"] * 20), 2)
    assert compare_splits({"mean": rng.normal(0.5, 0.05, 120)}, labels, splits, ["healthy", "tb"]) == []


@pytest.fixture(scope="module")
def shifted_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _brighter_test_healthy(tmp_path_factory.mktemp("splitshift"))


def test_audit_and_train_report_the_split_level_shift(shifted_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    import json

    audit = audit_dataset(shifted_data, cache_dir=tmp_path / "cache", progress=False)
    assert [(f["class"], f["split"]) for f in audit["split_shift"]] == [("healthy", "test")]
    assert any(m.startswith("SPLIT SHIFT: test/healthy images are brighter than train/healthy") for m in audit_messages(audit))
    out = tmp_path / "run"
    assert main(["train", str(shifted_data), "--out", str(out), "--image-size", "32", "--epochs", "1", "--batch-size", "16",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    printed = capsys.readouterr()
    assert "test/healthy images are brighter than train/healthy" in printed.out + printed.err
    meta = json.loads((out / "meta.json").read_text())
    assert any("SPLIT SHIFT: test/healthy" in m for m in meta["audit"]["messages"])
    # Only test images differ in exposure: --intensity auto decides on train and validation images, so it keeps them as they are.
    assert meta["preprocessing"]["intensity"] == "none" and meta["audit"]["exposure"]["intensity"] == "none"


def test_a_split_shift_needs_a_difference_a_reader_could_see():
    # Histogram-equalised images have nearly constant statistics: "test/tb images are lower in contrast than train/tb
    # (contrast (std) 0.29 vs 0.29, KS D 0.82)" was a finding.
    from cxrkit.audit.split_shift import compare_splits

    rng = np.random.default_rng(0)
    labels, splits = np.zeros(80, int), np.array(["train"] * 60 + ["test"] * 20)
    tiny = {"std": np.r_[0.288 + rng.normal(0, 0.0002, 60), 0.2885 + rng.normal(0, 0.0002, 20)]}
    assert compare_splits(tiny, labels, splits, ["tb"]) == []
    real = {"std": np.r_[0.288 + rng.normal(0, 0.01, 60), 0.24 + rng.normal(0, 0.01, 20)]}
    (found,) = compare_splits(real, labels, splits, ["tb"])
    assert found["message"].startswith("test/tb images are lower in contrast than train/tb (contrast (std) 0.24 vs 0.29")
