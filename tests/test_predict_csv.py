"""cxrkit.prediction.predict_csv: the resumable prediction CSV refuses an output it cannot write before classifying anything."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import cxrkit
from cxrkit.prediction.predict_csv import predict_to_csv


def test_an_output_that_cannot_be_written_fails_before_any_prediction(tiny_run, tmp_path, monkeypatch):
    run = cxrkit.load(tiny_run)
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)).save(image)
    classified = []
    original = run.iter_predict
    monkeypatch.setattr(run, "iter_predict", lambda *a, **k: classified.append(1) or original(*a, **k))
    # The first checkpoint (30 s in, or the end of a smaller job) found the folder missing: the work done was lost.
    with pytest.raises(FileNotFoundError, match="cannot be written"):
        predict_to_csv(run, [image], tmp_path / "no" / "such" / "folder" / "p.csv", progress=False)
    assert classified == []
    out = tmp_path / "p.csv"
    counts = predict_to_csv(run, [image], out, progress=False)
    assert counts["predicted"] == 1 and classified == [1]
    assert predict_to_csv(run, [image], out, progress=False)["skipped"] == 1  # resumed from the file, as before
