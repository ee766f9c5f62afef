"""Referral band: rule out below one threshold, rule in above another, refer in between."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cxrkit.metrics.referral import choose_referral, parse_referral, per_thousand, referral_outcomes, risk_coverage

from .conftest import record_decision


def test_thresholds_by_hand():
    # Ten validation cases, sorted by score; 1 = disease.
    prob = np.array([0.05, 0.10, 0.20, 0.30, 0.40, 0.50, 0.60, 0.70, 0.80, 0.90])
    y = np.array([0, 0, 0, 1, 0, 0, 1, 0, 1, 1])
    band = choose_referral(y, prob, "npv:0.99,ppv:0.99")
    # Ruling out below 0.30 keeps NPV at 3/3; below 0.40 it would rule out the positive at 0.30 (NPV 3/4).
    # Ruling in at 0.80 keeps PPV at 2/2; at 0.70 it would take the negative at 0.70 (PPV 2/3).
    assert (band["lower"], band["upper"]) == (0.30, 0.80)
    o = referral_outcomes(y, prob, band["lower"], band["upper"])
    assert (o["ruled_out"], o["ruled_in"], o["referred"]) == (3, 2, 5)
    assert o["decided_share"]["value"] == 0.5 and o["npv_ruled_out"]["value"] == 1 and o["ppv_ruled_in"]["value"] == 1
    assert o["positives_missed"]["value"] == 0 and per_thousand(o) == {"ruled_out": 300, "ruled_in": 200, "referred": 500,
                                                                       "missed": 0, "false_alarms": 0}
    # 3 of 3 ruled out correctly is 100%, but its Wilson lower bound (43.9%) does not establish 0.99: said, not implied.
    assert band["unsupported"] == [
        "npv 0.99 is met on validation (100.0%) but its 95% lower bound is 43.9%: 3 validation images cannot establish it",
        "ppv 0.99 is met on validation (100.0%) but its 95% lower bound is 34.2%: 2 validation images cannot establish it"]
    big = np.r_[np.zeros(2000), np.ones(2000)].astype(int)
    assert choose_referral(big, np.r_[np.linspace(0, 0.4, 2000), np.linspace(0.6, 1, 2000)], "npv:0.9,ppv:0.9")["unsupported"] == []
    # Given the run's threshold, the band contains it: beside it (0.30-0.80 against 0.85), an image at 0.82 was counted as
    # ruled in while predict, evaluate and serve, deciding by the threshold outside the band, called it negative.
    wide = choose_referral(y, prob, "npv:0.99,ppv:0.99", threshold=0.85)
    assert (wide["lower"], wide["upper"]) == (0.30, 0.85) and "widened to contain the decision threshold 0.850" in wide["note"]
    assert choose_referral(y, prob, "npv:0.99,ppv:0.99", threshold=0.5)["note"] is None
    s = choose_referral(y, prob, "sensitivity:0.75,specificity:0.80")
    assert s["lower"] <= s["upper"]
    assert (prob[y == 1] >= s["lower"]).mean() >= 0.75 and (prob[y == 0] < s["upper"]).mean() >= 0.80


def test_risk_coverage_is_monotone_for_a_good_ranking():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    prob = np.array([0.01, 0.1, 0.3, 0.6, 0.45, 0.7, 0.9, 0.99])
    rc = risk_coverage(y, prob, 0.5)
    assert rc["coverage"][-1] == 1.0 and rc["risk"][0] == 0.0 and rc["risk"][-1] == pytest.approx(2 / 8)


@pytest.mark.parametrize("spec", ["npv:0.98", "ppv:0.9,npv:1.5", "npv:0.9,sensitivity:0.9,ppv:0.9", "auc:0.9,ppv:0.9", ""])
def test_bad_specs(spec):
    with pytest.raises(ValueError):
        parse_referral(spec)


def test_referral_command_then_predict_says_refer(tiny_run, binary_data, tmp_path, capsys):
    import cxrkit
    from cxrkit.cli import main

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    assert main(["referral", str(run_dir), "sensitivity:0.95,specificity:0.95"]) == 0
    assert "decided alone" in capsys.readouterr().out
    band = json.loads((run_dir / "meta.json").read_text())["referral"]
    assert 0 <= band["lower"] <= band["upper"] <= 1
    run = cxrkit.load(run_dir)
    images = sorted(binary_data.rglob("*.png"))[:40]
    preds = run.predict(images)
    for p in preds:
        inside = band["lower"] <= p.probability < band["upper"]
        assert (p.decision == "refer") == inside
    assert main(["evaluate", str(run_dir), "--explain", "none"]) == 0
    assert "referral band" in capsys.readouterr().out
    test = json.loads((run_dir / "metrics.json").read_text())["test"]["referral"]
    o = test["outcomes"]
    assert o["ruled_out"] + o["ruled_in"] + o["referred"] == 30
    assert "Referral band: what the model decides alone" in (run_dir / "report.html").read_text()
    assert main(["referral", str(run_dir), "--remove"]) == 0
    assert "referral" not in json.loads((run_dir / "meta.json").read_text())


def test_the_http_api_answers_refer_inside_the_band(tiny_run, binary_data, tmp_path):
    from fastapi.testclient import TestClient

    import cxrkit
    from cxrkit.cli import main
    from cxrkit.serve import create_app

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    path = sorted(binary_data.rglob("*.png"))[0]
    p = cxrkit.load(run_dir).predict(path).probability
    meta = json.loads((run_dir / "meta.json").read_text())
    meta["referral"] = {"spec": "test", "lower": max(0.0, p - 0.01), "upper": min(1.0, p + 0.01)}  # a band around this image
    (run_dir / "meta.json").write_text(json.dumps(meta))
    record_decision(run_dir)
    assert main(["predict", str(run_dir), str(path)]) == 0
    client = TestClient(create_app(run_dir))
    r = client.post("/v1/predict", files=[("files", (path.name, path.read_bytes(), "image/png"))]).json()["results"][0]
    assert r["decision"]["label"] == "refer" and "refer to a reader" in r["decision"]["words"]


def test_referral_summary_prints_its_intervals_as_every_other_figure(capsys):
    from cxrkit.cli import _referral_summary

    e = lambda v, lo, hi: {"value": v, "ci": [lo, hi]}  # noqa: E731
    _referral_summary({"band": {"spec": "npv>=0.95", "lower": 0.1, "upper": 0.6},
                       "outcomes": {"decided_share": e(0.5, 0.4, 0.6), "ruled_out": 30, "ruled_in": 20, "referred": 50,
                                    "npv_ruled_out": e(0.96, 0.83, 0.99), "ppv_ruled_in": {"value": None, "ci": None}},
                       "per_1000": {"referred": 500, "missed": 4}}, ["healthy", "tb"])
    out = capsys.readouterr().out
    assert "decided alone 50.0% (95% CI 40.0–60.0%)" in out and "(NPV 96.0% (95% CI 83.0–99.0%))" in out and "(PPV n/a)" in out


def test_referral_outcomes_count_patients_where_they_have_several_films():
    import numpy as np

    from cxrkit.metrics.referral import referral_outcomes

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    p = np.clip(0.4 * y + 0.6 * rng.random(60), 0, 1)
    once = referral_outcomes(y, p, 0.3, 0.7)
    films = referral_outcomes(np.repeat(y, 3), np.repeat(p, 3), 0.3, 0.7)
    patients = referral_outcomes(np.repeat(y, 3), np.repeat(p, 3), 0.3, 0.7, patients=np.repeat(np.arange(60), 3))
    for k in ("decided_share", "npv_ruled_out", "ppv_ruled_in", "positives_missed", "error_rate_decided"):
        assert patients[k]["ci"] == pytest.approx(once[k]["ci"], abs=0.01), k
        assert patients[k]["numerator"] == films[k]["numerator"] and patients[k]["ci"][1] - patients[k]["ci"][0] >= films[k]["ci"][1] - films[k]["ci"][0]


def test_a_band_chosen_on_a_patients_several_films_says_what_they_cannot_establish():
    from cxrkit.metrics.referral import choose_referral

    # 60 validation patients with 3 identical films each: by image, NPV 100% on 90 ruled-out films "established" 0.95 (Wilson
    # lower bound 95.9%); the 90 films are 30 patients, whose lower bound is 88.6%.
    y = np.repeat(np.r_[np.zeros(30), np.ones(30)], 3).astype(int)
    p = np.repeat(np.r_[np.linspace(0.0, 0.3, 30), np.linspace(0.7, 1.0, 30)], 3)
    films = choose_referral(y, p, "npv:0.95,ppv:0.95")
    patients = choose_referral(y, p, "npv:0.95,ppv:0.95", patients=np.repeat(np.arange(60), 3))
    assert (films["lower"], films["upper"]) == (patients["lower"], patients["upper"])  # the band itself is chosen alike
    assert films["unsupported"] == []  # 90 films ruled out, all right: Wilson lower bound 95.9%
    assert patients["unsupported"] == [
        "npv 0.95 is met on validation (100.0%) but its 95% lower bound is 88.6%: 90 validation images (from 30 patients) cannot establish it",
        "ppv 0.95 is met on validation (100.0%) but its 95% lower bound is 88.6%: 90 validation images (from 30 patients) cannot establish it"]
