"""Label tables (NIH and generic CSV), MedMNIST .npz files and patient-level multi-label splits."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrkit.data.dataset import load_dataset, plan_dataset
from cxrkit.data.sources import DatasetError
from cxrkit.data.splits import iterative_stratification, patient_ids
from cxrkit.data.tables import open_label_table

FINDINGS = ["Atelectasis", "Effusion", "Mass", "Nodule"]


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _png(path: Path, value: int, size: int = 20) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)


def make_nih(root: Path, n_patients: int = 60, seed: int = 0, lists: bool = True) -> Path:
    """A small NIH-style dataset: images_001/ and images_002/, Data_Entry_2017.csv and NIH's split lists."""
    rng = np.random.default_rng(seed)
    rows, test = [], []
    for p in range(1, n_patients + 1):
        for k in range(int(rng.integers(1, 4))):
            name = f"{p:08d}_{k:03d}.png"
            _png(root / f"images_00{1 + p % 2}" / name, int(rng.integers(0, 255)))
            found = [f for f, q in zip(FINDINGS, (0.3, 0.25, 0.15, 0.1)) if rng.random() < q]
            rows.append({"Image Index": name, "Finding Labels": "|".join(found) or "No Finding", "Follow-up #": k,
                         "Patient ID": p, "Patient Age": 50, "Patient Gender": "M", "View Position": "PA"})
            if p > n_patients * 0.8:
                test.append(name)
    _write_csv(root / "Data_Entry_2017.csv", rows)
    if lists:
        (root / "test_list.txt").write_text("\n".join(test) + "\n")
        (root / "train_val_list.txt").write_text("\n".join(r["Image Index"] for r in rows if r["Image Index"] not in test) + "\n")
    return root


def test_nih_table_findings_patients_and_split_lists(tmp_path):
    root = make_nih(tmp_path / "nih")
    src = open_label_table(root / "Data_Entry_2017.csv", root)
    assert src.layout == "nih table" and src.multilabel
    assert src.classes == sorted({f for s in src.samples for f in s.findings})
    first = src.samples[0]
    assert first.patient == "1" and first.path.is_file() and first.path.parent.name.startswith("images_00")
    no_finding = [s for s in src.samples if s.label == "No Finding"]
    assert no_finding and all(s.findings == () for s in no_finding)
    assert {s.split for s in src.samples} == {"train", "test"}
    assert all(s.split == "test" for s in src.samples if int(s.patient) > 48)
    assert patient_ids(src.samples, None)[0] == "1"

    ds = load_dataset(root, 24, labels=root / "Data_Entry_2017.csv", progress=False, val_fraction=0.2)
    assert ds.task == "multilabel" and ds.labels.shape == (len(src.samples), len(src.classes))
    pats = np.array(ds.patients)
    split_sets = {s: set(pats[ds.splits == s]) for s in ("train", "val", "test")}
    assert all(split_sets.values())
    assert not (split_sets["train"] & split_sets["val"]) and not (split_sets["train"] & split_sets["test"])
    assert not (split_sets["val"] & split_sets["test"])
    assert ds.label_text(int(np.flatnonzero(ds.labels.sum(1) == 0)[0])) == ""
    assert ds.images.shape == (len(src.samples), 24, 24)


def test_table_errors_are_actionable(tmp_path):
    root = make_nih(tmp_path / "nih", n_patients=5, lists=False)
    rows = list(csv.DictReader(open(root / "Data_Entry_2017.csv")))
    bad = [dict(r) for r in rows]
    bad[0]["Finding Labels"] = "Atelectasis|Dragons"
    with pytest.raises(DatasetError, match=r"unknown finding.*Dragons.*one per image, pass --label-column 'Finding Labels'"):
        open_label_table(_write_csv(tmp_path / "bad.csv", bad), root)
    missing = [dict(r) for r in rows] + [{**rows[0], "Image Index": "99999999_000.png"}]
    with pytest.raises(DatasetError, match=r"1 of \d+ images .* not under .*99999999_000.png"):
        open_label_table(_write_csv(tmp_path / "missing.csv", missing), root)
    with pytest.raises(DatasetError, match="no image column"):
        open_label_table(_write_csv(tmp_path / "nocol.csv", [{"x": 1, "labels": "Mass"}]), root)
    with pytest.raises(DatasetError, match="--label-column 'nope' is not a column"):
        open_label_table(root / "Data_Entry_2017.csv", root, label_column="nope")
    with pytest.raises(DatasetError, match="several labels"):
        load_dataset(root, 16, labels=root / "Data_Entry_2017.csv", task="binary", label_column="Finding Labels", progress=False)
    elsewhere = tmp_path / "elsewhere.png"  # an absolute path outside the root: was pathlib's "is not in the subpath" error at training
    _png(elsewhere, 100)
    outside = [dict(r) for r in rows] + [{**rows[0], "Image Index": str(elsewhere)}]
    with pytest.raises(DatasetError, match=r"1 image path\(s\) in .* are outside the image root .*elsewhere.png.*--labels outside.csv"):
        open_label_table(_write_csv(tmp_path / "outside.csv", outside), root)


def test_an_image_in_both_nih_split_lists_is_refused(tmp_path):
    root = make_nih(tmp_path / "nih", n_patients=10)
    first_test = (root / "test_list.txt").read_text().split()[0]
    with open(root / "train_val_list.txt", "a") as f:
        f.write(first_test + "\n")  # it was a test image without a word
    with pytest.raises(DatasetError, match=f"{first_test} is in both .*test_list.txt and .*train_val_list.txt"):
        open_label_table(root / "Data_Entry_2017.csv", root)
    (root / "train_val_list.txt").write_bytes(b"caf\xe9.png\n")  # was the codec's message, naming no file
    with pytest.raises(DatasetError, match="train_val_list.txt is not UTF-8 text"):
        open_label_table(root / "Data_Entry_2017.csv", root)


def test_generic_tables_onehot_and_single_label(tmp_path):
    for i in range(12):
        _png(tmp_path / "img" / f"a{i}.png", 10 * i)
    onehot = [{"path": f"img/a{i}.png", "cardio": i % 2, "effusion": int(i % 3 == 0), "patient_id": f"p{i // 2}", "split": ""}
              for i in range(12)]
    src = open_label_table(_write_csv(tmp_path / "onehot.csv", onehot), tmp_path)
    assert src.classes == ["cardio", "effusion"] and src.samples[0].findings == ("effusion",)
    assert src.samples[3].findings == ("cardio", "effusion") and src.samples[3].patient == "p1"
    single = [{"path": f"img/a{i}.png", "label": "tb" if i % 2 else "normal", "split": "valid" if i >= 9 else "train"}
              for i in range(12)]
    ds = load_dataset(_write_csv(tmp_path / "single.csv", single), 16, progress=False)
    assert ds.task == "binary" and ds.class_names == ["normal", "tb"] and (ds.splits[9:] == "val").all()
    assert ds.patients is None
    # NaN, NA, null or blank patient IDs (pandas writes NaN for a missing one) are no ID: they were one "patient" holding all those images
    missing = [{**row, "patient_id": ["NaN", "nan", "NA", "null", "", "p1"][i % 6]} for i, row in enumerate(onehot)]
    patients = [smp.patient for smp in open_label_table(_write_csv(tmp_path / "nan.csv", missing), tmp_path).samples]
    assert patients == [None, None, None, None, None, "p1"] * 2
    # A table written on Windows names img\\a0.png: refused as missing, although a zip's '\\' separators are read as folders.
    windows = [{**row, "path": row["path"].replace("/", "\\")} for row in onehot]
    assert [smp.path for smp in open_label_table(_write_csv(tmp_path / "win.csv", windows), tmp_path).samples] == \
        [smp.path for smp in open_label_table(_write_csv(tmp_path / "unix.csv", onehot), tmp_path).samples]


def _images(root: Path, n: int = 8) -> list[str]:
    for i in range(n):
        _png(root / "img" / f"a{i}.png", 20 * i)
    return [f"img/a{i}.png" for i in range(n)]


@pytest.mark.parametrize("text, says", [
    # a row cut short was "unexpected AttributeError: 'NoneType' object has no attribute 'strip'"
    (b"path,label\nimg/a0.png\n", r"line 2 of .*t.csv has 1 values but its header names 2 columns \(path, label\)"),
    # a longer row (an unquoted comma in a path) had its extra value dropped without a word
    (b"path,label\nimg/a0.png,tb,normal\n", "line 2 of .*t.csv has 3 values but its header names 2 columns"),
    # two columns of one name: the labels were read from the last one
    (b"path,label,Label\nimg/a0.png,tb,normal\n", "t.csv has two columns named 'label' and 'Label'; rename or remove one"),
    # the codec's and csv's own messages named no file (the second was "unexpected Error ... a bug in cxrkit")
    ("path,label\nimg/a0.png,tuberculos\xe9\n".encode("latin-1"), r"t.csv is not UTF-8 text \(line 2 has the byte 0xe9\); save it as 'CSV UTF-8'"),
    (b"path,label\nimg/a0.png,\"" + b"x" * 200_000 + b"\"\n", "line 2 of .*t.csv cannot be read as CSV: field larger than field limit"),
    (b"\npath,label\nimg/a0.png,tb\n", "t.csv: its first line is empty; it must name the columns"),
], ids=["short-row", "long-row", "two-label-columns", "latin-1", "huge-field", "empty-header"])
def test_table_defects_that_would_shift_drop_or_misread_values_are_one_line_errors(tmp_path, text, says):
    _images(tmp_path)
    (tmp_path / "t.csv").write_bytes(text)
    with pytest.raises(DatasetError, match=says):
        open_label_table(tmp_path / "t.csv", tmp_path)


@pytest.mark.parametrize("haze, says", [
    (["0", "1", "2", "0", "1", "0", "1", "0", "1", "0"], r"column 'haze' of the table holds 0/1 labels but line 4 has '2'"),
    (["0", "1", "0.5", "0", "1", "0", "1", "0", "1", "0"], r"column 'haze' of the table holds 0/1 labels but line 4 has '0.5'"),
    (["yes", "no"] * 5, r"column 'haze' of the table holds yes/no values beside the 0/1 label columns \(opacity\)"),
], ids=["stray-2", "half", "yes-no"])
def test_a_finding_column_with_other_values_is_refused_not_dropped(tmp_path, haze, says):
    # The column vanished from the task without a word: classes ['opacity'], and the haze labels were never read.
    paths = _images(tmp_path, 10)
    rows = [{"path": p, "opacity": i % 2, "haze": h} for i, (p, h) in enumerate(zip(paths, haze))]
    with pytest.raises(DatasetError, match=says):
        open_label_table(_write_csv(tmp_path / "t.csv", rows), tmp_path)


def test_a_no_finding_column_is_the_absence_of_findings_and_one_name_per_row_is_a_class(tmp_path):
    paths = _images(tmp_path, 9)
    # "No Finding" was read as a finding: every image had "any finding", and the task learned it as a disease.
    rows = [{"path": p, "No Finding": int(i % 3 == 0), "Effusion": int(i % 3 == 1), "Cardiomegaly": int(i % 3 == 2)} for i, p in enumerate(paths)]
    src = open_label_table(_write_csv(tmp_path / "onehot.csv", rows), tmp_path)
    assert src.classes == ["Effusion", "Cardiomegaly"] and [s.findings for s in src.samples[:3]] == [(), ("Effusion",), ("Cardiomegaly",)]
    rows[0]["Effusion"] = 1
    with pytest.raises(DatasetError, match=r"line 2 of .*: 'No Finding' is 1 but the findings marked 1 are Effusion; a row holds either"):
        open_label_table(_write_csv(tmp_path / "both.csv", rows), tmp_path)
    both = [{"path": p, "findings": ("Effusion|No Finding" if i == 4 else "Effusion|Cardiomegaly")} for i, p in enumerate(paths)]
    with pytest.raises(DatasetError, match=r"line 6 of .* has 'Effusion\|No Finding': a finding and 'No Finding' together"):
        open_label_table(_write_csv(tmp_path / "both2.csv", both), tmp_path)
    # A `labels` column of one name per row: "normal" was dropped as no finding, and three classes trained as two findings.
    single = [{"path": p, "labels": ("normal", "tb", "pneumonia")[i % 3]} for i, p in enumerate(paths)]
    src = open_label_table(_write_csv(tmp_path / "single.csv", single), tmp_path)
    assert not src.multilabel and src.classes == ["normal", "pneumonia", "tb"]
    assert open_label_table(_write_csv(tmp_path / "single.csv", single), tmp_path, task="multilabel").classes == ["pneumonia", "tb"]
    # 01 and 1 were two classes of a three-class task
    numbers = [{"path": p, "label": ("0", "01", "1.0")[i % 3]} for i, p in enumerate(paths)]
    assert open_label_table(_write_csv(tmp_path / "n.csv", numbers), tmp_path).classes == ["0", "1"]


def test_one_zero_one_column_is_a_binary_task(tmp_path):
    # A "tb" 0/1 column trained as a one-finding multi-label task: no PPV/NPV, calibration, referral or paired tests.
    paths = _images(tmp_path, 8)
    rows = [{"path": p, "tb": i % 2, "patient_id": f"p{i}"} for i, p in enumerate(paths)]
    src = open_label_table(_write_csv(tmp_path / "tb.csv", rows), tmp_path)
    assert not src.multilabel and src.classes == ["no tb", "tb"] and [s.label for s in src.samples[:2]] == ["no tb", "tb"]
    assert src.describe().startswith("labels: binary, classes no tb, tb (from column tb of tb.csv)")
    plan = plan_dataset(tmp_path, labels=tmp_path / "tb.csv", val_fraction=0.25, test_fraction=0.25)
    assert plan.positive == "tb" and plan.class_names == ["no tb", "tb"] and list(plan.labels) == [0, 1] * 4
    assert open_label_table(tmp_path / "tb.csv", tmp_path, task="multilabel").multilabel  # asked for: one finding
    # Named with --label-column, the same classes ("0" and "1" made the positive class a guess); a generic "label" column keeps 0 and 1.
    assert open_label_table(tmp_path / "tb.csv", tmp_path, label_column="tb").classes == ["no tb", "tb"]
    generic = [{"path": r["path"], "label": r["tb"]} for r in rows]
    assert open_label_table(_write_csv(tmp_path / "generic.csv", generic), tmp_path).classes == ["0", "1"]
    # With a "No Finding" column beside it, that column names the negative class, and a row must hold one of the two.
    both = [{**r, "No Finding": 1 - r["tb"]} for r in rows]
    assert open_label_table(_write_csv(tmp_path / "nf.csv", both), tmp_path).classes == ["No Finding", "tb"]
    both[3]["No Finding"] = 1
    with pytest.raises(DatasetError, match=r"line 5 of .*nf.csv: 'No Finding' and 'tb' are both 1; a row holds one of them"):
        open_label_table(_write_csv(tmp_path / "nf.csv", both), tmp_path)
    # Every row 1: refused for training, read (one class) for evaluating a model on an all-TB site.
    ones = _write_csv(tmp_path / "ones.csv", [{**r, "tb": 1} for r in rows])
    with pytest.raises(DatasetError, match=r"column 'tb' is 1 on every row; training needs images with 0 and with 1"):
        open_label_table(ones, tmp_path)
    assert open_label_table(ones, tmp_path, min_classes=1).classes == ["tb"]


def test_images_a_table_does_not_list_are_named_as_left_out(tmp_path):
    from cxrkit.data.sources import left_out_notes

    paths = _images(tmp_path, 10)
    (tmp_path / "runs" / "r" / "plots").mkdir(parents=True)  # a run kept beside the data: its plots are not images of the task
    for name in ("meta.json", "config.yaml"):
        (tmp_path / "runs" / "r" / name).write_text("{}")
    _png(tmp_path / "runs" / "r" / "plots" / "roc.png", 5)
    rows = [{"path": p, "label": "tb" if i % 2 else "normal"} for i, p in enumerate(paths[:8])]
    src = open_label_table(_write_csv(tmp_path / "t.csv", rows), tmp_path)
    # The 2 images without a row were dropped without a word.
    assert [p.name for p in src.unlisted_images] == ["a8.png", "a9.png"]
    assert left_out_notes(src) == [f"2 image(s) under {tmp_path.resolve()} are not listed in t.csv and were left out "
                                   f"(e.g. {tmp_path.resolve() / 'img' / 'a8.png'}); add rows for them to use them"]


def test_a_semicolon_or_tab_separated_table_is_read(tmp_path):
    paths = _images(tmp_path)
    for sep in ";\t":  # a spreadsheet in a European locale: was "has no image column ... columns are ['path;label']"
        (tmp_path / "t.csv").write_text(f"path{sep}label\n" + "".join(f"{p}{sep}{'tb' if i % 2 else 'normal'}\n" for i, p in enumerate(paths)))
        src = open_label_table(tmp_path / "t.csv", tmp_path)
        assert src.classes == ["normal", "tb"] and src.samples[1].label == "tb"


def test_a_label_written_two_ways_is_one_class_or_refused(tmp_path):
    paths = _images(tmp_path)

    def table(labels: list[str], column: str = "label") -> Path:
        return _write_csv(tmp_path / "t.csv", [{"path": p, column: v} for p, v in zip(paths, labels)])

    # a spreadsheet's 1.0 beside 1 was a third class
    assert open_label_table(table(["0", "1", "1.0", "0.0"] * 2), tmp_path).classes == ["0", "1"]
    with pytest.raises(DatasetError, match="labels 'TB' and 'tb' differ only in case, so they would be two classes"):
        open_label_table(table(["normal", "TB", "tb", "normal"] * 2), tmp_path)
    with pytest.raises(DatasetError, match="labels 'TB' and 'tb' differ only in case"):  # findings: two findings
        open_label_table(table(["TB|Effusion", "tb", "No Finding", "Effusion"] * 2, "findings"), tmp_path)
    with pytest.raises(DatasetError, match=r"line 3 of .*t.csv has an empty label \('nan'\)"):  # pandas' NaN was a class 'nan'
        open_label_table(table(["normal", "nan", "tb", "normal"] * 2), tmp_path)
    with pytest.raises(DatasetError, match=r"line 2 of .*t.csv has a label with a line break"):  # 't\nb' was a class beside 'tb'
        open_label_table(table(["t\nb", "tb", "normal", "normal"] * 2), tmp_path)
    # 1.00 (a spreadsheet's fixed decimals) is 1: such a column was silently no label column, a finding gone missing
    rows = [{"path": p, "cardio": i % 2, "effusion": f"{int(i % 3 == 0)}.00"} for i, p in enumerate(paths)]
    src = open_label_table(_write_csv(tmp_path / "t.csv", rows), tmp_path)
    assert src.classes == ["cardio", "effusion"] and src.samples[3].findings == ("cardio", "effusion")
    # A finding column with one blank (or CheXpert's -1) was silently no label column: a finding went missing.
    rows = [{"path": p, "cardio": i % 2, "effusion": "" if i == 3 else int(i % 3 == 0)} for i, p in enumerate(paths)]
    with pytest.raises(DatasetError, match="column 'effusion' of the table holds 0/1 labels but line 5 has ''"):
        open_label_table(_write_csv(tmp_path / "t.csv", rows), tmp_path)


def test_each_table_row_names_one_file(tmp_path):
    paths = _images(tmp_path)
    _png(tmp_path / "other" / "a9.png", 9)
    rows = [{"path": p, "label": "tb" if i % 2 else "normal"} for i, p in enumerate(paths)]
    # A path whose folder is wrong was looked up by its file name anywhere: another image, with this row's label.
    with pytest.raises(DatasetError, match="1 of 9 images listed in .* are not under .*e.g. old/a9.png"):
        open_label_table(_write_csv(tmp_path / "t.csv", [*rows, {"path": "old/a9.png", "label": "tb"}]), tmp_path)
    _png(tmp_path / "more" / "a0.png", 9)  # a bare name in two folders: the first found was taken
    with pytest.raises(DatasetError, match=r"line 2 of .*t.csv names a0.png, which is in 2 folders .*img/a0.png, more/a0.png"):
        open_label_table(_write_csv(tmp_path / "t.csv", [{**rows[0], "path": "a0.png"}, *rows[1:]]), tmp_path)
    # './img/a0.png' and 'img/x/../a0.png' are img/a0.png: listed twice; '..' out of the root is outside it
    for alias in ("./img/a0.png", "img//a0.png", "img/x/../a0.png"):
        with pytest.raises(DatasetError, match=r"lists img/a0.png twice \(lines 2 and 10\)"):
            open_label_table(_write_csv(tmp_path / "t.csv", [*rows, {"path": alias, "label": "tb"}]), tmp_path)
    _png(tmp_path.parent / "outside.png", 9)
    with pytest.raises(DatasetError, match="outside the image root"):
        open_label_table(_write_csv(tmp_path / "t.csv", [*rows, {"path": "img/../../outside.png", "label": "tb"}]), tmp_path)


def _npz(path: Path, k: int, n: int = 40, size: int = 28) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, m in (("train", n), ("val", n // 4), ("test", n // 4)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (m, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = (rng.random((m, k)) < 0.3).astype(np.uint8) if k > 1 else np.arange(m).reshape(-1, 1) % 2
    np.savez(path, **arrays)
    return path


def test_medmnist_binary_and_multilabel(tmp_path):
    pneu = load_dataset(_npz(tmp_path / "pneumoniamnist_64.npz", 1, size=64), 32, progress=False)
    assert pneu.task == "binary" and pneu.class_names == ["normal", "pneumonia"] and pneu.positive == "pneumonia"
    assert pneu.image_counts() == {"train": 40, "val": 10, "test": 10} and pneu.images.shape == (60, 32, 32)
    assert pneu.relpaths[40] == "val/000000" and pneu.source.layout == "medmnist npz"
    raw = np.load(tmp_path / "pneumoniamnist_64.npz")
    assert abs(float(pneu.images[0].mean()) - float(raw["train_images"][0].mean())) < 3  # resized, not scrambled
    chest = load_dataset(_npz(tmp_path / "chestmnist.npz", 14), 28, progress=False)
    assert chest.task == "multilabel" and chest.class_names[0] == "atelectasis" and chest.class_names[-1] == "hernia"
    np.testing.assert_array_equal(chest.labels[:40], np.load(tmp_path / "chestmnist.npz")["train_labels"])
    other = load_dataset(_npz(tmp_path / "mystery.npz", 3), 28, progress=False)
    assert other.class_names == ["label_0", "label_1", "label_2"]
    # One-hot rows (Keras' to_categorical) are one class per image: they were read as two findings, label_0 and label_1.
    onehot = _npz(tmp_path / "pneumoniamnist_onehot.npz", 1)
    arrays = dict(np.load(onehot))
    for split in ("train", "val", "test"):
        arrays[f"{split}_labels"] = np.eye(2, dtype=np.uint8)[arrays[f"{split}_labels"][:, 0]]
    np.savez(onehot, **arrays)
    one = load_dataset(onehot, 32, progress=False)
    assert one.task == "binary" and one.class_names == ["normal", "pneumonia"]
    np.testing.assert_array_equal(one.labels, pneu.labels)
    with pytest.raises(DatasetError, match="not a MedMNIST file"):
        np.savez(tmp_path / "x.npz", images=np.zeros((2, 4, 4)))
        load_dataset(tmp_path / "x.npz", 28, progress=False)


def _mutated_npz(path: Path, change) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, m in (("train", 20), ("val", 6), ("test", 6)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (m, 16, 16), dtype=np.uint8)  # a side under 16 px is refused
        arrays[f"{split}_labels"] = np.arange(m).reshape(-1, 1) % 2
    change(arrays)
    np.savez(path, **arrays)
    return path


def _set(key: str, value) -> callable:
    def change(arrays: dict) -> None:
        arrays[key] = value(arrays[key]) if callable(value) else value
    return change


@pytest.mark.parametrize("change, says", [
    # a float label was truncated to a class (0.5 -> class 0); NaN and strings failed inside numpy
    (_set("train_labels", lambda y: y + 0.5), r"train_labels\[0, 0\] is 0.5; labels are class indices"),
    (_set("train_labels", lambda y: np.where(y == 0, np.nan, y)), r"train_labels\[0, 0\] is nan"),
    (_set("train_labels", lambda y: y.astype(str)), "train_labels holds <U21 values"),
    # a 7 in val_labels made eight classes, five of them without any image
    (_set("val_labels", lambda y: np.where(y == 1, 7, y)), "labels run from 0 to 7 but train_labels has no image of class 2, 3, 4, 5, 6"),
    # 2**62 became a list of 2**62 class names: the command never returned
    (_set("train_labels", lambda y: y.astype(np.int64) << 62), r"train_labels\[1, 0\] is 4611686018427387904"),
    (_set("train_labels", lambda y: y.reshape(-1, 1, 1)), r"train_labels has the shape \(20, 1, 1\)"),
    # float images in 0..1 were cast to black; int64 ones wrapped at 256; other shapes failed during training
    (_set("train_images", lambda x: x.astype(np.float32) / 255), "train_images holds float32 values; MedMNIST images are uint8"),
    (_set("train_images", lambda x: x[..., None, None]), r"train_images has the shape \(20, 16, 16, 1, 1\)"),
    (_set("train_labels", np.array([[None]] * 20, dtype=object)), "train_labels holds Python objects"),
    (lambda a: a.pop("val_labels"), "has val_images but no val_labels"),  # the given val split was dropped without a word
    (_set("train_images", lambda x: x[:0]), "train_images has 0 images but train_labels has 20 rows"),
], ids=["float-label", "nan-label", "text-label", "val-label-7", "huge-label", "3d-labels", "float-images", "5d-images", "object-labels",
        "no-val-labels", "no-train-images"])
def test_medmnist_arrays_that_would_be_misread_are_refused(tmp_path, change, says):
    with pytest.raises(DatasetError, match=says):
        load_dataset(_mutated_npz(tmp_path / "x.npz", change), 8, progress=False)


def test_medmnist_multilabel_values_and_empty_splits(tmp_path):
    def multilabel(arrays: dict) -> None:
        for split in ("train", "val", "test"):
            arrays[f"{split}_labels"] = (np.arange(len(arrays[f"{split}_images"]) * 3).reshape(-1, 3) % 2).astype(np.uint8)
        arrays["train_labels"][0, 0] = 2  # was read as "present", like a 1

    with pytest.raises(DatasetError, match="train_labels holds 2; multi-label rows hold 0 or 1 per finding"):
        load_dataset(_mutated_npz(tmp_path / "m.npz", multilabel), 8, progress=False)
    empty_val = _mutated_npz(tmp_path / "e.npz", lambda a: a.update(val_images=a["val_images"][:0], val_labels=a["val_labels"][:0]))
    ds = load_dataset(empty_val, 8, progress=False)  # was numpy's "zero-size array to reduction operation maximum"
    assert ds.source.given_splits == ["train", "test"] and ds.image_counts() == {"train": 17, "val": 3, "test": 6}


def test_iterative_stratification_keeps_patients_together_and_prevalence():
    rng = np.random.default_rng(0)
    sizes = rng.geometric(0.3, 800)
    groups = np.repeat(np.arange(800), sizes).astype(str)
    patient_has = rng.random((800, 8)) < np.linspace(0.02, 0.3, 8) * 1.5
    y = (patient_has[np.repeat(np.arange(800), sizes)] & (rng.random((len(groups), 8)) < 0.7)).astype(int)
    fold = iterative_stratification(y, groups, [0.7, 0.15, 0.15], seed=1)
    for g in np.unique(groups)[:200]:
        assert len(set(fold[groups == g])) == 1
    sizes_per_fold = np.bincount(fold) / len(fold)
    np.testing.assert_allclose(sizes_per_fold, [0.7, 0.15, 0.15], atol=0.02)
    for k in range(3):
        np.testing.assert_allclose(y[fold == k].mean(0), y.mean(0), atol=0.02)


def _shared(name: str) -> Path:
    from .conftest import SHARED_DATA

    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not present (shared datasets are only on the project's machines)")
    return path


@pytest.mark.shared_data
def test_shared_nih_table_and_patient_level_resplit():
    root = _shared("nih_cxr14_1000_64")
    src = open_label_table(root / "labels.csv", root)
    assert len(src.samples) == 800 and len(src.classes) == 14 and src.given_splits == ["train", "val"]
    counts = {c: sum(c in s.findings for s in src.samples) for c in src.classes}
    assert counts["Hernia"] == 9 and counts["Effusion"] == 141  # train+valid rows of SOURCE.md's counts
    src_patients = {s.patient for s in src.samples}
    assert len(src_patients) < 264
    ds = load_dataset(root, 16, labels=root / "labels.csv", resplit=True, progress=False)
    pats = np.array(ds.patients)
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(pats[ds.splits == a]) & set(pats[ds.splits == b])


@pytest.mark.shared_data
def test_shared_pneumoniamnist_npz():
    ds = load_dataset(_shared("pneumoniamnist_28_balanced.npz"), 28, progress=False)
    assert ds.task == "binary" and ds.positive == "pneumonia"
    assert ds.counts() == {"train": {"normal": 1214, "pneumonia": 1214}, "val": {"normal": 135, "pneumonia": 135}}


def test_medmnist_colour_images_become_grey_as_their_png_files_would(tmp_path):
    from cxrkit.data.decode import read_grayscale

    rng = np.random.default_rng(0)
    arrays = {}
    for split, m in (("train", 20), ("val", 6), ("test", 6)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (m, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.arange(m).reshape(-1, 1) % 2
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    ds = load_dataset(tmp_path / "pneumoniamnist.npz", 28, progress=False)
    Image.fromarray(arrays["train_images"][0]).save(tmp_path / "first.png")
    # The channel mean was used: up to 7 grey levels from what predict reads in the same image saved as PNG.
    np.testing.assert_array_equal(ds.source.read([0])[0], read_grayscale(tmp_path / "first.png", 10**8))
    np.testing.assert_array_equal(ds.images[0], read_grayscale(tmp_path / "first.png", 10**8))
