import numpy as np
import pytest

from cxrkit.metrics.thresholds import choose_threshold, parse_rule, threshold_spread

Y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
P = np.array([0.05, 0.1, 0.2, 0.35, 0.6, 0.3, 0.55, 0.7, 0.8, 0.9])


def test_youden_maximises_sensitivity_plus_specificity():
    t = choose_threshold(Y, P, "youden")
    # At 0.55: TP 4/5, TN 4/5 -> J = 0.6, the best on this data.
    assert t.value == pytest.approx(0.55)
    assert (t.sensitivity, t.specificity) == (0.8, 0.8)
    assert t.chosen_on == "val"


def test_sensitivity_rule_picks_best_specificity_meeting_target():
    t = choose_threshold(Y, P, "sensitivity:0.9")
    assert t.sensitivity >= 0.9
    assert t.value == pytest.approx(0.3) and t.specificity == pytest.approx(0.6)


def test_specificity_rule():
    t = choose_threshold(Y, P, "specificity:0.95")
    assert t.specificity == 1.0 and t.value == pytest.approx(0.7) and t.sensitivity == pytest.approx(0.6)


def test_fixed_threshold_and_bad_rules():
    assert choose_threshold(Y, P, "0.5").value == 0.5
    assert choose_threshold(Y, P, "fixed:0.25").value == 0.25
    for bad in ("magic", "sensitivity:1.5", "2", "sensitivity:"):
        with pytest.raises(ValueError):
            parse_rule(bad)
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold(np.zeros(4), np.linspace(0, 1, 4), "youden")


# ---- guaranteed rules: sensitivity:X@C -----------------------------------------------------------------------------
def test_guaranteed_rule_holds_on_new_data_and_the_point_rule_does_not():
    """Over repeated validation draws, the true sensitivity at the chosen threshold falls below the target in <= 5% of
    draws with the guaranteed rule (one-sided 95% Clopper-Pearson), and in about half with the point rule."""
    from scipy.stats import norm

    from cxrkit.metrics.thresholds import choose_threshold

    rng = np.random.default_rng(7)
    draws, n_pos, n_neg, target = 400, 150, 150, 0.90
    short = {"point": 0, "guaranteed": 0}
    for _ in range(draws):
        y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
        z = np.r_[rng.normal(1.5, 1, n_pos), rng.normal(0, 1, n_neg)]  # positives' log-odds ~ N(1.5, 1)
        p = 1 / (1 + np.exp(-z))  # thresholds are chosen on probabilities
        for kind, rule in (("point", "sensitivity:0.9"), ("guaranteed", "sensitivity:0.9@0.95")):
            t = choose_threshold(y, p, rule).value
            true_sensitivity = 1 - norm.cdf(np.log(t / (1 - t)), loc=1.5)
            short[kind] += true_sensitivity < target
    assert short["guaranteed"] / draws <= 0.05
    assert 0.3 <= short["point"] / draws <= 0.7


def test_guaranteed_rule_reports_its_bound_and_prefers_the_highest_threshold():
    from cxrkit.metrics.thresholds import choose_threshold, clopper_pearson_lower

    rng = np.random.default_rng(0)
    y = np.r_[np.ones(100), np.zeros(100)]
    p = 1 / (1 + np.exp(-np.r_[rng.normal(1, 1, 100), rng.normal(0, 1, 100)]))
    c = choose_threshold(y, p, "sensitivity:0.9@0.95")
    assert c.kind == "guaranteed" and c.guarantee["cases"] == 100 and c.guarantee["lower_bound"] >= 0.9
    detected = int((p[:100] >= c.value).sum())
    assert c.guarantee["lower_bound"] == pytest.approx(float(clopper_pearson_lower(detected, 100, 0.95)))
    # One more missed positive (the next higher threshold) would break the bound.
    assert float(clopper_pearson_lower(detected - 1, 100, 0.95)) < 0.9
    assert choose_threshold(y, p, "sensitivity:0.9").value > c.value  # the point rule is less cautious
    s = choose_threshold(y, p, "specificity:0.9@0.95")
    assert s.kind == "guaranteed" and s.guarantee["metric"] == "specificity" and s.specificity >= 0.9


def test_a_guarantee_counts_patients_where_a_patient_has_several_images():
    """A patient's films share much of their score: counted as independent, the guarantee held 82% of the time, not 95%."""
    from scipy.stats import norm

    from cxrkit.metrics.thresholds import choose_threshold

    rng = np.random.default_rng(0)
    sd = np.hypot(1.5, 0.5)  # the positives' log-odds: a patient effect (SD 1.5) and a film effect (SD 0.5) around 1.0
    held = {"image": 0, "patient": 0}
    for _ in range(200):
        patient = np.r_[np.repeat(np.arange(40), 4), 100 + np.arange(160)]  # 40 positive patients x 4 films, 160 negatives
        z = np.r_[np.repeat(rng.normal(0, 1.5, 40), 4) + rng.normal(1.0, 0.5, 160), rng.normal(-1, 1, 160)]
        y, p = np.r_[np.ones(160), np.zeros(160)], 1 / (1 + np.exp(-z))
        for by, ids in (("image", None), ("patient", patient)):
            t = choose_threshold(y, p, "sensitivity:0.9@0.95", patients=ids).value
            held[by] += 1 - norm.cdf(np.log(t / (1 - t)), loc=1.0, scale=sd) >= 0.9
    assert held["image"] / 200 < 0.88 and held["patient"] / 200 >= 0.92, held
    c = choose_threshold(y, p, "sensitivity:0.9@0.95", patients=patient)
    assert c.guarantee["patients"] == 40 and c.guarantee["cases"] == 160 and 40 <= c.guarantee["effective_cases"] < 160
    assert c.value <= choose_threshold(y, p, "sensitivity:0.9@0.95").value  # never less cautious than the image count
    # One image per patient: the image-level choice exactly.
    assert choose_threshold(y, p, "sensitivity:0.9@0.95", patients=np.arange(320)).to_dict() == choose_threshold(
        y, p, "sensitivity:0.9@0.95").to_dict()
    # 30 positives from 3 patients prove nothing at 0.9: taken as alike, they are worth 900 / (64 + 100 + 144) = 2.9 cases.
    from cxrkit.metrics.thresholds import GuaranteeImpossible

    with pytest.raises(GuaranteeImpossible, match=r"30 positive case\(s\) from 3 patients \(worth 2.9 independent cases"):
        choose_threshold(np.r_[np.ones(30), np.zeros(30)], np.linspace(0, 1, 60), "sensitivity:0.9@0.95",
                         patients=np.r_[np.repeat([1, 2, 3], [8, 10, 12]), np.arange(10, 40)])


def test_the_spread_of_a_guaranteed_threshold_resamples_the_rule_as_it_chose_counting_patients():
    # The resamples chose by the image-level bound while the run's threshold counted patients: the range described a less
    # cautious rule and missed the threshold in use (0.162 against a range of 0.172-0.347).
    from cxrkit.metrics.thresholds import choose_threshold

    rng = np.random.default_rng(0)
    patient = np.r_[np.repeat(np.arange(40), 4), 100 + np.arange(160)]
    z = np.r_[np.repeat(rng.normal(0, 1.5, 40), 4) + rng.normal(1.0, 0.5, 160), rng.normal(-1, 1, 160)]
    y, p = np.r_[np.ones(160), np.zeros(160)], 1 / (1 + np.exp(-z))
    y_test, p_test = np.r_[np.ones(500), np.zeros(500)], 1 / (1 + np.exp(-np.r_[rng.normal(1, 1.58, 500), rng.normal(-1, 1, 500)]))
    chosen = choose_threshold(y, p, "sensitivity:0.9@0.95", patients=patient).value
    by_image = threshold_spread(y, p, "sensitivity:0.9@0.95", y_test, p_test)["threshold"]
    by_patient = threshold_spread(y, p, "sensitivity:0.9@0.95", y_test, p_test, val_patients=patient)["threshold"]
    assert not by_image[0] <= chosen <= by_image[1] and by_patient[0] <= chosen <= by_patient[1], (chosen, by_image, by_patient)


def test_the_patients_effective_cases_at_every_threshold_match_the_clustered_wilson_interval():
    from cxrkit.metrics.intervals import clustered_wilson, effective_cases_by_prefix

    rng = np.random.default_rng(3)
    for _ in range(50):
        n = int(rng.integers(2, 40))
        clusters = rng.integers(0, int(rng.integers(1, 15)), n)
        by_prefix = effective_cases_by_prefix(clusters)
        for j in range(n + 1):
            assert by_prefix[j] == pytest.approx(clustered_wilson(np.r_[np.ones(j), np.zeros(n - j)], clusters)[1], abs=1e-9)


def test_train_refuses_a_guarantee_its_validation_patients_cannot_give():
    from types import SimpleNamespace

    from cxrkit.training.trainer import _check_guarantee_possible

    cfg, task = SimpleNamespace(threshold_rule="sensitivity:0.9@0.95", allow_point_estimate=False), SimpleNamespace(name="binary")
    y = np.r_[np.ones(40), np.zeros(40)]
    _check_guarantee_possible(cfg, task, y)  # 40 positive images: enough (29 needed) when they are 40 patients
    with pytest.raises(ValueError, match=r"needs at least 29 positive validation images .*; the validation split has 40 from 4 patients, "
                                         r"worth 4.0 independent cases"):
        _check_guarantee_possible(cfg, task, y, [f"p{i // 10}" for i in range(40)] + [f"n{i}" for i in range(40)])


def test_guaranteed_rule_with_too_few_cases():
    from cxrkit.metrics.thresholds import GuaranteeImpossible, cases_needed, choose_threshold

    assert cases_needed(0.9, 0.95) == 29  # 0.95 = 1 - 0.9^n  ->  n = 28.4
    y = np.r_[np.ones(12), np.zeros(30)]
    p = np.linspace(0, 1, 42)
    with pytest.raises(GuaranteeImpossible, match="12 positive case.*at least 29"):
        choose_threshold(y, p, "sensitivity:0.9@0.95")
    c = choose_threshold(y, p, "sensitivity:0.9@0.95", allow_point_estimate=True)
    assert c.kind == "point" and c.rule == "sensitivity:0.9" and c.requested_rule == "sensitivity:0.9@0.95"


@pytest.mark.parametrize("rule", ["youden@0.95", "sensitivity:0.9@1.5", "sensitivity:1@0.95", "0.5@0.9", "sensitivity:x@0.9"])
def test_bad_guaranteed_rules(rule):
    from cxrkit.metrics.thresholds import parse_rule

    with pytest.raises(ValueError):
        parse_rule(rule)


def test_train_refuses_a_guarantee_its_validation_split_cannot_give(binary_data, tmp_path, capsys):
    from cxrkit.cli import main

    code = main(["train", str(binary_data), "--out", str(tmp_path / "r"), "--image-size", "32", "--epochs", "1",
                 "--threshold-rule", "sensitivity:0.95@0.95"])
    err = capsys.readouterr().err
    assert code == 2 and "needs at least 59 positive validation images" in err
    assert not (tmp_path / "r" / "model.safetensors").exists()  # refused before any training time was spent


def _scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n negatives and n positives whose logits differ by 1.5 standard deviations (AUC about 0.86)."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n), np.ones(n)].astype(int)
    return y, 1 / (1 + np.exp(-rng.normal(1.5 * y, 1)))


def test_threshold_spread_shows_how_much_a_small_validation_split_moves_the_operating_point():
    y_test, p_test = _scores(500, 0)
    small = threshold_spread(*_scores(24, 1), "youden", y_test, p_test)
    big = threshold_spread(*_scores(1000, 2), "youden", y_test, p_test)
    assert small["n_val"] == {"positive": 24, "negative": 24} and small["resamples"] == 1000 and small["failed_resamples"] == 0
    width = {k: (small[k][1] - small[k][0], big[k][1] - big[k][0]) for k in ("threshold", "sensitivity", "specificity")}
    for k, (w_small, w_big) in width.items():
        assert w_small > 1.5 * w_big > 0, (k, width)
    assert width["sensitivity"][0] > 0.2  # 24 cases a class: test sensitivity can move by more than 20 points
    # the ranges are the rule's thresholds applied to the evaluated scores: their ends are attained sensitivities
    lo, hi = small["threshold"]
    assert (p_test[y_test == 1] >= hi).mean() == pytest.approx(small["sensitivity"][0], abs=0.03)
    assert (p_test[y_test == 1] >= lo).mean() == pytest.approx(small["sensitivity"][1], abs=0.03)
    assert threshold_spread(*_scores(24, 1), "youden", y_test, p_test) == small  # seeded


def test_threshold_spread_is_none_for_a_fixed_threshold_and_counts_impossible_guarantees():
    y_test, p_test = _scores(200, 0)
    assert threshold_spread(*_scores(50, 1), "0.5", y_test, p_test) is None
    assert threshold_spread(np.zeros(10, int), np.linspace(0, 1, 10), "youden", y_test, p_test) is None
    # sensitivity >= 0.90 at 95% confidence needs at least 29 positives: no resample of 20 can prove it
    assert threshold_spread(*_scores(20, 1), "sensitivity:0.90@0.95", y_test, p_test) is None
    g = threshold_spread(*_scores(400, 1), "sensitivity:0.90@0.95", y_test, p_test)
    assert g["failed_resamples"] < 500 and g["sensitivity"][0] > 0.85


def test_threshold_spread_refuses_mismatched_or_broken_inputs():
    y, p = np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.2, 0.8])
    # The messages are metrics.inputs.binary_pair's, as for every other metric function.
    with pytest.raises(ValueError, match="validation probabilities: 3 given for 4 labels"):
        threshold_spread(y, p[:3], "youden", y, p)
    with pytest.raises(ValueError, match="evaluated probabilities must be finite; 1 are NaN"):
        threshold_spread(y, p, "youden", y, np.array([0.1, np.nan, 0.2, 0.8]))
    with pytest.raises(ValueError, match=r"evaluated labels must be 0 \(negative\) or 1 \(positive\), got 2"):
        threshold_spread(y, p, "youden", np.array([0, 2, 0, 1]), p)
    with pytest.raises(ValueError, match="validation probabilities must lie in"):  # a 0-100 scale: the old check let it through
        threshold_spread(y, p * 100, "youden", y, p)


def test_the_threshold_spread_resamples_validation_patients():
    # Three validation films per patient: resampled as images, the threshold looked steadier than its patients make it.
    from cxrkit.metrics.thresholds import threshold_spread

    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 40)
    p = np.clip(0.5 * y + 0.6 * rng.random(40), 0, 1)
    y_eval = rng.integers(0, 2, 200)
    p_eval = np.clip(0.5 * y_eval + 0.6 * rng.random(200), 0, 1)
    once = threshold_spread(y, p, "youden", y_eval, p_eval, n_resamples=300)
    images = threshold_spread(np.repeat(y, 3), np.repeat(p, 3), "youden", y_eval, p_eval, n_resamples=300)
    patients = threshold_spread(np.repeat(y, 3), np.repeat(p, 3), "youden", y_eval, p_eval, n_resamples=300,
                                val_patients=np.repeat(np.arange(40), 3))
    width = lambda r: r["sensitivity"][1] - r["sensitivity"][0]  # noqa: E731
    assert patients["by_patient"] and width(patients) > 1.3 * width(images) and width(patients) == pytest.approx(width(once), rel=0.35)
    assert patients["n_val"] == {"positive": 3 * int(y.sum()), "negative": 3 * int((1 - y).sum())}
    assert patients["failed_resamples_by_patient"] == 0
    from cxrkit.report.narrative import threshold_spread_sentence

    said = threshold_spread_sentence(patients, 0.5, ["normal", "tb"])  # it named the validation resamples, never their patients
    assert "of its images and of its patients with all their images, the wider" in said
