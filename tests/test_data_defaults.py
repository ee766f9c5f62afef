"""Defaults that follow the data: copies kept in one split when cxrkit cuts the splits, the image size of small images,
and leakage advice that fits where the splits came from."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from cxrkit.cli import main
from cxrkit.data.splits import merge_groups
from cxrkit.data.synthetic import make_synthetic_dataset

FAST = ["--model", "mlp", "--epochs", "1", "--batch-size", "16", "--no-augment"]


def _splits(run: Path) -> dict[str, str]:
    with open(run / "splits.csv", newline="") as f:
        return {r["path"]: r["split"] for r in csv.DictReader(f)}


def test_merge_groups_joins_patients_through_copies():
    patients = ["p1", "p1", "p2", "p3", "p4"]
    copies = [None, "c", "c", None, None]  # image 1 (patient p1) and image 2 (patient p2) are the same picture
    g = merge_groups(patients, copies)
    assert g[0] == g[1] == g[2] and len({g[0], g[3], g[4]}) == 3


def test_own_cut_keeps_copies_together_and_trains(tmp_path, capsys):
    """A train-only folder with byte-identical and resized copies: cxrkit's own cut never refuses itself."""
    data = make_synthetic_dataset(tmp_path / "covid", n_per_class=40, size=32, seed=3, splits={"train": 1.0})
    copies = {}
    for k, c in enumerate(["healthy", "tb"] * 6):
        src = sorted((data / "train" / c).glob("*.png"))[k]
        dst = src.with_name(f"copy_{k}.png")
        if k % 3:
            shutil.copy(src, dst)  # the same bytes
        else:
            Image.open(src).resize((30, 30)).save(dst)  # a re-sized copy: a near-duplicate
        copies[dst] = src
    from cxrkit.data.dataset import load_dataset

    naive = load_dataset(data, 32, progress=False, cache_dir=tmp_path / "c")  # the cut without grouping copies
    naive_where = dict(zip(naive.relpaths, naive.splits))
    rel = lambda p: p.relative_to(data).as_posix()  # noqa: E731
    assert any(naive_where[rel(d)] != naive_where[rel(s)] for d, s in copies.items()), "the data must leak without grouping"
    out = tmp_path / "run"
    assert main(["train", str(data), *FAST, "--image-size", "32", "--out", str(out)]) == 0
    cap = capsys.readouterr()
    assert "kept in one split" in cap.out + cap.err
    where = _splits(out)
    assert all(where[rel(d)] == where[rel(s)] for d, s in copies.items())
    assert {where[rel(d)] for d in copies} - {"train"}, "some copies should land in validation or test"
    meta = json.loads((out / "meta.json").read_text())
    assert not meta["audit"]["leakage"]
    # evaluation finds the very same test split (it follows splits.csv, not a fresh cut without the copies grouped)
    assert main(["evaluate", str(out), "--explain", "none", "--quiet"]) == 0
    n_test = json.loads((out / "metrics.json").read_text())["test"]["n"]
    assert n_test == sum(s == "test" for s in where.values())


def test_given_split_with_copies_is_still_refused(tmp_path, capsys):
    data = make_synthetic_dataset(tmp_path / "d", n_per_class=30, size=32, seed=4, splits={"train": 0.8, "test": 0.2})
    shutil.copy(next((data / "train" / "tb").glob("*.png")), data / "test" / "tb" / "leaked.png")
    assert main(["train", str(data), *FAST, "--image-size", "32", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "splits leak" in err and "split folders given on disk" in err


def test_small_images_train_at_their_own_size(tmp_path, capsys):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, m in (("train", 48), ("val", 16), ("test", 16)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (m, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(m) % 2).reshape(-1, 1)
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    out = tmp_path / "run"
    assert main(["train", str(tmp_path / "pneumoniamnist.npz"), *FAST, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "the images are 28 px" in err and "train at 28 px" in err
    assert json.loads((out / "meta.json").read_text())["preprocessing"]["image_size"] == 28
    # an explicit size is kept, and large images keep the default
    assert main(["train", str(tmp_path / "pneumoniamnist.npz"), *FAST, "--image-size", "32", "--out", str(tmp_path / "r32")]) == 0
    assert json.loads((tmp_path / "r32" / "meta.json").read_text())["preprocessing"]["image_size"] == 32
    from cxrkit.data.dataset import native_image_size

    big = make_synthetic_dataset(tmp_path / "big", n_per_class=4, size=256, seed=0, splits={"train": 1.0})
    assert native_image_size(big) == 256


def test_table_leak_points_to_resplit(tmp_path, capsys):
    """A label table whose own split column puts one patient on both sides: the advice is --resplit."""
    rows = []
    for i in range(40):
        p = tmp_path / "img" / f"a{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (24, 24), dtype=np.uint8)).save(p)
        patient = "shared" if i in (0, 39) else f"p{i}"
        rows.append({"path": f"img/a{i}.png", "label": "tb" if i % 2 else "normal", "patient_id": patient,
                     "split": "test" if i >= 32 else ("val" if i >= 26 else "train")})
    table = tmp_path / "labels.csv"
    with open(table, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    args = ["train", str(tmp_path), "--labels", str(table), *FAST, "--image-size", "24"]
    assert main([*args, "--out", str(tmp_path / "r1")]) == 2
    err = capsys.readouterr().err
    assert "--resplit" in err and "--group-pattern" not in err
    assert main([*args, "--resplit", "--out", str(tmp_path / "r2")]) == 0
    html = (tmp_path / "r2" / "report.html").read_text()  # it said the table's own train / validation / test split was used
    assert "the table&#39;s own splits were set aside (<code>--resplit</code>)" in html and "own train / validation / test split was used" not in html


def test_python_api_follows_the_native_size_too(binary_data, tmp_path):
    import cxrkit

    run = cxrkit.train(binary_data, out=str(tmp_path / "r"), model="mlp", epochs=1, batch_size=16, progress=False)
    assert run.preprocessing.image_size == 48  # the fixture's images are 48 px


def test_a_class_named_as_another_ones_absence_is_the_negative_class():
    from cxrkit.data.sources import choose_positive_class, positive_is_guessed

    # The second name alphabetically made "No_Effusion" the disease: every sensitivity was the healthy images' share.
    for negative, positive in (("No_Effusion", "Effusion"), ("Non-COVID", "COVID"), ("No Cardiomegaly", "Cardiomegaly"),
                               ("without tb", "tb"), ("normal", "Pneumonia")):
        assert choose_positive_class([positive, negative]) == positive and not positive_is_guessed([negative, positive])
    assert choose_positive_class(["a", "b"]) == "b" and positive_is_guessed(["a", "b"])
    assert choose_positive_class(["nonTB", "TB"]) == "nonTB" and positive_is_guessed(["nonTB", "TB"])  # no word boundary: a guess


def test_training_says_when_the_positive_class_is_a_guess(binary_data, tmp_path, capsys):
    data = tmp_path / "d"
    for split in ("train", "test"):
        for old, new in (("healthy", "site_a"), ("tb", "site_b")):
            shutil.copytree(binary_data / split / old, data / split / new)
    assert main(["train", str(data), "--out", str(tmp_path / "r"), "--epochs", "1", "--image-size", "32", "--model", "cnn"]) == 0
    out = capsys.readouterr()
    assert ("note: site_b is taken as the positive (disease) class, the second name alphabetically: neither name says normal, "
            "healthy or no finding. If site_a is the disease, train again with --positive site_a") in out.out + out.err
