"""An external set with one class only (normal images from a screening site) is evaluated for the figures that exist."""

from __future__ import annotations

import shutil

import pytest

from cxrkit.cli import main
from cxrkit.data.sources import DatasetError, open_image_folder


@pytest.mark.parametrize("present", ["healthy", "tb"])
def test_one_class_external_set(tiny_run, binary_data, tmp_path, capsys, present):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    ext = tmp_path / "site"
    shutil.copytree(binary_data / "test" / present, ext / present)
    assert main(["evaluate", str(run), str(ext), "--explain", "none"]) == 0
    out = capsys.readouterr().out
    assert f"one-class set ({present} only)" in out
    import json

    m = json.loads((run / "metrics.json").read_text())["external:site"]
    kept, absent = ("specificity", "sensitivity") if present == "healthy" else ("sensitivity", "specificity")
    n = len(list((ext / present).iterdir()))
    assert m["metrics"][kept]["denominator"] == n and 0 <= m["metrics"][kept]["value"] <= 1 and m["metrics"][kept]["ci"]
    for name in (absent, "roc_auc", "ppv", "npv", "f1"):
        assert m["metrics"][name]["value"] is None and "only" in m["metrics"][name]["note"]
    assert "PPV and NPV cannot be measured" in out and "right 100.0%" not in out and "right 0.0%" not in out


def test_training_still_needs_two_classes(binary_data, tmp_path):
    shutil.copytree(binary_data / "train" / "healthy", tmp_path / "d" / "healthy")
    with pytest.raises(DatasetError, match="need at least 2"):
        open_image_folder(tmp_path / "d")
