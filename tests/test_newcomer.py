"""What a first-time user reads: next steps that work, figures that agree, errors that say what to type."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from cxrkit.cli import main
from cxrkit.data.synthetic import make_synthetic_dataset


@pytest.fixture(scope="module")
def no_test_split_training(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A dataset that gives train/ and val/ but no test/ (like a MedMNIST file), trained for one epoch; its stdout."""
    data = make_synthetic_dataset(tmp_path_factory.mktemp("trainval"), n_per_class=24, size=32, seed=3,
                                  splits={"train": 0.7, "val": 0.3})
    out = tmp_path_factory.mktemp("runs") / "nt"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        status = main(["train", str(data), "--out", str(out), "--model", "cnn", "--image-size", "16", "--epochs", "1",
                       "--batch-size", "16"])
    assert status == 0
    return data, out, buf.getvalue()


def test_train_without_test_split_does_not_suggest_a_failing_command(no_test_split_training, capsys):
    data, out, text = no_test_split_training
    assert "--split test" not in text
    assert f"{data} has no test split (only train, val)" in text
    assert f"cxrkit train {data} --resplit" in text
    # the command that was suggested before really fails on such data
    assert main(["evaluate", str(out), str(data), "--split", "test", "--quiet"]) == 2
    assert "split 'test' has no images" in capsys.readouterr().err



def test_multiclass_run_is_not_said_to_have_a_validation_threshold(capsys):
    from types import SimpleNamespace

    from cxrkit.cli import _next_step_after_training

    meta = SimpleNamespace(training={"keep": "last"}, threshold=None, thresholds=None,
                           data={"counts": {"train": {}, "val": {}, "test": {}}})
    _next_step_after_training(Path("runs/covid"), "covid_data", meta)
    text = capsys.readouterr().out
    assert "chose the threshold" not in text
    assert text.startswith("validation figures are not a test result; for an unbiased estimate run:")
    assert "cxrkit evaluate runs/covid covid_data --split test" in text


def test_train_says_the_epoch_auc_is_one_view_when_the_summary_averages_views(no_test_split_training):
    _, _, text = no_test_split_training
    kept = next(line for line in text.splitlines() if line.startswith("trained "))
    assert "one view per image, the figures below average 10 test-time views" in kept


def test_predict_never_shows_a_probability_below_the_threshold_as_equal_to_it(tiny_run, binary_data, monkeypatch, capsys):
    import cxrkit
    from cxrkit.run import Run

    run = cxrkit.load(tiny_run)
    for image in sorted((binary_data / "test" / "tb").glob("*.png")):  # one whose P(tb) is not next to a rounding step
        p = run.predict(str(image)).probabilities["tb"]
        threshold = p + 0.00004
        if f"{threshold:.3f}" == f"{p:.3f}":
            break
    assert f"{threshold:.3f}" == f"{p:.3f}" and threshold > p
    monkeypatch.setattr(Run, "threshold", property(lambda self: threshold))
    assert main(["predict", str(tiny_run), str(image)]) == 0
    line = capsys.readouterr().out.strip()
    assert ": healthy  (P(tb) = " in line
    shown_p, shown_t = line.split("P(tb) = ")[1].split("; called tb when >= ")
    shown_t = shown_t.split(",")[0]
    assert shown_p != shown_t and float(shown_p) < float(shown_t)


def test_served_decision_words_never_show_a_probability_below_the_threshold_as_equal():
    from types import SimpleNamespace

    import numpy as np

    from cxrkit.serve.app import Service

    fake = SimpleNamespace(run=SimpleNamespace(task="binary", classes=["healthy", "tb"], record=SimpleNamespace(referral=None)),
                           rule={"threshold": 0.5062486})
    words = Service._words(fake, np.array([0.493756, 0.506244]), "healthy")
    assert words == "healthy: the probability of tb (0.50624) is below the threshold 0.50625"
    assert Service._words(fake, np.array([0.2, 0.8]), "tb") == "tb: the probability of tb (0.800) is at or above the threshold 0.506"


@pytest.mark.parametrize("argv, usage, hint", [
    (["train", "data", "--image-szie", "64"], "usage: cxrkit train", "did you mean --image-size?"),
    (["predict", "run", "x.png", "--jsn"], "usage: cxrkit predict", "did you mean --json?"),
    (["train", "data", "--image-szie", "64", "--ephocs", "2"], "usage: cxrkit train",
     "did you mean --image-size for --image-szie, --epochs for --ephocs?"),
])
def test_a_mistyped_option_gets_its_command_usage_and_the_closest_name(argv, usage, hint, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage)
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"cxrkit {argv[0]}: error: unrecognized arguments: ") and last.endswith(hint)


def test_multilabel_summary_gives_counts_for_best_and_worst_and_prints_the_table_it_mentions(tmp_path, capsys):
    import json

    import numpy as np

    from cxrkit.cli import _summary
    from cxrkit.metrics.classification import multilabel_metrics

    rng = np.random.default_rng(0)
    y = np.zeros((80, 3), dtype=int)
    y[:30, 0] = 1  # Effusion: 30 images
    y[30:50, 1] = 1  # Nodule: 20 images
    y[50, 2] = 1  # Hernia: a single image, whose AUC is noise
    probs = np.clip(0.2 * y + rng.uniform(0, 0.6, y.shape), 0, 1)
    probs[50, 2] = 0.99
    m = multilabel_metrics(y, probs, ["Effusion", "Nodule", "Hernia"], np.full(3, 0.5), n_bootstrap=50)
    m.update(task="multilabel", classes=["Effusion", "Nodule", "Hernia"])
    (tmp_path / "metrics.json").write_text(json.dumps({"test": m}, default=float))
    _summary(tmp_path, "test")
    out = capsys.readouterr().out
    # Hernia, seen on one image, "led" with 1.000; it is left out of the mean, the best and the worst, and named as such
    assert "best Nodule 0.890 (20 images with it), worst Effusion 0.727 (30 images with it)" in out
    assert "Left out, seen on too few images for a figure to mean much: Hernia." in out
    assert "the table below gives these detection rates per finding" in out
    table = out[out.index("the table below"):].splitlines()[1:]
    assert table[1].split()[:2] == ["finding", "with"]
    rows = {line.split()[0]: line.split() for line in table[2:] if line.strip()}
    assert rows["Effusion"][1] == "30" and rows["Nodule"][1] == "20" and rows["Hernia"][1:4] == ["1", "1.000", "(no"]


def test_patient_ids_are_recognised_in_file_names_without_false_alarms():
    from cxrkit.data.splits import guess_patient_pattern

    kermany = [f"person{i // 3}_{'bacteria' if i % 2 else 'virus'}_{1000 + i}.jpeg" for i in range(300)]
    kermany += [f"IM-{i // 2:04d}-0001.jpeg" for i in range(100)] + [f"NORMAL2-IM-{i:04d}-0001.jpeg" for i in range(100)]
    assert guess_patient_pattern(kermany) == r"(person\d+|IM-\d+)"
    assert guess_patient_pattern([f"{i // 4:08d}_{i % 4:03d}.png" for i in range(200)]) == r"(^\d+(?=_))"  # NIH
    assert guess_patient_pattern([f"aug0_CHNCXR_{i:04d}_{i % 2}.png" for i in range(200)]) is None  # one ID per image
    assert guess_patient_pattern([f"h{i:03d}.jpg" for i in range(200)]) is None
    assert guess_patient_pattern([f"{i:02d}.jpeg" for i in range(90)] * 2) is None  # covid: a number per class folder
    # a counter that restarts in every class folder: the same number in normal/ and tb/ is two people
    counters = [f"image_{i:03d}.png" for i in range(150)] + [f"image_{i:03d}.png" for i in range(120)]
    labels = ["normal"] * 150 + ["tb"] * 120
    assert guess_patient_pattern(counters) == r"(image_\d+)"  # without the classes it looks like 120 patients
    assert guess_patient_pattern(counters, labels) is None
    # real patient IDs keep a patient's images in one class, so the classes confirm them
    kermany_labels = ["pneumonia"] * 300 + ["normal"] * 200
    assert guess_patient_pattern(kermany, kermany_labels) == r"(person\d+|IM-\d+)"
    # a few patients with images in both classes (follow-up after treatment) do not hide the rest
    mixed = [f"patient{i // 2}_{i % 2}.png" for i in range(200)]
    assert guess_patient_pattern(mixed, ["tb" if i < 100 or i % 20 == 1 else "normal" for i in range(200)]) == r"(patient\d+)"


def test_training_warns_when_image_level_splits_scatter_patients_named_in_files(tmp_path):
    from cxrkit.data.dataset import load_dataset
    from cxrkit.training.trainer import _warn_about_patient_ids_in_names

    data = make_synthetic_dataset(tmp_path / "kids", n_per_class=40, size=16, seed=2, classes=("NORMAL", "PNEUMONIA"))
    for offset, c in ((0, "NORMAL"), (100, "PNEUMONIA")):
        for i, f in enumerate(sorted((data / c).glob("*.png")), start=offset):
            f.rename(f.with_name(f"person{i // 4}_{'virus' if i % 2 else 'bacteria'}_{i}.png"))
    ds = load_dataset(data, 16, progress=False)
    said: list[str] = []
    _warn_about_patient_ids_in_names(ds, said.append)
    assert len(said) == 1
    assert "file names look like they carry patient IDs" in said[0]
    assert "add --group-pattern '(person\\d+)' so each patient stays in one split" in said[0]
    grouped = load_dataset(data, 16, progress=False, group_pattern=r"(person\d+)")
    said.clear()
    _warn_about_patient_ids_in_names(grouped, said.append)
    assert said == []  # grouped by patient: no patient spans two splits any more


def test_a_counter_restarting_in_each_class_folder_is_not_taken_for_patient_ids(tmp_path, capsys):
    from cxrkit.data.dataset import load_dataset
    from cxrkit.training.trainer import _warn_about_patient_ids_in_names

    data = make_synthetic_dataset(tmp_path / "counted", n_per_class=40, size=16, seed=2, classes=("normal", "tb"))
    for c in ("normal", "tb"):
        for i, f in enumerate(sorted((data / c).glob("*.png"))):
            f.rename(f.with_name(f"img_{i}.png"))  # normal/img_0.png ... and tb/img_0.png ...
    said: list[str] = []
    _warn_about_patient_ids_in_names(load_dataset(data, 16, progress=False), said.append)
    assert said == []
    assert main(["audit", str(data), "--out", str(tmp_path / "a")]) == 0
    assert "patient IDs" not in capsys.readouterr().out


def test_audit_warns_about_patient_ids_in_file_names_until_a_group_pattern_is_given(tmp_path, capsys):
    data = make_synthetic_dataset(tmp_path / "kids", n_per_class=40, size=16, seed=2, classes=("NORMAL", "PNEUMONIA"))
    for offset, c in ((0, "NORMAL"), (100, "PNEUMONIA")):
        for i, f in enumerate(sorted((data / c).glob("*.png")), start=offset):
            f.rename(f.with_name(f"person{i // 4}_{'virus' if i % 2 else 'bacteria'}_{i}.png"))
    assert main(["audit", str(data), "--out", str(tmp_path / "a1")]) == 0
    out = capsys.readouterr().out
    assert "POSSIBLE LEAKAGE: the file names look like they carry patient IDs" in out
    assert "add --group-pattern '(person\\d+)'" in out
    assert main(["audit", str(data), "--out", str(tmp_path / "a2"), "--group-pattern", r"(person\d+)"]) == 0
    assert "POSSIBLE LEAKAGE" not in capsys.readouterr().out


def test_a_first_audit_says_it_read_the_files_and_a_second_that_it_used_the_cache(tmp_path, capsys):
    data = make_synthetic_dataset(tmp_path / "d", n_per_class=10, size=16, seed=4)
    assert main(["audit", str(data), "--out", str(tmp_path / "a")]) == 0
    first = capsys.readouterr().out
    assert "20 files audited in " in first and "(20 read, 0 from the cache)" in first
    assert main(["audit", str(data), "--out", str(tmp_path / "a")]) == 0
    assert "(0 read, 20 from the cache)" in capsys.readouterr().out


def test_multiclass_sentence_for_a_class_the_model_never_predicts():
    import numpy as np

    from cxrkit.metrics.classification import multiclass_metrics
    from cxrkit.report.narrative import multiclass_sentences

    y = np.array([0] * 10 + [1] * 10 + [2] * 10)
    probs = np.full((30, 3), 0.1)
    probs[np.arange(30), np.where(y == 0, 1, y)] = 0.8  # Covid images are all called Normal: Covid is never predicted
    m = multiclass_metrics(y, probs, ["Covid", "Normal", "Viral Pneumonia"])
    text = multiclass_sentences(m, "validation")
    assert text[0].endswith("(sensitivity 0.0%, 95% CI 0.0–27.8%); it never says Covid.")
    assert "n/a of the time" not in " ".join(text)
    assert "when it says Normal it is right 50.0% of the time" in text[1]


def test_a_folder_with_one_class_says_what_training_needs_and_what_it_can_do(tmp_path, capsys):
    data = make_synthetic_dataset(tmp_path / "d", n_per_class=4, size=16, classes=("normal", "tb"))
    for f in (data / "normal").iterdir():
        f.unlink()
    assert main(["train", str(data), "--out", str(tmp_path / "run"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {data}: only one class folder has images (tb/); to train you need at least 2, one folder per class "
                   f"beside it (e.g. normal/ and tb/); a one-class folder can be evaluated: `cxrkit evaluate RUN {data}`")


def test_auc_interval_prints_as_plain_numbers_like_the_readme_shows():
    import numpy as np

    from cxrkit.metrics.intervals import delong_interval

    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    auc, ci = delong_interval(y, np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9]))
    assert all(type(x) is float for x in ci) and ci[0] < auc <= ci[1]
    assert "np." not in repr({"value": auc, "ci": list(ci)})


def test_predicting_a_folder_finds_images_without_an_extension_as_a_single_file_does(tiny_run, binary_data, tmp_path, capsys):
    png = sorted((binary_data / "test" / "tb").glob("*.png"))[0].read_bytes()
    folder = tmp_path / "pacs"
    folder.mkdir()
    (folder / "IM0001").write_bytes(png)  # how PACS exports often name files
    (folder / "1.2.840.113619.2.55.3").write_bytes(png)  # named by UID
    (folder / "notes.txt").write_text("not an image")
    (folder / "README").write_text("no extension, not an image")
    assert main(["predict", str(tiny_run), str(folder), "--json"]) == 0
    import json

    found = sorted(Path(r["path"]).name for r in json.loads(capsys.readouterr().out)["results"])
    assert found == ["1.2.840.113619.2.55.3", "IM0001"]
    empty = tmp_path / "texts"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    assert main(["predict", str(tiny_run), str(empty)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"or images without an extension) under {empty}; it holds 1 other file(s), e.g. notes.txt")


def test_compare_says_when_the_split_cannot_tell_the_models_apart():
    from cxrkit.experiments.compare import _indistinguishable_note

    best = {"model": "pasa", "roc_auc": 0.70, "auc_difference_vs_best": 0.0}
    cnn = {"model": "cnn", "roc_auc": 0.50, "auc_difference_vs_best": -0.20, "paired_p_vs_best": 0.444}
    note = _indistinguishable_note([cnn, best], best, 12)
    assert note == ("the 12 images of this split cannot tell the models apart: no ROC-AUC differs significantly from pasa's "
                    "(smallest paired p = 0.44, although the gap reaches 0.200), so the ranking may be noise; a larger split "
                    "(--val-fraction) or more data is needed to choose")
    assert _indistinguishable_note([{**cnn, "paired_p_vs_best": 0.001}, best], best, 500) is None
    assert _indistinguishable_note([best], best, 12) is None


def test_repeating_train_without_resume_keeps_an_unfinished_runs_checkpoint_and_says_resume(tmp_path):
    from cxrkit.training.checkpoint import find_checkpoint
    from cxrkit.training.trainer import prepare_run_folder

    out = tmp_path / "killed"
    (out / "checkpoint").mkdir(parents=True)
    for name in ("state.json", "tensors.safetensors", "optimizer.pt"):  # what a run killed after an epoch leaves
        (out / "checkpoint" / name).write_bytes(b"x")
    (out / "model.safetensors").write_bytes(b"x")
    with pytest.raises(FileExistsError) as exc:
        prepare_run_folder(out, overwrite=False)
    assert str(exc.value) == (f"{out} already holds a run; it stopped before finishing: add --resume to continue it, "
                              "choose another --out or pass --overwrite")
    assert find_checkpoint(out) is not None  # --resume can still continue it
    for meta, finished in (({"complete": True}, True), ({"complete": False}, False), ({"task": "multiclass"}, True),
                           ({"task": "binary", "threshold": {"value": 0.4}}, True), ({"task": "binary", "threshold": None}, False)):
        (out / "meta.json").write_text(json.dumps(meta))  # a finished run keeps its checkpoint too: it was told to --resume
        with pytest.raises(FileExistsError, match="stopped before finishing" if not finished else r"holds a run; choose another"):
            prepare_run_folder(out, overwrite=False)
    prepare_run_folder(out, overwrite=True)
    assert find_checkpoint(out) is None and not (out / "model.safetensors").exists()


def test_a_shortcut_warning_says_how_to_check_the_trained_model():
    from cxrkit.audit.messages import audit_messages

    audit = {"verdict": {"leakage_reasons": [], "conflicting_labels": 0}, "split_shift": [], "corrupt": [],
             "duplicates": {"exact": {"redundant_files": 0}, "near": {"redundant_files": 0}},
             "shortcut_probe": {"warning": True, "auc": 0.95, "threshold": 0.75,
                                "giveaways": [{"feature": "border std", "auc": 0.88, "direction": "lower", "class": "Covid"}]}}
    (message,) = audit_messages(audit)
    assert message.startswith("SHORTCUT: a classifier that never sees anatomy separates the classes with cross-validated AUC 0.95")
    assert message.endswith("A model can learn these instead of the disease: after training, `cxrkit stress RUN` (binary runs) "
                            "and the report's \"where does it look\" show whether yours did")


def test_patients_across_the_datas_own_splits_get_advice_that_can_fix_them(tmp_path, capsys):
    import shutil

    flat = make_synthetic_dataset(tmp_path / "flat", n_per_class=40, size=16, seed=2, classes=("NORMAL", "PNEUMONIA"))
    data = tmp_path / "kids"
    for offset, c in ((0, "NORMAL"), (100, "PNEUMONIA")):
        for i, f in enumerate(sorted((flat / c).glob("*.png")), start=offset):
            split = "val" if i % 4 == 3 and i < offset + 8 else "train"  # person0 and person1 (or 25, 26) in train and val
            (data / split / c).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, data / split / c / f"person{i // 4}_{i}.png")
    assert main(["audit", str(data), "--out", str(tmp_path / "a1")]) == 0
    out = capsys.readouterr().out
    # "add --group-pattern" changed nothing: the folders give the splits, cxrkit did not cut them
    assert "images in two of the splits the data gives; if they are patients, add --resplit --group-pattern '(person\\d+)'" in out
    assert main(["audit", str(data), "--out", str(tmp_path / "a2"), "--group-pattern", r"(person\d+)"]) == 0
    out = capsys.readouterr().out
    # was "1 patient ID appear in two splits ({'train-val': 1, ...}); test figures would be inflated"
    assert ("LEAKAGE: 4 patient IDs appear in two splits (train and val: 4); validation figures (which chose the kept epoch and "
            "the threshold) would be inflated\n") in out


def test_a_group_pattern_that_finds_no_id_is_refused_and_a_threshold_rule_needs_a_threshold(tmp_path, capsys):
    from cxrkit.data.splits import patient_ids

    data = make_synthetic_dataset(tmp_path / "d", n_per_class=12, size=16, seed=1, classes=("normal", "tb"))
    # Every image kept its own ID: an image-level split, recorded in meta.json as split by patient.
    assert main(["train", str(data), "--out", str(tmp_path / "r"), "--group-pattern", r"zzz(\d+)", "--epochs", "1",
                 "--image-size", "16", "--model", "mlp"]) == 2
    err = capsys.readouterr().err
    assert "--group-pattern 'zzz(\\d+)' finds no patient ID in any of the 24 file names" in err
    assert not (tmp_path / "r" / "meta.json").exists()
    from types import SimpleNamespace

    one = [SimpleNamespace(patient=None, path=tmp_path / "p00012_3.png"), SimpleNamespace(patient=None, path=tmp_path / "x.png")]
    assert patient_ids(one, r"(p\d+)_")[0] == "p00012"  # some names without an ID are fine: they stay apart
    three = make_synthetic_dataset(tmp_path / "three", n_per_class=10, size=16, seed=1, classes=("covid", "normal", "viral"))
    assert main(["train", str(three), "--out", str(tmp_path / "m"), "--threshold-rule", "sensitivity:0.9", "--epochs", "1",
                 "--image-size", "16", "--model", "mlp"]) == 2
    assert "--threshold-rule sensitivity:0.9 needs a binary or multi-label task" in capsys.readouterr().err
