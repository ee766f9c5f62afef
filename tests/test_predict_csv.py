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


def test_a_name_the_csv_cannot_record_is_refused_before_any_prediction(tiny_run, tmp_path, monkeypatch):
    # A Latin-1 file name: the CSV failed at the end, after every prediction, with "'utf-8' codec can't encode '\udce9'".
    import os

    from cxrkit.data.sources import DatasetError

    run = cxrkit.load(tiny_run)
    image = tmp_path / os.fsdecode(b"caf\xe9.png")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(image)
    classified = []
    monkeypatch.setattr(run, "iter_predict", lambda *a, **k: classified.append(1) or iter(()))
    with pytest.raises(DatasetError, match=r"predict --out: the name .*caf\\xe9.png.* is not UTF-8 text"):
        predict_to_csv(run, [image], tmp_path / "p.csv", progress=False)
    assert classified == [] and not (tmp_path / "p.csv").exists()
