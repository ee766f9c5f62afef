"""Calibration, operating points, prevalence and decision curves: hand-computed cases and a trained run."""

import json

import numpy as np
import pytest

from cxrkit.cli import main
from cxrkit.metrics.calibration import Calibration, brier_score, calibration_summary, ece_if_calibrated, expected_calibration_error, fit_calibration
from cxrkit.metrics.decision_curve import net_benefit
from cxrkit.metrics.intervals import wilson_interval
from cxrkit.metrics.operating_points import cases_to_confirm, operating_points, ppv_npv_at_prevalence, screening_outcomes, who_triage_check
from cxrkit.run import Run


def _overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes drawn from true risks, and a model whose logits are 3x too large (over-confident)."""
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(int)
    p = 1 / (1 + np.exp(-3 * true_logit))
    return y, np.stack([1 - p, p], axis=1)


@pytest.mark.parametrize("method", ["temperature", "platt", "isotonic"])
def test_calibration_reduces_ece_of_an_overconfident_model(method):
    y_val, p_val = _overconfident(2000, 0)
    y_test, p_test = _overconfident(2000, 1)
    cal = fit_calibration(y_val, p_val, method)
    before, after = expected_calibration_error(y_test, p_test), expected_calibration_error(y_test, cal.apply(p_test))
    assert before > 0.08 and after < before / 2, (before, after)
    assert brier_score(y_test, cal.apply(p_test)) < brier_score(y_test, p_test)
    assert np.allclose(cal.apply(p_test).sum(1), 1)
    if method == "temperature":
        assert cal.params["temperature"] == pytest.approx(3.0, rel=0.15)  # the planted over-confidence
    again = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert np.allclose(again.apply(p_test), cal.apply(p_test))


def test_calibration_summary_has_bootstrap_intervals_that_shrink_with_more_images():
    y_small, p_small = _overconfident(60, 3)
    y_big, p_big = _overconfident(2000, 3)
    small, big = calibration_summary(y_small, p_small), calibration_summary(y_big, p_big)
    for s in (small, big):
        for key in ("ece", "brier"):
            lo, hi = s[f"{key}_ci"]
            assert lo <= s[key] <= hi and lo < hi, (key, s)
    width = {n: s["ece_ci"][1] - s["ece_ci"][0] for n, s in (("small", small), ("big", big))}
    assert width["small"] > 3 * width["big"], width  # sqrt(2000/60) ~ 5.8
    # the over-confident model's ECE is well above zero on 2000 images, and the interval says so
    assert big["ece_ci"][0] > 0.08
    same = calibration_summary(y_small, p_small)
    assert same["ece_ci"] == small["ece_ci"]  # seeded: the same figures on every run
    bare = calibration_summary(y_small, p_small, n_bootstrap=0)
    assert bare["ece_ci"] is None and bare["brier_ci"] is None and bare["ece_if_calibrated"] is None and bare["ece"] == small["ece"]


def test_calibration_summary_checks_its_images_once_and_resamples_the_plain_measures(monkeypatch):
    import cxrkit.metrics.calibration as calibration
    from cxrkit.metrics.intervals import bootstrap_interval

    y, p = _overconfident(300, 4)
    q = np.random.default_rng(4).dirichlet([1, 1, 1], 300)
    yq = np.array([np.random.default_rng(i).choice(3, p=row) for i, row in enumerate(q)])
    checks = []
    real = calibration._probabilities
    monkeypatch.setattr(calibration, "_probabilities", lambda probs: checks.append(1) or real(probs))
    for labels, probs in ((y, p), (yq, q)):
        checks.clear()
        s = calibration_summary(labels, probs, n_bootstrap=200)
        # each resample picks rows of figures computed once: checking 100,000 images in each of 1,000 resamples took a minute
        assert len(checks) < 10, len(checks)
        assert s["ece_ci"] == pytest.approx(list(bootstrap_interval(expected_calibration_error, labels, probs, 200, 0.95, 0, stratified=False)), abs=1e-12)
        assert s["brier_ci"] == pytest.approx(list(bootstrap_interval(brier_score, labels, probs, 200, 0.95, 0, stratified=False)), abs=1e-12)
        rng, cum = np.random.default_rng(0), np.cumsum(probs, axis=1)
        draws = [expected_calibration_error(np.minimum((rng.random((len(probs), 1)) > cum).sum(1), probs.shape[1] - 1), probs)
                 for _ in range(200)]
        assert s["ece_if_calibrated"]["median"] == pytest.approx(np.median(draws), abs=1e-12)


def test_calibration_intervals_let_the_class_shares_vary():
    # every image predicted 0.3 and 30 of 100 positive: perfectly calibrated here, but another 100 images from the same
    # population would show 20-40 positives; resampling within each class would hold the 30 fixed (a zero-width interval)
    y = np.r_[np.ones(30), np.zeros(70)].astype(int)
    p = np.full(100, 0.3)
    s = calibration_summary(y, np.stack([1 - p, p], axis=1))
    assert s["ece"] == pytest.approx(0) and s["ece_ci"][0] == pytest.approx(0) and 0.06 < s["ece_ci"][1] < 0.15
    assert s["brier_ci"][1] - s["brier_ci"][0] > 0.04


def test_ece_chance_level_matches_a_perfectly_calibrated_model():
    rng = np.random.default_rng(5)
    t = rng.normal(0, 1.5, 60)
    p = 1 / (1 + np.exp(-t))
    probs = np.stack([1 - p, p], axis=1)
    chance = ece_if_calibrated(probs)
    # direct simulation: outcomes drawn from the probabilities themselves
    direct = [expected_calibration_error((rng.random(60) < p).astype(int), probs) for _ in range(400)]
    assert chance["median"] == pytest.approx(np.median(direct), abs=0.015)
    assert 0.08 < chance["median"] < chance["p95"] < 0.25  # far from zero on 60 images
    assert ece_if_calibrated(np.repeat(probs, 10, axis=0))["median"] < chance["median"] / 2.5  # ~1/sqrt(n)
    # an over-confident model's ECE on 2000 images is far above what chance gives it
    y_big, p_big = _overconfident(2000, 3)
    s = calibration_summary(y_big, p_big)
    assert s["ece"] > 2 * s["ece_if_calibrated"]["p95"]
    # multi-class: top-label confidence, outcomes drawn per class
    q = rng.dirichlet([1, 1, 1], 500)
    assert 0 < ece_if_calibrated(q)["median"] < 0.1


def test_temperature_scaling_multiclass_keeps_the_argmax():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 1, (3000, 3))
    y = np.array([rng.choice(3, p=np.exp(z) / np.exp(z).sum()) for z in logits])
    p = np.exp(4 * logits) / np.exp(4 * logits).sum(1, keepdims=True)
    cal = fit_calibration(y, p, "temperature")
    q = cal.apply(p)
    assert cal.params["temperature"] == pytest.approx(4.0, rel=0.15)
    assert (q.argmax(1) == p.argmax(1)).all()
    assert expected_calibration_error(y, q) < expected_calibration_error(y, p) / 2
    with pytest.raises(ValueError, match="binary runs"):
        fit_calibration(y, p, "platt")


def test_ece_and_brier_on_a_hand_case():
    # Four predictions of 0.8 of which 2 come true: one bin, |0.5 - 0.8| = 0.3.
    p = np.array([[0.2, 0.8]] * 4)
    y = np.array([1, 1, 0, 0])
    assert expected_calibration_error(y, p) == pytest.approx(0.3)
    assert brier_score(y, p) == pytest.approx((2 * 0.2**2 + 2 * 0.8**2) / 4)


def test_prevalence_adjusted_ppv_npv_follow_bayes_rule():
    ppv, npv = ppv_npv_at_prevalence(0.9, 0.8, 0.05)
    assert ppv == pytest.approx(0.045 / (0.045 + 0.19))  # 0.1915
    assert npv == pytest.approx(0.76 / (0.76 + 0.005))  # 0.9935
    ppv, npv = ppv_npv_at_prevalence(0.5, 0.5, 0.3)
    assert ppv == pytest.approx(0.3) and npv == pytest.approx(0.7)  # an uninformative test changes nothing
    sens = {"value": 0.9, "ci": [0.8, 0.95]}
    spec = {"value": 0.8, "ci": [0.7, 0.88]}
    s = screening_outcomes(sens, spec, 0.05)
    assert (s["with_disease"], s["found"], s["missed"]) == pytest.approx((50, 45, 5))
    assert s["false_alarms"] == pytest.approx(190) and s["confirmatory_tests"] == pytest.approx(235)
    assert s["ppv"]["ci"][0] == pytest.approx(ppv_npv_at_prevalence(0.8, 0.7, 0.05)[0])
    assert s["ppv"]["ci"][0] < s["ppv"]["value"] < s["ppv"]["ci"][1]
    with pytest.raises(ValueError, match="prevalence"):
        ppv_npv_at_prevalence(0.9, 0.8, 1.5)


def test_operating_points_are_chosen_on_validation_and_reported_on_the_other_split():
    # Validation: positives score 0.1..1.0 (10), negatives 0.0..0.45; sensitivity 90% needs threshold 0.2.
    y_val = np.r_[np.ones(10), np.zeros(10)].astype(int)
    p_val = np.r_[np.linspace(0.1, 1.0, 10), np.linspace(0.0, 0.45, 10)]
    y_ev = np.r_[np.ones(4), np.zeros(4)].astype(int)
    p_ev = np.array([0.9, 0.5, 0.25, 0.15, 0.3, 0.1, 0.05, 0.0])
    rows = {r["target"]: r for r in operating_points(y_val, p_val, y_ev, p_ev, sensitivities=(0.9,), specificities=())}
    r = rows["sensitivity ≥ 90%"]
    assert r["threshold"] == pytest.approx(0.2)
    assert r["confusion"] == {"tp": 3, "fp": 1, "tn": 3, "fn": 1}
    assert r["sensitivity"]["value"] == 0.75 and r["ppv"]["value"] == 0.75 and r["sensitivity"]["ci"][0] < 0.75
    w = who_triage_check(y_val, p_val, y_ev, p_ev)
    assert w["verdict"] == "fail"  # 75% sensitivity on the evaluated split


def test_cases_to_confirm_a_rate_that_only_its_point_estimate_meets():
    for rate, target in ((0.925, 0.90), (0.95, 0.90), (0.80, 0.70), (0.99, 0.90), (0.95, 0.70)):
        n = cases_to_confirm(rate, target)
        bounds = [wilson_interval(rate * k, k)[0] for k in range(1, n + 1)]
        assert bounds[-1] >= target > max(bounds[:-1]), (rate, n)  # the fewest: no smaller evaluation proves it
    assert cases_to_confirm(0.925, 0.90) == 554 and cases_to_confirm(0.95, 0.90) == 139
    assert cases_to_confirm(0.90, 0.90) is None and cases_to_confirm(0.85, 0.90) is None  # no number of cases proves it
    assert cases_to_confirm(0.9001, 0.90) is None  # more than the limit


def test_who_check_says_how_many_cases_would_confirm_a_point_estimate_pass():
    from cxrkit.report.narrative import cases_to_confirm_sentence

    # validation separates perfectly; on the evaluated split 37 of 40 positives and 38 of 40 negatives are right
    y_val, p_val = np.r_[np.zeros(40), np.ones(40)].astype(int), np.r_[np.full(40, 0.2), np.full(40, 0.8)]
    y_ev = np.r_[np.zeros(40), np.ones(40)].astype(int)
    p_ev = np.r_[np.full(38, 0.1), np.full(2, 0.9), np.full(3, 0.1), np.full(37, 0.9)]
    w = who_triage_check(y_val, p_val, y_ev, p_ev)
    assert w["verdict"] == "pass (point estimates)" and w["sensitivity"]["value"] == 0.925
    assert w["cases_to_confirm"] == {"positive": 554, "negative": None}  # specificity 95% (83.5-98.6) is already proven
    assert cases_to_confirm_sentence(w, ["healthy", "tb"]) == (
        "To prove the targets at the rates measured here, the lower 95% bounds need about 554 tb images (this split has 40) "
        "for sensitivity ≥ 90.0%.")
    assert cases_to_confirm_sentence({"verdict": "fail"}, ["healthy", "tb"]) is None
    close = {**w, "sensitivity": {**w["sensitivity"], "value": 0.9005}, "cases_to_confirm": {"positive": None, "negative": None}}
    assert "more than 100,000 tb images for sensitivity ≥ 90.0%" in cases_to_confirm_sentence(close, ["healthy", "tb"])
    equal = {**close, "sensitivity": {**w["sensitivity"], "value": 0.9}}
    assert "(sensitivity 90.0% only equals its target)" in cases_to_confirm_sentence(equal, ["healthy", "tb"])


def test_net_benefit_on_hand_cases():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    perfect = y.astype(float)
    dc = net_benefit(y, perfect, np.array([0.2, 0.5]))
    assert dc["model"] == pytest.approx([0.3, 0.3])  # every case found, no false alarm
    assert dc["treat_all"] == pytest.approx([0.3 - 0.7 * 0.25, 0.3 - 0.7])
    dc = net_benefit(y, perfect, np.array([0.5]), prevalence=0.05)
    assert dc["model"] == pytest.approx([0.05])


@pytest.fixture(scope="module")
def trained(binary_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "cal"
    args = ["train", str(binary_data), "--out", str(run), "--model", "cnn", "--image-size", "32", "--epochs", "3", "--batch-size", "16",
            "--lr", "3e-3"]
    assert main(args) == 0
    return binary_data, run


def test_calibrate_stores_the_map_and_keeps_decisions_consistent(trained, capsys):
    data, run_dir = trained
    before = Run.load(run_dir)
    assert before.calibration is None
    old_threshold = before.threshold
    assert main(["calibrate", str(run_dir), "--method", "temperature", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)  # stdout holds the JSON document alone
    run = Run.load(run_dir)
    assert doc["method"] == "temperature" and doc["params"] == pytest.approx(run.calibration["params"]) and doc["threshold"]
    assert run.calibration["method"] == "temperature" and run.calibration["fitted_on"].startswith("val")
    assert run.meta["threshold"]["uncalibrated_value"] == pytest.approx(old_threshold)
    from cxrkit.evaluation.evaluate import load_run_dataset

    ds, _ = load_run_dataset(run, progress=False)
    val = np.asarray(ds.images[ds.index("val")])
    raw, cal = run.predict_arrays(val, calibrated=False), run.predict_arrays(val)
    assert not np.allclose(raw, cal)
    # temperature scaling is monotone, so the re-chosen threshold makes the same validation decisions
    assert (run.decide(cal) == (raw[:, 1] >= old_threshold)).all()
    assert main(["evaluate", str(run_dir), "--prevalence", "0.05"]) == 0
    m = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert "calibrated" in m["calibration"] and m["calibration"]["calibrated"]["ece"] >= 0
    for c in (m["calibration"]["model"], m["calibration"]["calibrated"]):
        assert c["ece_ci"][0] <= c["ece"] <= c["ece_ci"][1] and c["brier_ci"][0] <= c["brier"] <= c["brier_ci"][1]
    ts = m["threshold_spread"]  # the run's rule re-applied to resamples of its validation split
    n_val = len(ds.index("val"))
    assert ts["n_val"]["positive"] + ts["n_val"]["negative"] == n_val and ts["rule"] == run.meta["threshold"]["rule"]
    assert 0 <= ts["threshold"][0] <= ts["threshold"][1] <= 1 and ts["sensitivity"][0] <= ts["sensitivity"][1]
    s = m["screening"]
    sens, spec = m["metrics"]["sensitivity"]["value"], m["metrics"]["specificity"]["value"]
    assert s["ppv"]["value"] == pytest.approx(ppv_npv_at_prevalence(sens, spec, 0.05)[0])
    assert s["found"] == pytest.approx(50 * sens)
    assert len(m["operating_points"]) == 6 and m["who_triage"]["verdict"] in ("pass", "pass (point estimates)", "fail")
    assert m["attention"]["n"] == 30 and 0 <= m["attention"]["mean_share"]["lung"] <= 1
    html = (run_dir / "report.html").read_text()
    for words in ("1,000 people screened", "another validation sample of that size",
                  "Operating points", "Decision curve", "Where does the model look", "after temperature calibration",
                  # the region shares explain the decided class, the gallery the positive one: the report says which is which
                  f"(a {run.classes[0]} call shows what cleared the image)", f"the gallery shows where the evidence for <b>{run.classes[1]}</b>",
                  # the kept epoch's AUC (one view) beside a validation table of test-time views read as two AUCs of one model
                  f"(validation AUC {run.meta['training']['best_val_auc']:.4f}, one view per image during training; the validation table above"):
        assert words in html, words
    assert main(["calibrate", str(run_dir), "--remove"]) == 0
    assert Run.load(run_dir).calibration is None and Run.load(run_dir).threshold == pytest.approx(old_threshold)
    # the stored validation predictions are the model's own again (later evaluations choose operating points on them)
    from cxrkit.evaluation.evaluate import validation_predictions

    _, stored = validation_predictions(Run.load(run_dir))
    assert np.allclose(stored, raw, atol=1e-5)
    after = json.loads((run_dir / "metrics.json").read_text())
    assert "calibrated" not in after["val"]["calibration"]
    removed = "evaluated with probabilities the run no longer gives (its calibration was removed since)"
    assert any(n.startswith(removed) for n in after["test"]["notes"])
    html = (run_dir / "report.html").read_text()
    assert removed in html  # the test figures were made with it, and say so
    # calibrated again: one note for the latest change, not a pile of them (one of which said "evaluated before the run was
    # calibrated" of a split scored with a calibration)
    assert main(["calibrate", str(run_dir), "--method", "temperature"]) == 0
    notes = json.loads((run_dir / "metrics.json").read_text())["test"]["notes"]
    stale = [n for n in notes if n.startswith("evaluated with probabilities the run no longer gives")]
    assert len(stale) == 1 and "(it was calibrated since)" in stale[0]


def test_calibrate_remove_on_a_run_never_calibrated_changes_nothing(tiny_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoint"))
    assert main(["evaluate", str(run), "--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".cxrkit.lock"}
    capsys.readouterr()
    assert main(["calibrate", str(run), "--remove"]) == 0
    assert capsys.readouterr().out.strip() == f"{run} has no calibration; nothing removed"
    # the test figures were never made with a calibration: no note may say they were
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".cxrkit.lock"} == before


@pytest.mark.parametrize("y, probs, message", [
    ([0, 1, 0, 1, 1], np.full((6, 2), 0.5), "one class index per row"),
    ([0, 1], [[0.5, 0.5], [np.nan, 0.2]], "must be finite; 1 row"),
    ([0, 2], [[0.5, 0.5], [0.8, 0.2]], r"class indices 0\.\.1"),
    ([0, 1], [[2.0, -1.0], [3.0, 0.2]], "not logits"),
    ([0.5, 1], [[0.5, 0.5], [0.8, 0.2]], "class indices"),
])
def test_calibration_measures_refuse_inputs_that_would_give_a_plausible_number(y, probs, message):
    for measure in (calibration_summary, brier_score, expected_calibration_error, fit_calibration):
        with pytest.raises(ValueError, match=message):
            measure(np.asarray(y), np.asarray(probs))
    with pytest.raises(ValueError, match="rate must be in"):
        cases_to_confirm(float("nan"), 0.9)


@pytest.mark.parametrize("method, message", [("platt", "has slope -"), ("isotonic", "is flat"), ("platt", "is flat")])
def test_calibrate_refuses_a_map_that_would_reverse_or_erase_the_ranking(method, message, tiny_run, tmp_path, monkeypatch, capsys):
    # A model whose validation probabilities run against the labels got a negative Platt slope: calibration.json turned every
    # ranking round (the likeliest image became the least likely) and predict called the opposite class. Probabilities that
    # do not rank the cases gave a flat map, one probability (and one decision) for every image.
    import shutil

    import cxrkit.evaluation.calibrate as calibrate

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoint"))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".cxrkit.lock"}
    seen = {}
    load = calibrate.load_run_dataset

    def remember(*args, **kwargs):
        ds, cfg = load(*args, **kwargs)
        seen["y"] = ds.labels[ds.index("val")]
        return ds, cfg

    def against_the_labels(self, images, *args, **kwargs):
        p = np.where(seen["y"] == 1, 0.3, 0.7) if "slope" in message else np.full(len(images), 0.4)
        return np.stack([1 - p, p], axis=1)

    monkeypatch.setattr(calibrate, "load_run_dataset", remember)
    monkeypatch.setattr(Run, "predict_arrays", against_the_labels)
    assert main(["calibrate", str(run), "--method", method]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {method} calibration on ") and message in err and "nothing was changed" in err and "\n" not in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".cxrkit.lock"} == before


def test_platt_fits_probabilities_that_differ_only_in_the_fourth_decimal():
    # A barely trained model (validation AUC 0.61, probabilities 0.49571-0.49590): L-BFGS on the raw logit stopped at its
    # starting point, slope 0, and every calibrated probability became 0.5 -- one decision for every image.
    from cxrkit.metrics.calibration import fit_calibration
    from cxrkit.metrics.classification import rank_auc

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    p1 = 0.4957 + 1e-4 * (0.5 * y + 0.7 * rng.random(40))
    cal = fit_calibration(y, np.stack([1 - p1, p1], axis=1), "platt")
    assert cal.params["slope"] > 1000
    after = cal.apply(np.stack([1 - p1, p1], axis=1))[:, 1]
    assert after.max() - after.min() > 0.5 and rank_auc(y, after) == pytest.approx(rank_auc(y, p1))
    assert cal.after["brier"] < cal.before["brier"]


@pytest.mark.parametrize("method", ["temperature", "platt", "isotonic"])
def test_calibration_refuses_images_the_model_never_gets_wrong(method):
    # 48 perfectly separated validation images: Platt's slope ran off (65 of 208 test probabilities became exactly 1.0, tied,
    # and the test AUC fell from 0.984 to 0.938) and isotonic jumped from 0 to 1 (AUC 0.912), without a word.
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 24)
    p1 = np.where(y == 1, rng.uniform(0.6, 0.99, 48), rng.uniform(0.01, 0.4, 48))
    with pytest.raises(ValueError, match="cannot be fitted on the 48 images .* nothing was changed"):
        fit_calibration(y, np.stack([1 - p1, p1], axis=1), method)
    p1[0] = 0.7  # one negative the model gets wrong: there is something to fit
    cal = fit_calibration(y, np.stack([1 - p1, p1], axis=1), method)
    assert cal.n == 48 and cal.after["brier"] <= cal.before["brier"] + 1e-9


def test_temperature_refuses_a_multiclass_split_without_a_wrong_top_class():
    y = np.array([0, 1, 2, 0, 1, 2])
    p = np.full((6, 3), 0.2) + 0.4 * np.eye(3)[y]
    with pytest.raises(ValueError, match="top class is right for every one"):
        fit_calibration(y, p, "temperature")
    p[0] = [0.3, 0.5, 0.2]
    assert fit_calibration(y, p, "temperature").params["temperature"] > 0


def test_calibrate_re_chooses_the_referral_band_and_refuses_the_runs_own_images_under_another_path(tiny_run, binary_data, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    assert main(["referral", str(run_dir), "sensitivity:0.95,specificity:0.95"]) == 0
    before = json.loads((run_dir / "meta.json").read_text())["referral"]
    # A copy of the training data is other data by path, and its "validation" cut holds training images: the map was fitted to them.
    copy = tmp_path / "copy"
    shutil.copytree(binary_data, copy)
    from cxrkit.data.synthetic import make_synthetic_dataset

    extra = make_synthetic_dataset(tmp_path / "extra", n_per_class=20, size=48, seed=5, signal=1.0)  # a larger folder: another cut
    for p in extra.rglob("*.png"):
        shutil.copy(p, copy / "train" / p.parent.name / f"extra_{p.name}")
    assert main(["calibrate", str(run_dir), str(copy)]) == 2
    assert "identical to images of this run's own splits" in capsys.readouterr().err
    assert main(["calibrate", str(run_dir), "--method", "platt"]) == 0
    out = capsys.readouterr().out
    meta = json.loads((run_dir / "meta.json").read_text())
    band, t = meta["referral"], meta["threshold"]["value"]
    # Its bounds were left on the uncalibrated scale: 98% "decided alone" against the 37% it was chosen for.
    assert band != before and band["spec"] == before["spec"] and band["lower"] <= t <= band["upper"]
    assert f"referral band {band['spec']} re-chosen on the calibrated validation probabilities" in out
    assert "(on the images it was fitted to, so optimistic" in out
    assert main(["calibrate", str(run_dir), "--remove"]) == 0
    restored = json.loads((run_dir / "meta.json").read_text())
    assert restored["referral"]["lower"] == pytest.approx(before["lower"]) and restored["referral"]["upper"] == pytest.approx(before["upper"])


def _inflated_multilabel(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Findings at 20%, 8% and 0% whose probabilities run high, as class-weighted training leaves them."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < np.array([0.2, 0.08, 0.0])).astype(int)
    z = 1.5 * (2 * y - 1) + rng.normal(0, 1.2, (n, 3)) + 1.5  # every finding shifted up by 1.5 on the logit
    return y, 1 / (1 + np.exp(-z))


def test_multilabel_calibration_maps_each_finding_and_keeps_every_decision():
    from cxrkit.metrics.calibration import calibration_in_the_large, fit_multilabel_calibration
    from cxrkit.metrics.classification import rank_auc

    names = ["common", "rarer", "unseen"]
    y_val, p_val = _inflated_multilabel(400, 0)
    y_test, p_test = _inflated_multilabel(2000, 1)
    cal = fit_multilabel_calibration(y_val, p_val, names)
    assert cal.params["how"] == ["platt", "platt", "intercept"] and cal.params["findings"] == names
    before = calibration_in_the_large(y_test, p_test, names)["per_finding"]
    after = calibration_in_the_large(y_test, cal.apply(p_test), names)["per_finding"]
    for k in ("common", "rarer"):  # mean probability 0.5-0.7 against 8-20% with the finding; calibrated, close to the share
        assert before[k]["mean_probability"] > 2 * before[k]["share_with_it"]
        assert abs(after[k]["mean_probability"] - after[k]["share_with_it"]) < 0.02 and after[k]["ece"] < before[k]["ece"] / 4
    # No validation image has the third finding: its intercept alone sets its mean to half a case in 401
    assert cal.apply(p_val)[:, 2].mean() == pytest.approx(0.5 / 401, rel=1e-3)
    for k in range(2):  # the ranking, and so every AUC, is unchanged
        assert rank_auc(y_test[:, k], cal.apply(p_test)[:, k]) == pytest.approx(rank_auc(y_test[:, k], p_test[:, k]))
    mapped = cal.apply(np.full((1, 3), 0.55))[0]  # and every decision at a threshold moved through the map
    assert np.array_equal(cal.apply(p_test) >= mapped[None, :], p_test >= 0.55)
    assert Calibration.from_dict(cal.to_dict()).apply(p_test) == pytest.approx(cal.apply(p_test))


def test_multilabel_calibration_never_reverses_a_finding_and_damaged_maps_are_refused():
    from cxrkit.metrics.calibration import fit_multilabel_calibration

    y, p = _inflated_multilabel(400, 2)
    p[:, 0] = 1 - p[:, 0]  # ranked backwards on validation: Platt's slope would be negative and flip every decision
    cal = fit_multilabel_calibration(y, p, ["a", "b", "c"])
    assert cal.params["how"][0] == "intercept" and cal.params["slope"][0] == 1.0
    d = cal.to_dict()
    for bad in ({"slope": [-1.0, 1.0, 1.0]}, {"slope": [1.0, 1.0]}, {"how": ["platt", "platt", "guess"]}, {"intercept": [0.0, float("nan"), 0.0]}):
        with pytest.raises(ValueError, match="per-finding platt map"):
            Calibration.from_dict({**d, "params": {**d["params"], **bad}})
    with pytest.raises(ValueError, match="0/1 labels and probabilities from 0 to 1"):
        fit_multilabel_calibration(y, p * 3, ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"\(images, 2\) labels"):
        fit_multilabel_calibration(y, p, ["a", "b"])


def test_calibration_intervals_resample_patients():
    # Three films per patient: resampled as images, the ECE and Brier intervals came out about half as wide.
    rng = np.random.default_rng(1)
    p = rng.random(120)
    y = (rng.random(120) < p).astype(int)
    probs = np.stack([1 - p, p], axis=1)
    once = calibration_summary(y, probs, n_bootstrap=300)
    images = calibration_summary(np.repeat(y, 3), np.repeat(probs, 3, axis=0), n_bootstrap=300)
    patients = calibration_summary(np.repeat(y, 3), np.repeat(probs, 3, axis=0), n_bootstrap=300, patients=np.repeat(np.arange(120), 3))
    width = lambda s: s["brier_ci"][1] - s["brier_ci"][0]  # noqa: E731
    assert width(patients) > 1.4 * width(images) and width(patients) == pytest.approx(width(once), rel=0.3)
    assert patients["ece"] == images["ece"] and patients["brier"] == images["brier"]


def test_a_map_keeps_the_order_of_probabilities_near_zero():
    # A confident model's rare finding: 298 of 400 probabilities under 1e-7 were clipped to one value by the map, its AUC
    # fell from 0.962 to 0.918, and 286 decisions at the moved threshold flipped.
    from cxrkit.metrics.calibration import fit_multilabel_calibration
    from cxrkit.metrics.classification import rank_auc

    rng = np.random.default_rng(0)
    y = (rng.random((400, 1)) < 0.3).astype(int)
    z = np.where(y == 1, rng.normal(-12, 5, (400, 1)), rng.normal(-24, 5, (400, 1)))
    p = (1 / (1 + np.exp(-z))).astype(np.float32).astype(np.float64)
    assert (p < 1e-7).sum() > 250
    cal = fit_multilabel_calibration(y, p, ["rare"])
    q = cal.apply(p)
    assert rank_auc(y[:, 0], q[:, 0]) == rank_auc(y[:, 0], p[:, 0])
    for t in (1e-12, 1.6e-8, 1e-5):
        assert np.array_equal(q[:, 0] >= cal.apply(np.array([[t]]))[0, 0], p[:, 0] >= t)
    binary = fit_calibration(y[:, 0], np.hstack([1 - p, p]), "platt")  # the binary map too
    assert rank_auc(y[:, 0], binary.apply(np.hstack([1 - p, p]))[:, 1]) == rank_auc(y[:, 0], p[:, 0])
