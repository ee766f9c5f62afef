"""Subgroup performance: per-group figures, heterogeneity tests, the largest gap, and `cxrkit evaluate --by`."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from cxrkit.metrics.subgroups import band_labels, bin_numeric, binary_subgroups


def _scores(rng, n, pos_mean):
    y = np.r_[np.ones(n), np.zeros(n)].astype(int)
    s = np.r_[rng.normal(pos_mean, 1, n), rng.normal(0, 1, n)]
    return y, 1 / (1 + np.exp(-s))


def test_a_planted_harder_subgroup_is_flagged_and_a_clean_split_is_not():
    rng = np.random.default_rng(3)
    ya, pa = _scores(rng, 150, 2.5)
    yb, pb = _scores(rng, 150, 0.8)  # disease is harder to see in group b
    out = binary_subgroups(np.r_[ya, yb], np.r_[pa, pb], ["a"] * 300 + ["b"] * 300, 0.5, "site")
    assert out["tests"]["sensitivity"]["p_value"] < 0.001 and out["tests"]["roc_auc"]["p_value"] < 0.001
    gap = out["largest_gap"]
    assert gap["metric"] == "sensitivity" and gap["lower_group"] == "b" and gap["ci"][0] > 0
    a, b = out["groups"]
    assert gap["difference"] == pytest.approx(a["sensitivity"]["value"] - b["sensitivity"]["value"])
    assert re.search(r"is \d+\.\d points lower than in a \(95% CI \d+\.\d to \d+\.\d\)$", gap["sentence"]), gap["sentence"]
    # Same distribution in both halves: nothing to flag (seeded draw).
    yc, pc = _scores(rng, 300, 1.5)
    clean = binary_subgroups(yc, pc, ["a", "b"] * 300, 0.5, "site")
    assert all(t["p_value"] > 0.05 for t in clean["tests"].values())


def test_hand_counts_and_small_groups():
    y = np.array([1, 1, 0, 0, 1, 0])
    p = np.array([0.9, 0.2, 0.1, 0.7, 0.8, 0.3])
    out = binary_subgroups(y, p, ["m", "m", "m", "m", "f", None], 0.5, "sex")
    f, m = out["groups"]
    assert (m["group"], m["n"], m["n_positive"], m["prevalence"]) == ("m", 4, 2, 0.5)
    assert m["sensitivity"]["value"] == 0.5 and m["specificity"]["value"] == 0.5 and m["ppv"]["value"] == 0.5
    assert f["roc_auc"]["value"] is None and f["too_small"]["sensitivity"]  # one positive, no negative
    assert out["missing"] == 1 and out["tests"]["sensitivity"]["p_value"] is None and out["largest_gap"] is None


def test_age_bands():
    assert band_labels((18, 40, 60)) == ["0-17", "18-39", "40-59", "60+"]
    assert bin_numeric(["5", "18", "039Y", "60", "x", ""], (18, 40, 60)) == ["0-17", "18-39", "18-39", "60+", None, None]


def test_evaluate_by_table_column_and_file_name_pattern(tiny_run, binary_data, tmp_path, capsys):
    import shutil

    from cxrkit.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    files = sorted(p.relative_to(binary_data).as_posix() for p in binary_data.rglob("*.png"))
    table = tmp_path / "people.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "Patient Sex", "Patient Age"])
        for i, rel in enumerate(files):
            w.writerow([rel, "MF"[i % 2], str(10 + (i * 7) % 80)])
    code = main(["evaluate", str(run), "--by", "patient sex,Patient Age", "--by-table", str(table),
                 "--by-pattern", r"last_digit=(\d)\.png$", "--explain", "none"])
    out = capsys.readouterr().out
    assert code == 0 and "subgroups by patient sex" in out and "heterogeneity" in out
    sub = json.loads((run / "metrics.json").read_text())["test"]["subgroups"]
    sex = sub["patient sex"]
    assert [g["group"] for g in sex["groups"]] == ["F", "M"] and sum(g["n"] for g in sex["groups"]) == 30
    assert [g["group"] for g in sub["Patient Age"]["groups"]] == ["0-17", "18-39", "40-59", "60+"]
    assert sub["Patient Age"]["binning"] == "binned at 18, 40, 60"
    assert len(sub["last_digit"]["groups"]) == 10
    report = (run / "report.html").read_text()
    assert "Subgroups: does it work equally for everyone?" in report and "By patient sex" in report
    gaps = [g["largest_gap"]["sentence"] for g in sub.values() if g.get("largest_gap")]
    assert gaps and all(g[:1].upper() + g[1:] in report and "95% CI" in g for g in gaps)  # capitalize wrote "... m (95% ci"
    assert main(["evaluate", str(run), "--by", "height", "--by-table", str(table)]) == 2
    assert "no column 'height'" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--by-table", str(table)]) == 2  # alone it was ignored without a word
    assert "--by-table names the table of the --by columns; give --by COLUMN too" in capsys.readouterr().err


def test_subgroup_tests_count_patients_when_each_has_several_films():
    # A patient's films all fall in one sex or age band: counted as independent cases, three films each made a gap
    # between groups look far more certain than the patients behind it.
    from cxrkit.metrics.subgroups import binary_subgroups

    rng = np.random.default_rng(3)
    y = np.r_[np.ones(30, int), np.zeros(30, int), np.ones(30, int), np.zeros(30, int)]
    prob = np.where(y == 1, rng.random(120) * 0.6 + 0.3, rng.random(120) * 0.6 + 0.1)
    prob[:30] = np.minimum(prob[:30] + 0.15, 1.0)  # group A's positives are found more often
    groups = ["A"] * 60 + ["B"] * 60
    once = binary_subgroups(y, prob, groups, 0.5, "sex")
    thrice = binary_subgroups(np.repeat(y, 3), np.repeat(prob, 3), list(np.repeat(groups, 3)), 0.5, "sex")
    by_patient = binary_subgroups(np.repeat(y, 3), np.repeat(prob, 3), list(np.repeat(groups, 3)), 0.5, "sex",
                                  patients=np.repeat(np.arange(120), 3))
    for metric in ("sensitivity", "roc_auc"):
        p1, p3, pp = (r["tests"][metric]["p_value"] for r in (once, thrice, by_patient))
        assert p3 < p1 / 3 and pp == pytest.approx(p1, rel=0.2), (metric, p1, p3, pp)
    assert by_patient["intervals_by"] == "patient" and "Rao-Scott" in by_patient["tests"]["sensitivity"]["test"]
    gap, gap_once = by_patient["largest_gap"], once["largest_gap"]
    assert gap["ci"] == pytest.approx(gap_once["ci"], abs=0.02) and gap["difference"] == pytest.approx(gap_once["difference"])
    row = by_patient["groups"][0]
    assert row["n_patients"] == 60 and row["sensitivity"]["ci"] == pytest.approx(once["groups"][0]["sensitivity"]["ci"], abs=0.01)


def test_multilabel_group_means_average_the_same_findings():
    # Group A's mean took in a finding only A could measure (an easy one), B's did not: two means over different findings.
    from cxrkit.metrics.subgroups import multilabel_subgroups

    rng = np.random.default_rng(0)
    n = 200
    groups = ["A"] * 100 + ["B"] * 100
    y = np.zeros((n, 2), int)
    y[:, 0] = rng.random(n) < 0.3
    y[:40, 1] = 1  # the second finding: 40 in A, none in B
    probs = np.clip(0.6 * y + 0.4 * rng.random((n, 2)), 0, 1)
    probs[:, 0] = np.clip(0.2 * y[:, 0] + 0.8 * rng.random(n), 0, 1)  # the first is hard, the second easy
    r = multilabel_subgroups(y, probs, ["hard", "easy"], np.array([0.5, 0.5]), groups, "site")
    a, b = r["summary"]
    assert a["over"] == b["over"] == ["hard"] and a["findings_measured"] == b["findings_measured"] == 1
    assert a["mean_auc"] == pytest.approx(r["per_finding"]["hard"]["groups"][0]["roc_auc"]["value"])
