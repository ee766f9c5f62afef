"""A run folder copied while its training still ran (weights and history, no meta.json yet): evaluate, predict and
serve say that its training has not finished and how to finish it, not that the folder is no cxrkit run."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from cxrkit.cli import main


@pytest.mark.parametrize("command", ["evaluate", "predict", "serve"])
def test_run_copied_during_training_says_what_is_missing(command, tiny_run, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("meta.json", "metrics.json", "predictions.csv", "report.html", "plots"))
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(image)
    args = {"evaluate": ["evaluate", str(run)], "predict": ["predict", str(run), str(image)], "serve": ["serve", str(run)]}[command]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{run} lacks meta.json: its training has not finished" in err, err
    assert "2 epoch(s) in history.csv" in err and f"--out {run} --resume" in err, err
