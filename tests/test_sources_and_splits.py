import shutil
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from cxrkit.data.sources import DatasetError, choose_positive_class, open_image_folder
from cxrkit.data.splits import assign_splits, patient_ids
from cxrkit.data.synthetic import make_synthetic_dataset


def test_split_class_layout_and_hidden_files(tmp_path):
    root = make_synthetic_dataset(tmp_path / "d", n_per_class=10, size=16, splits={"train": 0.8, "test": 0.2})
    (root / "train" / "tb" / ".DS_Store").write_text("x")
    (root / "train" / "tb" / "notes.txt").write_text("x")
    src = open_image_folder(root)
    assert src.layout == "split/class" and src.classes == ["healthy", "tb"]
    assert Counter(s.split for s in src.samples) == {"train": 16, "test": 4}
    assert [p.name for p in src.ignored_files] == ["notes.txt"]


def test_class_layout_and_zip(tmp_path):
    root = make_synthetic_dataset(tmp_path / "covid", n_per_class=6, size=16, classes=("Normal", "Covid", "Viral Pneumonia"))
    src = open_image_folder(root)
    assert src.layout == "class" and src.classes == ["Covid", "Normal", "Viral Pneumonia"] and len(src.samples) == 18
    zpath = tmp_path / "covid.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in root.rglob("*.png"):
            zf.write(p, Path("covid") / p.relative_to(root))
        zf.writestr("__MACOSX/covid/._junk.png", b"junk")
    z = open_image_folder(zpath, cache_dir=tmp_path / "cache")
    assert z.classes == src.classes and len(z.samples) == 18
    again = open_image_folder(zpath, cache_dir=tmp_path / "cache")  # extracted once, reused
    assert again.root == z.root


def test_bad_layouts_give_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        open_image_folder(tmp_path / "nope")
    (tmp_path / "one" / "normal").mkdir(parents=True)
    make_synthetic_dataset(tmp_path / "one2", n_per_class=2, size=16, classes=("normal", "x"))
    with pytest.raises(DatasetError, match="need at least 2"):
        open_image_folder(tmp_path / "one")
    mixed = make_synthetic_dataset(tmp_path / "mixed", n_per_class=4, size=16, splits={"train": 1.0})
    (mixed / "extra").mkdir()
    with pytest.raises(DatasetError, match="mixes split folders"):
        open_image_folder(mixed)
    bad_zip = tmp_path / "bad.zip"
    bad_zip.write_bytes(b"PK not really")
    with pytest.raises(DatasetError, match="not a readable zip"):
        open_image_folder(bad_zip, cache_dir=tmp_path / "c")


def test_class_folders_holding_another_level_of_the_layout_are_refused(tmp_path):
    # hospA/{normal,tb} and hospB/{normal,tb}: the classes were hospA and hospB, a hospital classifier trained without a word.
    wrapped = tmp_path / "wrapped"
    for site in ("hospA", "hospB"):
        make_synthetic_dataset(wrapped / site, n_per_class=3, size=16, classes=("normal", "tb"))
    with pytest.raises(DatasetError, match=r"hospA/, hospB/ each hold the same folders \(normal/, tb/\).*every image under hospA/ would be labelled hospA"):
        open_image_folder(wrapped)
    assert open_image_folder(wrapped / "hospA").classes == ["normal", "tb"]
    # A folder named like another class (or a split) inside a class folder: its tb images were labelled normal.
    nested = make_synthetic_dataset(tmp_path / "nested", n_per_class=3, size=16, classes=("normal", "tb"))
    shutil.copytree(nested / "tb", nested / "normal" / "tb")
    with pytest.raises(DatasetError, match=r"normal/tb is named like a class but lies inside the class folder normal/"):
        open_image_folder(nested)
    shutil.move(str(nested / "normal" / "tb"), str(nested / "normal" / "test"))
    with pytest.raises(DatasetError, match=r"normal/test is named like a split"):
        open_image_folder(nested)
    shutil.rmtree(nested / "normal" / "test")
    # Kaggle's wrapper folder (kaggle/chest_xray/{train,test}/...): the hint named "the level whose sub-folders are the
    # classes", read as chest_xray/train, which loses the test folder.
    kaggle = tmp_path / "kaggle"
    for split in ("train", "test"):
        make_synthetic_dataset(kaggle / "chest_xray" / split, n_per_class=3, size=16, classes=("NORMAL", "PNEUMONIA"))
    with pytest.raises(DatasetError, match=r"point cxrkit at .*kaggle/chest_xray, the folder that holds the split folders$"):
        open_image_folder(kaggle)
    assert open_image_folder(kaggle / "chest_xray").given_splits == ["train", "test"]
    # Kaggle's download proper nests it twice (chest_xray/chest_xray/...): given two levels up, the error named no folder.
    shutil.move(str(kaggle / "chest_xray"), str(tmp_path / "inner"))
    (kaggle / "chest_xray").mkdir()
    shutil.move(str(tmp_path / "inner"), str(kaggle / "chest_xray" / "chest_xray"))
    with pytest.raises(DatasetError, match=r"chest_xray/chest_xray repeats its parent's name.*point cxrkit at .*kaggle/chest_xray/chest_xray,"):
        open_image_folder(kaggle)
    shutil.copytree(nested / "tb", nested / "tb" / "masks")
    with pytest.raises(DatasetError, match=r"tb/masks lies inside the class folder tb/, so its masks would be read as radiographs"):
        open_image_folder(nested)
    shutil.rmtree(nested / "tb" / "masks")
    # Sites inside classes (normal/{siteA,siteB}, tb/{siteA,siteB}) are the dataset's own organisation: allowed.
    sites = tmp_path / "sites_in_classes"
    for cls in ("normal", "tb"):
        for site in ("siteA", "siteB"):
            shutil.copytree(nested / cls, sites / cls / site)
    assert Counter(smp.label for smp in open_image_folder(sites).samples) == {"normal": 6, "tb": 6}
    # Per-patient sub-folders (other names in every class) stay what they were: parts of their class.
    for cls in ("normal", "tb"):
        (nested / cls / f"patient_{cls}").mkdir()
        shutil.copy(next((nested / cls).glob("*.png")), nested / cls / f"patient_{cls}" / "x.png")
    assert Counter(smp.label for smp in open_image_folder(nested).samples) == {"normal": 4, "tb": 4}


@pytest.mark.parametrize("name", ["/abs/evil.png", "../../evil.png", "tb/../../evil.png", "C:/x/evil.png", "..\\evil.png"])
def test_zip_members_with_absolute_or_climbing_paths_are_refused(name, tmp_path):
    # zipfile strips them and extracts inside the cache: '/abs/evil.png' became a third class 'abs', 'tb/../../x.png' a tb image.
    src = make_synthetic_dataset(tmp_path / "d", n_per_class=2, size=16)
    archive = tmp_path / "d.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(src.rglob("*.png")):
            zf.write(f, f.relative_to(src).as_posix())
        zf.writestr(name, (next(src.rglob("*.png"))).read_bytes())
    with pytest.raises(DatasetError, match="paths that are absolute or climb out with '..' are not a dataset's files"):
        open_image_folder(archive, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache" / "zips").iterdir())  # nothing left half-extracted


def test_zip_names_that_would_not_come_out_as_written_are_refused(tmp_path):
    import warnings

    src = make_synthetic_dataset(tmp_path / "d", n_per_class=2, size=16)
    files = sorted(src.rglob("*.png"))
    twice = tmp_path / "twice.zip"
    with warnings.catch_warnings(), zipfile.ZipFile(twice, "w") as zf:
        warnings.simplefilter("ignore")  # zipfile's "Duplicate name" warning
        for f in files:
            zf.write(f, f.relative_to(src).as_posix())
        zf.write(files[0], files[-1].relative_to(src).as_posix())  # a healthy image under a tb image's name: one was kept
    with pytest.raises(DatasetError, match=f"holds '{files[-1].relative_to(src).as_posix()}' twice"):
        open_image_folder(twice, cache_dir=tmp_path / "cache")
    # A Latin-1 name without the UTF-8 flag: zipfile reads it as cp437, and 'tuberculos\xe9' became a class 'tuberculosΘ'.
    latin = tmp_path / "latin.zip"
    with zipfile.ZipFile(latin, "w") as zf:
        for f in files:
            zf.write(f, f.relative_to(src).as_posix().replace("tb/", "tuberculosX/"))
    latin.write_bytes(latin.read_bytes().replace(b"tuberculosX/", b"tuberculos\xe9/"))
    with pytest.raises(DatasetError, match=r"names \d+ file\(s\) in an unstated encoding \(e.g. 'tuberculos"):
        open_image_folder(latin, cache_dir=tmp_path / "cache")


def test_zips_that_cannot_be_extracted_are_refused_before_writing(tmp_path, monkeypatch):
    root = make_synthetic_dataset(tmp_path / "d", n_per_class=3, size=16)
    locked = tmp_path / "locked.zip"
    with zipfile.ZipFile(locked, "w") as zf:
        for p in sorted(root.rglob("*.png")):
            zf.write(p, p.relative_to(root))
    # Mark every member encrypted (bit 0 of the flags in local and central headers), as `zip -P` does:
    # extracting it asked for a password and was an "unexpected RuntimeError".
    raw = bytearray(locked.read_bytes())
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = raw.find(signature)
        while at >= 0:
            raw[at + flags_at] |= 0x1
            at = raw.find(signature, at + 4)
    locked.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=r"password-protected \(6 file"):
        open_image_folder(locked, cache_dir=tmp_path / "c")
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as zf:
        for p in sorted(root.rglob("*.png")):
            zf.write(p, p.relative_to(root))
    total = sum(p.stat().st_size for p in root.rglob("*.png"))
    monkeypatch.setattr("cxrkit.data.sources.shutil.disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - total + 1, total - 1))
    with pytest.raises(DatasetError, match="uncompressed but the cache .* free"):
        open_image_folder(plain, cache_dir=tmp_path / "c")
    assert not list((tmp_path / "c" / "zips").iterdir())  # nothing half-extracted left in the cache
    monkeypatch.undo()
    assert len(open_image_folder(plain, cache_dir=tmp_path / "c").samples) == 6


@pytest.mark.parametrize(
    "classes, given, expected",
    [
        (["healthy", "tb"], None, "tb"),
        (["NORMAL", "PNEUMONIA"], None, "PNEUMONIA"),
        (["0_normal", "1_abnormal"], None, "1_abnormal"),
        (["No Finding", "Effusion"], None, "Effusion"),
        (["cat", "dog"], None, "dog"),
        (["healthy", "tb"], "HEALTHY", "healthy"),
    ],
)
def test_positive_class(classes, given, expected):
    assert choose_positive_class(classes, given) == expected


def test_positive_class_must_exist():
    with pytest.raises(DatasetError, match="not a class"):
        choose_positive_class(["healthy", "tb"], "covid")


def _samples(tmp_path, n_per_class=40, splits=None, classes=("healthy", "tb")):
    root = make_synthetic_dataset(tmp_path / "s", n_per_class=n_per_class, size=16, splits=splits, classes=classes)
    return open_image_folder(root)


def test_unsplit_data_is_cut_70_15_15_stratified_and_seeded(tmp_path):
    src = _samples(tmp_path, n_per_class=100)
    a = assign_splits(src.samples, src.classes, 0.15, 0.15, seed=3)
    b = assign_splits(src.samples, src.classes, 0.15, 0.15, seed=3)
    c = assign_splits(src.samples, src.classes, 0.15, 0.15, seed=4)
    assert a == b and a != c
    counts = Counter(zip(a, (s.label for s in src.samples)))
    assert counts[("test", "tb")] == counts[("test", "healthy")] == 15
    assert counts[("val", "tb")] == counts[("val", "healthy")] == 15
    assert counts[("train", "tb")] == 70


def test_given_test_split_is_never_touched_and_val_comes_from_train(tmp_path):
    src = _samples(tmp_path, n_per_class=40, splits={"train": 0.75, "test": 0.25})
    splits = assign_splits(src.samples, src.classes, 0.2, 0.15, seed=0)
    for s, sp in zip(src.samples, splits):
        if s.split == "test":
            assert sp == "test"
        else:
            assert sp in ("train", "val")
    assert Counter(splits) == {"train": 48, "val": 12, "test": 20}


def test_patient_groups_never_straddle_splits(tmp_path):
    src = _samples(tmp_path, n_per_class=60)
    # Fake patient IDs: three consecutive images per patient, parsed from the file name.
    ids = patient_ids(src.samples, r"_(\d+)\.png")
    groups = [f"{s.label}-{int(i) // 3}" for s, i in zip(src.samples, ids)]
    splits = assign_splits(src.samples, src.classes, 0.15, 0.15, seed=0, groups=groups)
    by_patient = {}
    for g, sp in zip(groups, splits):
        by_patient.setdefault(g, set()).add(sp)
    assert all(len(v) == 1 for v in by_patient.values())
    assert set(splits) == {"train", "val", "test"}


def test_fractions_are_validated(tmp_path):
    src = _samples(tmp_path, n_per_class=5)
    with pytest.raises(ValueError):
        assign_splits(src.samples, src.classes, 0.6, 0.5)


def test_split_seed_fixes_the_split_while_seed_changes_the_training(tmp_path):
    import numpy as np

    from cxrkit.config import ConfigError, TrainConfig
    from cxrkit.data.dataset import load_dataset
    from cxrkit.run import Run, load_run_dataset
    from cxrkit.training import train

    data = make_synthetic_dataset(tmp_path / "d", n_per_class=30, size=24, seed=5)  # unsplit: cxrkit cuts the splits

    def split(seed: int) -> list[str]:
        return [str(s) for s in load_dataset(data, 24, seed=seed, progress=False).splits]

    assert split(0) != split(1)
    runs = {}
    for name, seed, split_seed in (("a", 0, None), ("b", 1, 0), ("c", 1, None)):
        cfg = TrainConfig(data=str(data), out=str(tmp_path / name), model="cnn", image_size=24, epochs=1, batch_size=16,
                          seed=seed, split_seed=split_seed, precision="32", ema_epochs=None, tta=False)
        train(cfg, progress=False)
        run = Run.load(tmp_path / name)
        ds, _ = load_run_dataset(run, progress=False)  # evaluation must cut the split the run was trained on
        runs[name] = ([str(s) for s in ds.splits], run.predict_arrays(np.asarray(ds.images[:8]))[:, 1])
    assert runs["a"][0] == runs["b"][0] == split(0) and runs["c"][0] == split(1)
    assert not np.allclose(runs["a"][1], runs["b"][1])  # same split, other training randomness
    assert TrainConfig.load_saved(tmp_path / "b" / "config.yaml").data_split_seed == 0
    with pytest.raises(ConfigError, match="split_seed"):
        TrainConfig.from_dict({"data": "d", "split_seed": "zero"})


def test_too_few_images_to_hold_every_class_out_is_a_clear_error(tmp_path):
    # 3 images per class: a 15% test cut is 1 image, which cannot hold both classes (was scikit-learn's
    # "The test_size = 1 should be greater or equal to the number of classes = 2").
    src = open_image_folder(make_synthetic_dataset(tmp_path / "d", n_per_class=3, size=16))
    with pytest.raises(ValueError, match="only 6 images: a held-out split of 1 cannot hold each of the 2 classes"):
        assign_splits(src.samples, src.classes)


def test_linked_sub_folders_are_read_loops_are_not_and_a_file_reached_twice_is_refused(tmp_path):
    root = make_synthetic_dataset(tmp_path / "d", n_per_class=4, size=16)
    more = make_synthetic_dataset(tmp_path / "more", n_per_class=3, size=16, classes=("tb", "x"))
    (root / "tb" / "more").symlink_to(more / "tb")  # a linked sub-folder: its 3 images were silently left out
    (root / "tb" / "loop").symlink_to(root / "tb")  # a loop: its files are the folder's own
    src = open_image_folder(root)
    assert Counter(s.label for s in src.samples) == {"healthy": 4, "tb": 7}
    (root / "tb2").symlink_to(root / "tb")  # the same images as a second class
    with pytest.raises(DatasetError, match=r"tb/tb_0000.png and .*tb2/tb_0000.png are the same file \(reached through a link\)"):
        open_image_folder(root)


def test_a_folder_that_cannot_be_read_is_an_error_not_left_out(tmp_path, monkeypatch):
    import os

    root = make_synthetic_dataset(tmp_path / "d", n_per_class=4, size=16, classes=("covid", "healthy", "tb"))
    real_scandir = os.scandir

    def scandir(path):  # what chmod 000 does for a user other than root (the tests may run as root)
        if Path(path).name == "covid":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr("cxrkit.data.sources.os.scandir", scandir)
    # The whole covid class was left out without a word: a two-class model from a three-class dataset.
    with pytest.raises(DatasetError, match=r"the folder .*covid cannot be read \(Permission denied\), so its images would be left out"):
        open_image_folder(root)


@pytest.mark.parametrize("names, says", [
    (("Normal", "normal", "tb"), "'Normal' and 'normal' differ only in case"),
    (("tb", "tb ", "normal"), "'tb' and 'tb ' differ only in spaces around them"),
    (("Viral Pneumonia", "viral_pneumonia", "normal"), "'Viral Pneumonia' and 'viral_pneumonia' differ only in case or in the spaces, '_' or '-' between words"),
    (("e\u0301panchement", "\xe9panchement", "normal"),
     r"are one name written in two Unicode forms \('e\\u0301panchement' and '\\xe9panchement', e.g. from a Mac and from Linux\)"),
])
def test_class_folders_that_differ_only_in_case_spaces_or_unicode_form_are_refused(tmp_path, names, says):
    # They were two classes of one finding, each with half its images.
    root = make_synthetic_dataset(tmp_path / "d", n_per_class=3, size=16, classes=names)
    with pytest.raises(DatasetError, match=f"class folders {says}, so they would be two classes"):
        open_image_folder(root)
    split = make_synthetic_dataset(tmp_path / "s", n_per_class=4, size=16, classes=names[1:], splits={"train": 1.0})
    shutil.copytree(split / "train" / names[1], split / "test" / names[0])  # train/normal, test/Normal
    shutil.copytree(split / "train" / names[2], split / "test" / names[2])
    with pytest.raises(DatasetError, match="differ only in|two Unicode forms"):
        open_image_folder(split)


def test_a_file_name_that_is_not_utf8_is_refused_when_the_data_are_read(tmp_path):
    import os

    import numpy as np

    from cxrkit.data.dataset import load_dataset

    root = make_synthetic_dataset(tmp_path / "d", n_per_class=4, size=16)
    shutil.copy(root / "tb" / "tb_0000.png", os.fsencode(root / "tb") + b"/caf\xe9.png")
    # Training ran to the end and then failed writing splits.csv with "'utf-8' codec can't encode character '\udce9' ...".
    with pytest.raises(DatasetError, match=r"the name b'tb/caf\\xe9.png' is not UTF-8 text .* rename it"):
        open_image_folder(root)
    # A dataset (or table, or .npz) in such a folder failed in the cache's key, before any image was read, the same way.
    latin = Path(os.fsdecode(os.fsencode(tmp_path) + b"/donn\xe9es"))
    shutil.copytree(root, latin / "d")
    (latin / "d" / "tb" / os.fsdecode(b"caf\xe9.png")).unlink()
    with pytest.raises(DatasetError, match=r"the name b'.*/donn\\xe9es/d' is not UTF-8 text"):
        open_image_folder(latin / "d")
    (latin / "t.csv").write_text("path,label\nd/tb/tb_0000.png,tb\nd/healthy/healthy_0000.png,healthy\n")
    with pytest.raises(DatasetError, match=r"the name b'.*/donn\\xe9es' is not UTF-8 text"):
        load_dataset(latin, 16, labels=latin / "t.csv", progress=False)
    np.savez(latin / "x.npz", train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.array([[0], [1]]))
    with pytest.raises(DatasetError, match=r"the name b'.*/donn\\xe9es/x.npz' is not UTF-8 text"):
        load_dataset(latin / "x.npz", 16, progress=False)


def test_a_group_pattern_group_left_out_of_a_match_is_not_one_shared_patient(tmp_path):
    from cxrkit.data.sources import Sample
    from cxrkit.data.splits import ids_in_several_splits

    samples = [Sample(Path(f"tb/{n}"), "tb") for n in ("patient1_a.png", "patient1_b.png", "scan_7.png", "scan_8.png", "other.png")]
    # The second alternative's files had the first group's None as their ID: one patient, and sorting the IDs then failed
    # with "'<' not supported between instances of 'NoneType' and 'str'" (a bug in cxrkit).
    assert patient_ids(samples, r"patient(\d+)|scan_(\d+)")[:4] == ["1", "1", "7", "8"]
    ids = patient_ids(samples, r"(?:patient(\d+))?")  # an empty match is no ID: every such file was the patient ''
    assert ids[:2] == ["1", "1"] and len(set(ids[2:])) == 3 and all(i.startswith("__file__:") for i in ids[2:])
    assert ids_in_several_splits([s.path.name for s in samples], ["train", "test", "train", "test", "val"], r"patient(\d+)|scan_(\d+)") == (1, "1")


def test_a_zip_written_with_windows_separators_has_its_folders(tmp_path):
    root = make_synthetic_dataset(tmp_path / "d", n_per_class=4, size=16)
    zpath = tmp_path / "win.zip"
    with zipfile.ZipFile(zpath, "w") as zf:  # as PowerShell 5's Compress-Archive writes them: 'healthy\healthy_0000.png'
        for p in sorted(root.rglob("*.png")):
            zf.write(p, str(p.relative_to(root)).replace("/", "\\"))
    # Extracted as 8 files named 'healthy\healthy_0000.png' at the top: "<cache folder> has no sub-folders".
    src = open_image_folder(zpath, cache_dir=tmp_path / "c")
    assert src.classes == ["healthy", "tb"] and src.relpath(src.samples[0].path) == "healthy/healthy_0000.png"


def test_an_external_set_of_a_test_folder_alone_can_be_evaluated(tmp_path):
    from cxrkit.data.dataset import load_dataset

    ext = make_synthetic_dataset(tmp_path / "ext", n_per_class=4, size=16, splits={"test": 1.0})
    with pytest.raises(DatasetError, match="has split folders but no train/ folder"):  # training needs one
        open_image_folder(ext)
    # Evaluating a model needs none: `cxrkit evaluate RUN EXT` was refused the same way.
    ds = load_dataset(ext, 16, class_names=["healthy", "tb"], progress=False)
    assert ds.image_counts() == {"test": 8} and ds.counts()["test"] == {"healthy": 4, "tb": 4}


def test_a_class_folder_of_images_in_formats_cxrkit_does_not_read_is_refused(tmp_path):
    root = make_synthetic_dataset(tmp_path / "d", n_per_class=4, size=16, classes=("covid", "healthy", "tb"))
    for p in (root / "covid").iterdir():
        p.rename(p.with_suffix(".webp"))
    # The class vanished: a two-class model trained from a three-class dataset, said only in the report's
    # "4 non-image files in the class folders were ignored".
    with pytest.raises(DatasetError, match=r"the class folder .*covid holds 4 image\(s\) in a format cxrkit does not read \(e.g. covid_0000.webp\)"):
        open_image_folder(root)
    (root / "covid" / "covid_0000.webp").rename(root / "covid" / "covid_0000.png")
    assert open_image_folder(root).classes == ["covid", "healthy", "tb"]  # with one image it reads, the rest are counted as ignored
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("x")  # a folder of other files is no class, as before
    assert open_image_folder(root).classes == ["covid", "healthy", "tb"]


def test_a_small_class_cut_by_patient_prints_no_scikit_learn_warning(tmp_path):
    import warnings

    src = open_image_folder(make_synthetic_dataset(tmp_path / "d", n_per_class=20, size=16, classes=("a", "b", "c")))
    samples = [s for s in src.samples if s.label != "c"] + [s for s in src.samples if s.label == "c"][:3]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = assign_splits(samples, ["a", "b", "c"], groups=[f"p{i}" for i in range(len(samples))])
    assert len(splits) == 43 and not [w for w in caught if "least populated" in str(w.message)]


def test_images_outside_any_class_folder_are_listed_as_unlabelled(tmp_path):
    # They were left out and counted nowhere; train now names them.
    from types import SimpleNamespace

    from cxrkit.training.trainer import _note_dataset_findings

    root = make_synthetic_dataset(tmp_path / "d", n_per_class=10, size=16, splits={"train": 0.8, "test": 0.2})
    png = next((root / "train" / "tb").glob("*.png")).read_bytes()
    (root / "stray.png").write_bytes(png)
    (root / "train" / "also.png").write_bytes(png)
    (root / "README.md").write_text("not an image")
    src = open_image_folder(root)
    assert [p.name for p in src.unlabelled_images] == ["stray.png", "also.png"] and len(src.samples) == 20
    said: list[str] = []
    _note_dataset_findings(SimpleNamespace(source=src, skipped=list), said.append)
    assert said == [f"note: 2 image(s) outside any class folder were left out, having no label (e.g. {root / 'stray.png'}); "
                    "move each into its class folder to use it"]


def test_too_few_groups_names_copies_as_well_as_patients():
    import numpy as np

    from cxrkit.data.splits import _cut

    idx, labels = np.arange(80), np.repeat([0, 1], 40)
    # 80 byte-identical images are one group of copies: the error said "only 1 patients" though no IDs were given
    with pytest.raises(ValueError, match=r"only 1 patient\(s\) or group\(s\) of identical copies among 80 images"):
        _cut(idx, labels, np.zeros(80, dtype=int).astype(str), 12, seed=0)


def test_patient_ids_of_digits_are_one_patient_whatever_their_leading_zeros(tmp_path):
    # A spreadsheet wrote half a table's IDs as 13 and half as 00000013: two patients, 9 of them in two splits.
    from cxrkit.data.sources import Sample

    table = [Sample(Path("a.png"), "tb", patient="00000013"), Sample(Path("b.png"), "tb", patient="13"),
             Sample(Path("c.png"), "tb", patient="0"), Sample(Path("d.png"), "tb", patient="000"), Sample(Path("e.png"), "tb", patient="P013")]
    assert patient_ids(table, None) == ["13", "13", "0", "0", "P013"]
    names = [Sample(Path(n), "tb") for n in ("00000013_000.png", "13_001.png", "014_000.png")]
    assert patient_ids(names, r"^(\d+)_") == ["13", "13", "14"]
