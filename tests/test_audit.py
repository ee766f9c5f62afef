"""Dataset audit: the shortcut probe, near-duplicate detection and refusing to train on leaking splits."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from cxrkit.audit.dataset_audit import audit_dataset
from cxrkit.audit.duplicates import near_pairs
from cxrkit.cli import main
from cxrkit.data.synthetic import make_synthetic_dataset


@pytest.fixture(scope="module")
def clean_data(tmp_path_factory):
    """Two classes of synthetic radiographs, 40 each at 48 px, saved alike."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("clean"), n_per_class=40, size=48, seed=5)


def test_shortcut_probe_is_quiet_on_a_clean_set(clean_data):
    audit = audit_dataset(clean_data, progress=False)
    probe = audit["shortcut_probe"]
    assert probe["auc"] < 0.75 and not probe["warning"] and not audit["verdict"]["shortcut"]
    assert audit["properties"]["tb"]["mode"] == {"L": 40}
    assert audit["left_out"] == []


def test_images_in_formats_cxrkit_does_not_read_are_counted_by_the_audit(clean_data, tmp_path):
    import shutil

    from PIL import Image

    from cxrkit.audit.messages import audit_messages

    data = tmp_path / "d"
    shutil.copytree(clean_data, data)
    Image.open(next((data / "tb").glob("*.png"))).save(data / "tb" / "scan.webp")
    audit = audit_dataset(data, progress=False)  # "80 files audited", and the .webp named nowhere
    assert audit["left_out"] == [f"1 image(s) in a format cxrkit does not read were left out (e.g. {data / 'tb' / 'scan.webp'}); "
                                 "convert them to PNG (or JPEG) to use them"]
    assert audit["left_out"][0] in audit_messages(audit)


def test_shortcut_probe_flags_rgb_with_a_corner_marker(clean_data, tmp_path):
    data = tmp_path / "marked"
    shutil.copytree(clean_data, data)
    for f in (data / "tb").glob("*.png"):
        img = np.asarray(Image.open(f))
        img = img.copy()
        img[3:9, 3:5] = 255  # an "L"-like laterality marker in the top-left corner
        img[7:9, 3:8] = 255
        f.unlink()
        Image.fromarray(np.stack([img] * 3, axis=2)).save(f.with_suffix(".png"))
    audit = audit_dataset(data, progress=False)
    probe = audit["shortcut_probe"]
    assert probe["warning"] and probe["auc"] > 0.95
    named = {g["feature"] for g in probe["giveaways"]}
    assert named & {"channels", "mode RGB", "mode L", "top-left corner bright share", "top-left corner edge density"}, named
    assert audit["properties"]["tb"]["mode"] == {"RGB": 40}


def test_near_duplicates_survive_resizing_and_reencoding(clean_data, tmp_path):
    data = tmp_path / "dups"
    shutil.copytree(clean_data, data / "train", ignore=shutil.ignore_patterns("*_000[5-9].png", "*_00[1-3]?.png"))
    (data / "test" / "healthy").mkdir(parents=True)
    (data / "test" / "tb").mkdir(parents=True)
    src = Image.open(data / "train" / "healthy" / "healthy_0000.png")
    src.resize((40, 40), Image.Resampling.BICUBIC).convert("RGB").save(data / "test" / "healthy" / "copy.jpg", quality=70)
    shutil.copy(data / "train" / "tb" / "tb_0001.png", data / "test" / "tb" / "exact.png")
    Image.open(data / "train" / "healthy" / "healthy_0002.png").resize((64, 64)).save(data / "test" / "healthy" / "bigger.png")
    for k in range(3):  # the test split's own images
        shutil.copy(clean_data / "tb" / f"tb_00{30 + k}.png", data / "test" / "tb" / f"own{k}.png")
        shutil.copy(clean_data / "healthy" / f"healthy_00{20 + k}.png", data / "test" / "healthy" / f"own{k}.png")
    audit = audit_dataset(data, progress=False)
    d = audit["duplicates"]
    assert d["exact"]["clusters"] == 1 and d["exact"]["across_splits"] == 1
    assert d["near"]["across_splits"] == 3, d["near"]
    leaked = set(d["near"]["leaking_files"])
    assert {"test/healthy/copy.jpg", "test/healthy/bigger.png", "test/tb/exact.png", "train/healthy/healthy_0000.png"} <= leaked
    assert not any("own" in p for p in leaked), "different images must not be called duplicates"
    assert audit["verdict"]["leakage"]
    assert main(["audit", str(data), "--out", str(tmp_path / "a"), "--strict"]) == 1
    saved = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert saved["verdict"]["leakage"] and (tmp_path / "a" / "audit.html").is_file()
    assert main(["audit", str(clean_data), "--out", str(tmp_path / "b"), "--strict"]) == 0


def test_near_pairs_counts_bits():
    a = "00" * 32
    b = "03" + "00" * 31  # 2 bits differ
    c = "ff" * 32
    assert near_pairs([a, b, c, None], max_bits=4) == [(0, 1, 2)]


def test_training_refuses_leaking_splits_unless_allowed(clean_data, tmp_path, capsys):
    data = tmp_path / "leaky"
    (data / "train").mkdir(parents=True)
    shutil.copytree(clean_data / "healthy", data / "train" / "healthy")
    shutil.copytree(clean_data / "tb", data / "train" / "tb")
    for c in ("healthy", "tb"):
        (data / "test" / c).mkdir(parents=True)
        for k in range(6):
            shutil.move(data / "train" / c / f"{c}_00{30 + k}.png", data / "test" / c / f"{k}.png")
    shutil.copy(data / "train" / "tb" / "tb_0000.png", data / "test" / "tb" / "leaked.png")
    args = ["train", str(data), "--model", "mlp", "--image-size", "32", "--epochs", "1", "--batch-size", "16"]
    assert main([*args, "--out", str(tmp_path / "r1")]) == 2
    err = capsys.readouterr().err
    assert "splits leak" in err and "--allow-leakage" in err
    assert not (tmp_path / "r1" / "model.safetensors").exists()
    assert main([*args, "--out", str(tmp_path / "r2"), "--allow-leakage"]) == 0
    meta = json.loads((tmp_path / "r2" / "meta.json").read_text())
    assert meta["audit"]["leakage"] and meta["audit"]["allowed"] and meta["audit"]["allow_leakage"]
    assert "Leakage between splits" in (tmp_path / "r2" / "report.html").read_text()


def test_the_demo_dataset_does_not_look_like_it_leaks(tmp_path):
    # The demo's smooth synthetic images are 10-22 pHash bits apart; the audit must not call them copies,
    # or `cxrkit demo` (the README's first command) would refuse to train.
    data = make_synthetic_dataset(tmp_path / "d", n_per_class=200, size=96, seed=0, splits={"train": 0.8, "test": 0.2}, signal=0.6)
    audit = audit_dataset(data, cache_dir=tmp_path / "cache", progress=False)
    assert not audit["verdict"]["leakage"], audit["verdict"]["leakage_reasons"]
    assert audit["duplicates"]["near"]["clusters"] == 0


def test_audit_reads_what_train_reads_tables_sites_and_arrays(clean_data, tmp_path, capsys):
    # `cxrkit audit table.csv` said "is a file; give a folder"; train reads tables, sources files and several folders.
    import csv

    files = sorted(clean_data.rglob("*.png"))
    with open(tmp_path / "table.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "patient_id", "split"])
        for i, p in enumerate(files):  # patients of two images each; the given split puts some patients in two splits
            w.writerow([p.relative_to(clean_data).as_posix(), p.parent.name, f"p{i // 2}", ["train", "train", "val", "test"][i % 4]])
    table = (tmp_path / "table.csv").read_text().replace("healthy/", f"{clean_data.name}/healthy/").replace("tb/", f"{clean_data.name}/tb/")
    (clean_data.parent / "clean_table.csv").write_text(table)  # DATA.csv: paths relative to the table's folder
    audit = audit_dataset(clean_data, cache_dir=tmp_path / "c", progress=False, labels=tmp_path / "table.csv")
    assert audit["patients"]["ids"] == 40 and audit["patients"]["shared"]["val-test"] == 20  # the table's own patient IDs
    assert audit["verdict"]["leakage"]
    resplit = audit_dataset(clean_data, cache_dir=tmp_path / "c", progress=False, labels=tmp_path / "table.csv", resplit=True)
    assert not resplit["verdict"]["leakage"] and sum(resplit["patients"]["shared"].values()) == 0
    assert main(["audit", str(clean_data.parent / "clean_table.csv"), "--out", str(tmp_path / "a1"), "--cache-dir", str(tmp_path / "c"),
                 "--strict", "--quiet"]) == 1
    shutil.copytree(clean_data, tmp_path / "repackaged")
    assert main(["audit", str(clean_data), str(tmp_path / "repackaged"), "--out", str(tmp_path / "a2"), "--cache-dir", str(tmp_path / "c"),
                 "--quiet"]) == 0  # a copy of the folder as a second site: each image and its copy kept in one split
    two = json.loads((tmp_path / "a2" / "audit.json").read_text())
    assert two["n_files"] == 160 and two["duplicates"]["exact"]["across_splits"] == 0
    assert (tmp_path / "a2" / "sources.yaml").is_file()
    np.savez(tmp_path / "arrays.npz", train_images=np.zeros((8, 28, 28), np.uint8), train_labels=np.arange(8).reshape(-1, 1) % 2)
    capsys.readouterr()
    assert main(["audit", str(tmp_path / "arrays.npz"), "--out", str(tmp_path / "a3")]) == 2
    assert "holds its images as arrays in one file" in capsys.readouterr().err


def test_damaged_audit_caches_are_computed_again_with_a_note(clean_data, tmp_path, capsys):
    # Derived data: a truncated features or result cache stopped every audit and training with the JSON parser's message.
    first = audit_dataset(clean_data, cache_dir=tmp_path / "c", progress=False)
    stores = sorted((tmp_path / "c" / "audit").glob("*.json"))
    assert [p.name.split("-")[0] for p in stores] == ["features", "result"]
    for p in stores:
        p.write_text('{"trunc')
    capsys.readouterr()
    again = audit_dataset(clean_data, cache_dir=tmp_path / "c", progress=False)
    err = capsys.readouterr().err
    assert all(f"note: the audit cache {p} is damaged" in err for p in stores)
    assert again["seconds"]["files_computed"] == 80 and again["verdict"] == first["verdict"]
    assert again["shortcut_probe"]["auc"] == first["shortcut_probe"]["auc"]
    assert audit_dataset(clean_data, cache_dir=tmp_path / "c", progress=False)["seconds"]["cached"]


def test_the_exposure_advice_for_a_multilabel_task_is_what_training_does():
    # It promised that `cxrkit train` histogram-equalises, two lines before training said it keeps multi-label images as they are.
    from cxrkit.audit.messages import audit_messages

    base = {"verdict": {"conflicting_labels": 0, "leakage": False, "leakage_reasons": []}, "shortcut_probe": {"auc": None, "warning": False},
            "duplicates": {"exact": {"redundant_files": 0}, "near": {"redundant_files": 0}}, "corrupt": [],
            "exposure_probe": {"warning": True, "auc": 0.9, "message": "brightness and contrast alone tell the classes apart"}}
    (multi,) = [m for m in audit_messages({**base, "multilabel": True}) if m.startswith("EXPOSURE")]
    assert "train with --intensity histeq" in multi and "histogram-equalises each image" not in multi
    (single,) = [m for m in audit_messages(base) if m.startswith("EXPOSURE")]
    assert "histogram-equalises each image when it finds this" in single


def _write_table(path, root, header: list[str], row) -> list:
    """A label table over every PNG under ``root``: ``header`` after the path column, ``row(i, file)`` the rest of each row."""
    import csv

    files = sorted(root.rglob("*.png"))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", *header])
        for i, p in enumerate(files):
            w.writerow([p.relative_to(root).as_posix(), *row(i, p)])
    return files


@pytest.mark.parametrize("column", ["PatientID", "MRN", "subject_id", "Patient Number"])
def test_hospital_exports_patients_under_their_own_names(clean_data, tmp_path, column):
    # A table whose patient column read "PatientID", "MRN" or "subject_id" was cut by image without a word; an anonymised
    # export's "ANON" was one patient holding 27 images, and blank cells were split one by one, in silence.
    from cxrkit.audit.messages import audit_messages

    def row(i: int, p) -> list:
        return [p.parent.name, "ANON" if i % 6 == 0 else "000" if i % 6 == 3 else "" if i % 7 == 1 else f"{i // 2:05d}" if i % 2 else str(i // 2)]

    files = _write_table(tmp_path / "table.csv", clean_data, ["label", column], row)
    audit = audit_dataset(clean_data, cache_dir=tmp_path / "c", progress=False, labels=tmp_path / "table.csv")
    pat = audit["patients"]
    anon = sum(i % 3 == 0 for i in range(len(files)))
    blank = sum(i % 3 != 0 and i % 7 == 1 for i in range(len(files)))
    zeros = sum(i % 6 == 3 for i in range(len(files)))
    assert pat is not None and pat["placeholders"] == {"ANON": anon - zeros, "000": zeros} and pat["files_without_id"] == anon + blank
    said = " ".join(audit_messages(audit))
    assert f"PATIENT IDS: {anon} image(s) carry a placeholder patient ID (ANON ({anon - zeros}), 000 ({zeros})), read as no ID" in said
    assert f"PATIENT IDS: {anon + blank} of {len(files)} images have no patient ID (" in said


def test_one_patient_id_holding_a_large_share_is_named(clean_data, tmp_path):
    from cxrkit.audit.messages import audit_messages

    files = _write_table(tmp_path / "table.csv", clean_data, ["label", "patient_id"], lambda i, p: [p.parent.name, "WARD7" if i < 20 else f"p{i}"])
    audit = audit_dataset(clean_data, cache_dir=tmp_path / "c", progress=False, labels=tmp_path / "table.csv")
    said = audit_messages(audit)
    assert f"PATIENT IDS: one ID, WARD7, holds 20 of {len(files)} images (25%): they all go to one split" in " ".join(said)
    assert not any(m.startswith("patients:") for m in said)


def test_the_audit_says_which_columns_became_labels_and_patients(clean_data, tmp_path, capsys):
    # An HIV 0/1 column beside TB trained as a second finding, and nothing said which columns were read.
    _write_table(tmp_path / "table.csv", clean_data, ["TB", "HIV", "MRN"], lambda i, p: [int(p.parent.name == "tb"), i % 2, f"m{i // 2}"])
    assert main(["audit", str(clean_data), "--labels", str(tmp_path / "table.csv"), "--out", str(tmp_path / "a"),
                 "--cache-dir", str(tmp_path / "c"), "--group-pattern", r"(\w+)_"]) == 0
    out = capsys.readouterr().out
    assert "patients: --group-pattern '(\\w+)_' was not used: the label table's patient column names every image's patient" in out
    assert ("labels: multi-label, findings TB, HIV (from columns TB, HIV of table.csv); patients from column MRN; --label-column "
            "names another") in out


def test_the_report_says_how_many_images_had_no_patient_id(clean_data, tmp_path):
    # "Images were grouped by patient ID ... so no patient appears in two splits" with half the table's patient cells blank.
    files = _write_table(tmp_path / "table.csv", clean_data, ["label", "patient_id"],
                         lambda i, p: [p.parent.name, f"p{i // 4}" if i % 2 == 0 else ""])
    out = tmp_path / "run"
    assert main(["train", str(clean_data), "--labels", str(tmp_path / "table.csv"), "--out", str(out), "--image-size", "32",
                 "--epochs", "1", "--model", "mlp", "--quiet", "--cache-dir", str(tmp_path / "c")]) == 0
    html = (out / "report.html").read_text()
    assert f"<b>{len(files) // 2} of {len(files)} images have no patient ID</b> and were split one by one" in html
    val = json.loads((out / "metrics.json").read_text())["val"]  # two named films per patient, the others one by one
    assert val["intervals_by"] == "patient" and val["images_without_patient_id"] > 0
    assert (f"Intervals count the {val['n_patients']} patients ({val['images_without_patient_id']} of them images without a patient ID, "
            "each counted as its own)") in html


def test_a_class_that_looks_like_a_misspelling_is_named():
    # One row read "Nromal": a three-class task with a class of one image, and the audit said nothing.
    from cxrkit.audit.messages import label_messages

    audit = {"multilabel": False, "class_balance": {"train": {"Normal": 70, "Nromal": 1, "TB": 60}, "test": {"Normal": 20, "TB": 20}}}
    assert label_messages(audit) == ["LABELS: class 'Nromal' has 1 image(s), beside 'Normal' with 90: a misspelling? Correct the label, or "
                                     "it trains as a class of its own"]
    rare = {"multilabel": False, "class_balance": {"train": {"covid": 3, "normal": 90, "viral": 80}}}
    assert label_messages(rare) == []  # a small class of its own name is no misspelling


def test_the_audit_cache_tells_two_tables_over_the_same_images_apart(clean_data, tmp_path, capsys):
    # Same images, labels and patients under other column names: the cached result named the first table's columns.
    for name, column in (("mrn.csv", "MRN"), ("pid.csv", "PatientID")):
        _write_table(tmp_path / name, clean_data, ["label", column], lambda i, p: [p.parent.name, f"m{i // 2}"])
        assert main(["audit", str(clean_data), "--labels", str(tmp_path / name), "--out", str(tmp_path / name[:3]),
                     "--cache-dir", str(tmp_path / "c")]) == 0
        assert f"of {name}); patients from column {column}" in capsys.readouterr().out
