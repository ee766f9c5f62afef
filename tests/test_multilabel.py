"""Multi-label: per-finding metrics, weighted BCE, repeat-factor oversampling, training to report and prediction."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cxrkit.cli import main
from cxrkit.config import TrainConfig
from cxrkit.data.augment import AugmentConfig
from cxrkit.data.synthetic import MULTILABEL_FINDINGS, make_synthetic_multilabel
from cxrkit.evaluation.evaluate import evaluate_run
from cxrkit.metrics.classification import multilabel_metrics
from cxrkit.run import Run
from cxrkit.training import train
from cxrkit.training.imbalance import make_loss, oversampled_order, repeat_factors


def test_multilabel_metrics_match_hand_counts():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 3)) < [0.3, 0.1, 0.05]).astype(int)
    y[:, 2] = 0  # a finding absent from the split: no AUC, left out of the mean
    probs = np.clip(y * 0.3 + rng.random((200, 3)) * 0.7, 0, 1)
    thr = np.array([0.5, 0.6, 0.5])
    m = multilabel_metrics(y, probs, ["a", "b", "c"], thr, n_bootstrap=200)
    for c, name in enumerate("ab"):
        e = m["per_label"][name]
        assert e["roc_auc"]["value"] == pytest.approx(roc_auc_score(y[:, c], probs[:, c]))
        pred = probs[:, c] >= thr[c]
        tp = int((pred & (y[:, c] == 1)).sum())
        assert e["sensitivity"]["numerator"] == tp and e["sensitivity"]["denominator"] == int(y[:, c].sum())
        assert e["specificity"]["value"] == pytest.approx(((~pred) & (y[:, c] == 0)).sum() / (y[:, c] == 0).sum())
        assert e["ppv"]["denominator"] == int(pred.sum()) and e["threshold"] == thr[c]
        lo, hi = e["sensitivity"]["ci"]
        assert lo < e["sensitivity"]["value"] < hi
    assert m["per_label"]["c"]["roc_auc"]["value"] is None and m["findings_in_mean_auc"] == ["a", "b"]
    mean = m["metrics"]["mean_roc_auc"]
    assert mean["value"] == pytest.approx(np.mean([roc_auc_score(y[:, c], probs[:, c]) for c in range(2)]))
    assert mean["ci"][0] < mean["value"] < mean["ci"][1]
    # "no finding" everywhere is right on every negative pair and on every image without a finding
    assert m["all_negative_baseline"]["label_accuracy"]["value"] == pytest.approx((y == 0).mean())
    assert m["all_negative_baseline"]["exact_match"]["value"] == pytest.approx((y.sum(1) == 0).mean())
    pred_all = probs >= thr
    assert m["metrics"]["detection_rate_positive"]["numerator"] == int((pred_all & (y == 1)).sum())
    assert m["metrics"]["label_accuracy"]["value"] == pytest.approx((pred_all == y).mean())


def test_weighted_bce_and_repeat_factors():
    y = np.array([[1, 0], [0, 0], [0, 0], [0, 1], [0, 0], [0, 0], [0, 0], [0, 0], [0, 0], [1, 0]])
    counts = y.sum(0)
    loss, info = make_loss("multilabel", counts, True, n_images=len(y))
    assert info["pos_weights"] == [4.0, 9.0]
    plain, pinfo = make_loss("multilabel", counts, False, n_images=len(y))
    assert pinfo["pos_weights"] == [1.0, 1.0]
    logits = torch.zeros(len(y), 2)
    # weighted BCE at p=0.5: every positive term counts pos_weight times
    expected = np.log(2) * (np.where(y == 1, [4.0, 9.0], 1.0)).mean()
    assert float(loss(logits, torch.tensor(y, dtype=torch.float32))) == pytest.approx(expected, rel=1e-5)
    r = repeat_factors(y, threshold=0.5)
    assert r[3] == pytest.approx(np.sqrt(0.5 / 0.1)) and r[0] == pytest.approx(np.sqrt(0.5 / 0.2)) and r[1] == 1.0
    counts_seen = np.bincount(np.concatenate([oversampled_order(r, np.random.default_rng(s)) for s in range(400)]), minlength=len(y)) / 400
    np.testing.assert_allclose(counts_seen, r, atol=0.08)
    with pytest.raises(ValueError, match="every finding needs positive"):
        make_loss("multilabel", np.array([3, 0]), n_images=10)


@pytest.fixture(scope="module")
def ml_table(tmp_path_factory):
    return make_synthetic_multilabel(tmp_path_factory.mktemp("ml"), n_patients=110, size=40, seed=3, signal=1.5)


def test_multilabel_train_evaluate_predict(ml_table, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    cfg = TrainConfig(data=str(ml_table.parent), labels=str(ml_table), out=str(out), model="simple_cnn", image_size=32, epochs=6,
                      batch_size=16, lr=3e-3, seed=0, precision="32", augment=AugmentConfig(0, 0, 0, 0, 0, False), oversample=True)
    train(cfg, progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["task"] == "multilabel" and meta["classes"] == sorted(MULTILABEL_FINDINGS) and meta["num_outputs"] == 3
    assert set(meta["thresholds"]) == set(meta["classes"]) and meta["data"]["patient_ids"]
    assert meta["training"]["loss"].endswith("weighted)") and len(meta["training"]["pos_weights"]) == 3
    assert meta["training"]["oversampling"]["images_per_epoch"] > meta["data"]["images"]["train"]
    splits = list(csv.DictReader(open(out / "splits.csv")))
    patients = {}
    for r in splits:
        patients.setdefault(r["path"].split("/")[1].split("_")[0], set()).add(r["split"])
    assert all(len(s) == 1 for s in patients.values())
    assert all(r["patient"] == r["path"].split("/")[1].split("_")[0] for r in splits)  # compare pairs its tests by patient
    run = Run.load(out)
    probs = np.array([[0.99, 0.0, 0.99], [0.0, 0.0, 0.0]])
    d = run.decide(probs)
    assert d.shape == (2, 3) and d[1].sum() == 0 and run.decision_labels(probs)[1] == ""
    m = evaluate_run(out, progress=False)
    assert m["split"] == "test" and m["task"] == "multilabel" and m["metrics"]["mean_roc_auc"]["value"] > 0.6
    # A patient's 1-3 films are not independent: every interval counts the table's patients, and the report says so.
    assert m["intervals_by"] == "patient" and m["n_patients"] < m["n"] and m["metrics"]["mean_roc_auc"]["method"] == "bootstrap over patients"
    html = (out / "report.html").read_text()
    assert f"Intervals count the {m['n_patients']} patients, not the {m['n']} images" in html
    # Another site's table that never names haze: it was scored absent on every image, with no word that it was never annotated.
    ext = make_synthetic_multilabel(tmp_path / "other_site", n_patients=30, size=40, seed=9, signal=1.5)
    rows = list(csv.DictReader(open(ext)))
    with open(ext, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            kept = [x for x in r["findings"].split("|") if x != "haze"]
            w.writerow({**r, "findings": "|".join(kept) or "No Finding"})
    m_ext = evaluate_run(out, ext, progress=False)
    assert any(n.startswith("no image of ") and " has haze: these findings cannot be measured here" in n for n in m_ext["notes"]), m_ext["notes"]
    html = (out / "report.html").read_text()
    # The internal-vs-external table read a multi-class figure: every external evaluation of a multi-label run failed at the report.
    assert "Internal vs external" in html and f"{m_ext['metrics']['mean_roc_auc']['value']:.3f}" in html
    assert "Accuracy is meaningless here" in html and "Label counts per split" not in html  # title is inside the PNG
    # "ratio 18.00 : 1" was the largest finding's count over the smallest's, not how rare each finding is
    assert "each finding's images with it to those without: from 1 : " in html and "Class balance in training" not in html
    assert "does not decide for a multi-label task (the audit&#39;s exposure probe compares" in html and "probe not run" not in html
    assert (out / "plots" / "label_counts.png").is_file() and (out / "plots" / "cooccurrence.png").is_file()
    assert (out / "plots" / "roc_test.png").is_file()
    image = ml_table.parent / splits[0]["path"]
    assert main(["predict", str(out), str(image)]) == 0
    assert "thresholds chosen per finding" in capsys.readouterr().out
    # A finding whose validation split had no positive decides at an unchosen 0.5: predict said "chosen on validation".
    real_load = Run.load

    def unchosen_first(*args, **kwargs):
        run = real_load(*args, **kwargs)
        first = run.classes[0]
        run.record.thresholds[first] = {**run.record.thresholds[first], "unchosen": True}
        return run

    monkeypatch.setattr(Run, "load", unchosen_first)
    assert main(["predict", str(out), str(image)]) == 0
    assert f"(thresholds chosen per finding on validation, except {meta['classes'][0]}: 0.5)" in capsys.readouterr().out
    monkeypatch.undo()
    preds = list(csv.DictReader(open(out / "predictions.csv")))
    assert {f"prob_{c}" for c in meta["classes"]} <= set(preds[0])

    from fastapi.testclient import TestClient

    from cxrkit.serve.app import create_app

    with TestClient(create_app(out, engine="torch", api_key="")) as client:
        card = client.get("/v1/model").json()
        r = client.post("/v1/predict", files=[("files", ("x.png", image.read_bytes(), "image/png"))])
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    p = np.array([res["probabilities"][c] for c in meta["classes"]])
    expected = run.decision_labels(run.predict_arrays(run.preprocessing.load(image)[None]))[0]
    assert res["decision"]["label"] == expected
    assert ("no finding above" in res["decision"]["words"]) == (expected == "")
    assert not re.search(r"\(\d\.\d\d >= ", res["decision"]["words"])  # three decimals at least: "Edema (0.00 >= 0.00)"
    assert set(card["decision"]["threshold"]) == set(meta["classes"]) and card["decision"]["rule"] == "per-finding thresholds"
    # The card said "Trained on 122 images" (positives summed over findings) and flagged all findings but the first.
    assert f"Trained on {meta['data']['images']['train']} images of one dataset" in card["limitations"][1]
    assert all(c in card["intended_use"] for c in meta["classes"])
    assert card["metrics"]["test"]["n_patients"] == m["n_patients"] and card["metrics"]["test"]["intervals_by"] == "patient"
    test_auc = card["metrics"]["test"]["mean_roc_auc"]
    assert test_auc["over"] == m["findings_in_mean_auc"] and f"(over {len(m['findings_in_mean_auc'])} of 3 findings)" in test_auc["name"]
    assert np.allclose(p, run.predict_arrays(run.preprocessing.load(image)[None])[0], atol=1e-6)

    # Calibration per finding: `cxrkit calibrate` refused multi-label runs, whose probabilities ran far above the findings' shares.
    from cxrkit.evaluation.calibrate import remove_calibration

    images = np.stack([run.preprocessing.load(ml_table.parent / r["path"]) for r in splits if r["split"] == "test"])
    before_probs, before_thresholds = run.predict_arrays(images), dict(run.record.thresholds)
    assert main(["calibrate", str(out)]) == 0
    said = capsys.readouterr().out
    assert "mean over findings: ECE" in said and "every decision stays as it was" in said
    assert "slope and intercept: " in said and ("intercept only: " in said or "finding(s) (" in said)  # two lists, not one run-on
    calibrated = Run.load(out)
    assert np.array_equal(calibrated.decide(calibrated.predict_arrays(images)), run.decide(before_probs))
    assert all(calibrated.record.thresholds[c]["uncalibrated_value"] == before_thresholds[c]["value"] for c in meta["classes"])
    val = json.loads((out / "metrics.json").read_text())["val"]["calibration_per_finding"]
    assert val["calibrated"]["overall"]["ece"] < val["model"]["overall"]["ece"]
    assert remove_calibration(out)
    restored = Run.load(out)
    assert restored.record.thresholds == before_thresholds and np.allclose(restored.predict_arrays(images), before_probs)


@pytest.mark.parametrize("rare", [1, 2, 4])
def test_a_finding_seen_on_few_images_gets_no_interval_and_stays_out_of_the_mean(rare):
    # NIH test split: Pneumonia on 2 images had 0.263 (0.067-0.458), an interval excluding chance where a rank test did not
    # (p 0.29), and three findings seen once each lifted the mean over findings from 0.558 to 0.611.
    from cxrkit.report.narrative import multilabel_sentences

    rng = np.random.default_rng(rare)
    y = np.zeros((60, 3), int)
    y[:20, 0] = 1
    y[20:35, 1] = 1
    y[:rare, 2] = 1
    probs = np.clip(y * 0.3 + rng.random((60, 3)) * 0.7, 0, 1)
    probs[:rare, 2] = 0.99  # a perfect score on the rare finding would lead the "best" and lift the mean
    m = multilabel_metrics(y, probs, ["a", "b", "rare"], np.array([0.5, 0.5, 0.5]), n_bootstrap=200)
    assert m["per_label"]["a"]["roc_auc"]["ci"] is not None
    e = m["per_label"]["rare"]["roc_auc"]
    assert e["value"] == pytest.approx(1.0) and e["ci"] is None and f"{rare} positive image(s) only (under 5)" in e["note"]
    pr = m["per_label"]["rare"]["pr_auc"]  # its bootstrap resampled the negatives alone around one positive
    assert pr["ci"] is None and pr["note"] == e["note"]
    assert m["findings_in_mean_auc"] == ["a", "b"]
    mean = m["metrics"]["mean_roc_auc"]
    assert mean["value"] == pytest.approx(np.mean([roc_auc_score(y[:, c], probs[:, c]) for c in range(2)]))
    text = " ".join(multilabel_sentences(m, "test"))
    assert "Mean ROC-AUC over the 2 findings with at least 5 images" in text and "best <b>rare</b>" not in text
    assert "Left out, seen on too few images for a figure to mean much: rare." in text
    none = multilabel_metrics(y[:, 2:], probs[:, 2:], ["rare"], np.array([0.5]), n_bootstrap=50)  # nothing to average: said so
    assert none["metrics"]["mean_roc_auc"]["value"] is None and none["findings_in_mean_auc"] == []
    assert multilabel_sentences(none, "test")[0] == "No mean ROC-AUC over findings: no finding has 5 images with it and without it in this split."


def test_sharded_prediction_covers_the_folder_once(ml_table, tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(data=str(ml_table), out=str(out), model="mlp", image_size=16, epochs=1, batch_size=16, precision="32"),
          progress=False, finish=True)
    folder = ml_table.parent / "images"
    for k in range(3):
        assert main(["predict", str(out), str(folder), "--shard", f"{k}/3", "--out", str(tmp_path / "p.csv")]) == 0
    rows = [r["path"] for k in range(3) for r in csv.DictReader(open(tmp_path / f"p.shard{k}-of-3.csv"))]
    assert sorted(rows) == sorted(str(p) for p in folder.glob("*.png")) and len(set(rows)) == len(rows)
    assert main(["predict", str(out), str(folder), "--shard", "3/3", "--out", str(tmp_path / "x.csv")]) == 2


def test_a_finding_without_validation_positives_is_said_to_use_an_unchosen_default():
    # Its 0.5 was described as "at its validation threshold" everywhere: a finding with test AUC 1.000 found 0% of the time.
    from types import SimpleNamespace

    from cxrkit.evaluation.evaluate import store_thresholds, unchosen_threshold_notes

    stored = {}
    run = SimpleNamespace(task="multilabel", classes=["alpha", "gamma"], save_record=lambda: None,
                          record=SimpleNamespace(set_thresholds=lambda t, rule: stored.update(t)))
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]] * 5)
    probs = np.column_stack([y[:, 0] * 0.6 + 0.2, np.linspace(0.1, 0.9, 20)])
    store_thresholds(run, y, probs, "youden")
    assert stored["gamma"]["unchosen"] is True and "unchosen" not in stored["alpha"] and stored["gamma"]["value"] == 0.5
    run.record.thresholds = stored
    (note,) = unchosen_threshold_notes(run)
    assert note.startswith("gamma: no threshold could be chosen on validation (no positive or no negative validation image), so its "
                           "decisions use an unchosen 0.5")
