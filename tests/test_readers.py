"""`cxrkit evaluate --readers`: a binary run against human readers on the same images."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from cxrkit.evaluation.readers import read_calls
from cxrkit.metrics.readers import compare_with_reader, paired_difference, sensitivity_at_false_positives


def test_paired_difference_matches_newcombes_method_10_and_mcnemar():
    # The paired 2x2 table of Cavo et al. (2012) as in Fagerland, Lydersen & Laake, "Statistical analysis of contingency
    # tables" (2017), chapter 8: Newcombe's square-and-add interval -0.0621 (-0.1186 to -0.0046).
    d = paired_difference(59, 6, 16, 80)
    assert d["value"] == pytest.approx(-10 / 161)
    assert d["ci"] == pytest.approx([-0.1186, -0.0046], abs=1e-4)
    assert d["discordant"] == [6, 16]
    assert d["p_value"] == pytest.approx(0.0525, abs=1e-4)  # exact binomial on the 22 discordant pairs
    same = paired_difference(12, 0, 0, 8)
    assert same["value"] == 0 and same["p_value"] == 1.0 and same["ci"][0] < 0 < same["ci"][1]
    with pytest.raises(ValueError, match="whole numbers"):
        paired_difference(1, -1, 0, 0)


def test_sensitivity_at_false_positives_keeps_ties_on_the_safe_side():
    neg = np.array([0.9, 0.5, 0.5, 0.1])  # sorted high to low
    pos = np.array([0.95, 0.9, 0.6, 0.5, 0.2])
    # No false positive allowed: only scores above 0.9 are called positive (0.9 itself would flag the 0.9 negative).
    assert sensitivity_at_false_positives(pos, neg, np.array(0)) == pytest.approx(1 / 5)
    # One allowed: above 0.5, since a threshold at 0.5 flags both tied negatives.
    assert sensitivity_at_false_positives(pos, neg, np.array(1)) == pytest.approx(3 / 5)
    assert sensitivity_at_false_positives(pos, neg, np.array(2)) == pytest.approx(3 / 5)
    assert sensitivity_at_false_positives(pos, neg, np.array(3)) == 1.0  # above 0.1: the three higher negatives flagged
    assert sensitivity_at_false_positives(pos, neg, np.array(4)) == 1.0


def test_a_reader_who_calls_as_the_model_does_differs_by_nothing_and_a_worse_one_is_found_worse():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(150), np.zeros(250)].astype(int)
    score = 1 / (1 + np.exp(-rng.normal(2.0 * y - 1.0, 1.0)))
    same = compare_with_reader(y, score, 0.5, score >= 0.5)
    for k in ("sensitivity", "specificity"):
        assert same[k]["difference"]["value"] == 0 and same[k]["difference"]["discordant"] == [0, 0]
        assert same[k]["model"]["value"] == same[k]["reader"]["value"]
    assert same["agreement"]["value"] == 1.0
    # The model's own point lies on its curve: at that specificity (or sensitivity) the best threshold does as well or a
    # little better (it may sit between the threshold and the next case).
    for k in ("sensitivity_at_reader_specificity", "specificity_at_reader_sensitivity"):
        assert 0 <= same[k]["difference"]["value"] < 0.05
    # A reader who reads the same disease with more noise sits under the model's curve: both matched differences positive.
    noisy = rng.normal(2.0 * y - 1.0, 3.0) > 0
    worse = compare_with_reader(y, score, 0.5, noisy, seed=1)
    assert worse["sensitivity_at_reader_specificity"]["difference"]["ci"][0] > 0
    assert worse["specificity_at_reader_sensitivity"]["difference"]["ci"][0] > 0
    # The counts behind the figures are the paired table: model-only and reader-only correct cases among the positives.
    m, r = score[y == 1] >= 0.5, noisy[y == 1]
    assert worse["sensitivity"]["difference"]["discordant"] == [int(np.sum(m & ~r)), int(np.sum(~m & r))]
    assert worse["sensitivity"]["reader"]["numerator"] == int(r.sum())


def _table(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_read_calls_parses_calls_matches_images_and_refuses_what_it_cannot_read(tmp_path):
    classes = ["healthy", "tb"]
    rel = ["test/tb/a.png", "test/healthy/b.png", "test/tb/c.png", "other/c.png"]
    t = _table(tmp_path / "r.csv", ["path", "label", "Reader 1", "R2"],
               [["test/tb/a.png", "tb", "TB", "1"], ["b.png", "healthy", "positive", ""], ["test/tb/c.png", "tb", "no", "NA"],
                ["other/c.png", "healthy", "healthy", "0"], ["gone.png", "tb", "tb", "1"]])
    calls, unmatched = read_calls(t, classes, rel)
    assert list(calls) == ["Reader 1", "R2"]  # the label column is not a reader
    assert calls["Reader 1"] == [True, True, False, False]
    assert calls["R2"] == [True, None, None, False]  # blank and NA: not read
    assert unmatched == 1
    only, _ = read_calls(t, classes, rel, ["r2"])
    assert list(only) == ["R2"]
    # Two paths share the file name c.png: an image listed only by that name cannot be told apart, so it is not matched.
    amb = _table(tmp_path / "amb.csv", ["path", "R"], [["x/c.png", "tb"], ["y/c.png", "healthy"], ["a.png", "tb"]])
    assert read_calls(amb, classes, ["z/c.png", "test/tb/a.png"])[0]["R"] == [None, True]
    bad = _table(tmp_path / "bad.csv", ["path", "R"], [["test/tb/a.png", "maybe"]])
    with pytest.raises(ValueError, match="'maybe' is not a call; write healthy or tb"):
        read_calls(bad, classes, rel)
    twice = _table(tmp_path / "twice.csv", ["path", "R"], [["test/tb/a.png", "tb"], ["test/tb/a.png", "healthy"]])
    with pytest.raises(ValueError, match="lists test/tb/a.png twice with different values"):
        read_calls(twice, classes, rel)
    none = _table(tmp_path / "none.csv", ["path", "label"], [["test/tb/a.png", "tb"]])
    with pytest.raises(ValueError, match="has no reader column"):
        read_calls(none, classes, rel)
    elsewhere = _table(tmp_path / "elsewhere.csv", ["path", "R"], [["q.png", "tb"]])
    with pytest.raises(ValueError, match="no call on any of the 4 evaluated images"):
        read_calls(elsewhere, classes, rel)
    with pytest.raises(ValueError, match="needs a column naming each image"):
        read_calls(_table(tmp_path / "nopath.csv", ["R"], [["tb"]]), classes, rel)


def test_read_calls_refuses_tables_whose_rows_or_columns_are_ambiguous(tmp_path):
    classes = ["healthy", "tb"]
    rel = ["test/tb/a.png", "test/healthy/b.png"]
    # A repeated column name kept only its last column: the first reader's calls were dropped without a word.
    with pytest.raises(ValueError, match="names a column twice"):
        read_calls(_table(tmp_path / "dup.csv", ["path", "R", "R"], [["test/tb/a.png", "tb", "healthy"]]), classes, rel)
    with pytest.raises(ValueError, match="as 'Reader A' and 'reader_a'"):
        read_calls(_table(tmp_path / "dup2.csv", ["path", "Reader A", "reader_a"], [["test/tb/a.png", "tb", "tb"]]), classes, rel)
    # An unquoted comma shifts the row: its last value belongs to no column.
    with pytest.raises(ValueError, match=r"line 3, has more values than the header has columns \(2\)"):
        read_calls(_table(tmp_path / "long.csv", ["path", "R"], [["test/tb/a.png", "tb"], ["test/healthy/b.png", "healthy", "tb"]]), classes, rel)
    # tb/0001.png and healthy/0001.png are both evaluated: a row naming 0001.png is neither's.
    same = ["test/tb/0001.png", "test/healthy/0001.png", "test/tb/a.png"]
    t = _table(tmp_path / "name.csv", ["path", "R"], [["0001.png", "tb"], ["a.png", "tb"]])
    assert read_calls(t, classes, same)[0]["R"] == [None, None, True]
    # One image under two spellings of its path with different calls: which one stands is unknown.
    with pytest.raises(ValueError, match="lists test/tb/a.png as test/tb/a.png and as a.png with different values"):
        read_calls(_table(tmp_path / "spell.csv", ["path", "R"], [["test/tb/a.png", "tb"], ["a.png", "healthy"]]), classes, rel)
    agree = _table(tmp_path / "agree.csv", ["path", "R"], [["test/tb/a.png", "tb"], ["tb/a.png", "tb"]])
    assert read_calls(agree, classes, rel)[0]["R"] == [True, None]
    # The truth under another name is not a reader who is never wrong.
    truth = _table(tmp_path / "truth.csv", ["path", "Diagnosis", "Ground truth", "R"], [["test/tb/a.png", "tb", "tb", "healthy"]])
    assert list(read_calls(truth, classes, rel)[0]) == ["R"]


def test_reader_sentences_give_each_matched_comparison_its_own_verdict_when_only_one_is_clear():
    from cxrkit.report.narrative import reader_sentences

    rng = np.random.default_rng(3)
    y = np.r_[np.ones(60), np.zeros(140)].astype(int)
    score = 1 / (1 + np.exp(-rng.normal(8.0 * y - 4.0, 1.0)))  # near-perfectly separated: the model is as good as it gets
    # A reader who finds every case (sensitivity 1) and flags a fifth of the healthy: matched at the reader's sensitivity
    # the model clears clearly more; matched at the reader's specificity both find all, so no difference can show.
    calls = (y == 1) | (rng.random(200) < 0.2)
    r = compare_with_reader(y, score, 0.5, calls, seed=0)
    a, b = r["sensitivity_at_reader_specificity"]["difference"], r["specificity_at_reader_sensitivity"]["difference"]
    assert a["ci"][0] <= 0 <= a["ci"][1] and b["ci"][0] > 0
    text = " ".join(reader_sentences(r))
    assert "As specific as the reader, these images cannot tell them apart; as sensitive as the reader, the model does better" in text
    assert "cannot tell the model and the reader apart" not in text


def test_evaluate_with_readers_writes_figures_notes_and_the_report(tiny_run, binary_data, tmp_path, capsys):
    from cxrkit.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    files = sorted(p.relative_to(binary_data).as_posix() for p in (binary_data / "test").rglob("*.png"))
    truth = [f.split("/")[1] for f in files]
    flipped = {"tb": "healthy", "healthy": "tb"}
    table = _table(tmp_path / "reads.csv", ["path", "A", "B"],
                   [[f, flipped[t] if i % 5 == 0 else t, "" if i % 3 == 0 else t] for i, (f, t) in enumerate(zip(files, truth))])
    code = main(["evaluate", str(run), "--readers", str(table), "--explain", "none"])
    out = capsys.readouterr().out
    assert code == 0 and "against reader A (30 images" in out and "McNemar p" in out
    assert f"reader B read 20 of the {len(files)} evaluated images" in out
    r = json.loads((run / "metrics.json").read_text())["test"]["readers"]["readers"]
    wrong = sum(1 for i in range(len(files)) if i % 5 == 0)
    assert r["A"]["agreement"]["denominator"] == 30 and r["B"]["read"] == 20
    a_correct = r["A"]["sensitivity"]["reader"]["numerator"] + r["A"]["specificity"]["reader"]["numerator"]
    assert a_correct == 30 - wrong
    preds = [row for row in csv.DictReader(open(run / "predictions.csv")) if row["split"] == "test"]
    model_pos = sum(row["pred"] == "tb" and row["true"] == "tb" for row in preds)
    assert r["A"]["sensitivity"]["model"]["numerator"] == model_pos  # the model's figures are its own predictions at its threshold
    assert "Against the readers" in (run / "report.html").read_text()
    assert main(["evaluate", str(run), "--reader-columns", "A"]) == 2
    assert "--reader-columns names columns of a --readers table" in capsys.readouterr().err


def test_reader_comparison_counts_patients_when_each_has_several_films():
    # Three films per patient, read alike: as images, the model-reader gap looked three times as certain as the patients allow.
    from cxrkit.metrics.readers import compare_with_reader

    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 80)
    score = np.where(y == 1, rng.random(80) * 0.6 + 0.35, rng.random(80) * 0.6 + 0.05)
    reader = np.where(rng.random(80) < 0.8, y == 1, y == 0)
    once = compare_with_reader(y, score, 0.5, reader, replicates=200)
    thrice = compare_with_reader(np.repeat(y, 3), np.repeat(score, 3), 0.5, np.repeat(reader, 3), replicates=200)
    by_patient = compare_with_reader(np.repeat(y, 3), np.repeat(score, 3), 0.5, np.repeat(reader, 3), replicates=200,
                                     patients=np.repeat(np.arange(80), 3))
    for k in ("sensitivity", "specificity"):
        d1, d3, dp = once[k]["difference"], thrice[k]["difference"], by_patient[k]["difference"]
        assert d3["p_value"] < d1["p_value"] or d1["p_value"] == 1.0
        assert dp["p_value"] >= d3["p_value"] and dp["ci"][1] - dp["ci"][0] > 1.4 * (d3["ci"][1] - d3["ci"][0])
        assert by_patient[k]["model"]["ci"] == pytest.approx(once[k]["model"]["ci"], abs=0.01)
    assert by_patient["n_patients"] == 80 and by_patient["agreement"]["ci"] == pytest.approx(once["agreement"]["ci"], abs=0.01)
    for k in ("sensitivity_at_reader_specificity", "specificity_at_reader_sensitivity"):  # the model at the reader's own point too
        wp, w3 = (r[k]["difference"]["ci"][1] - r[k]["difference"]["ci"][0] for r in (by_patient, thrice))
        assert wp > 1.3 * w3 and by_patient[k]["difference"]["method"] == "bootstrap of patients (200)"
    from cxrkit.report.narrative import reader_sentences

    text = " ".join(reader_sentences(by_patient))  # said "McNemar p" beside Durkalski's p and a patient bootstrap's interval
    assert "Durkalski's clustered McNemar test" in text and "McNemar p =" not in text
    assert "McNemar p =" in " ".join(reader_sentences(once))
