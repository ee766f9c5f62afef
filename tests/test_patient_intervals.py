"""Intervals that count patients: a patient's several images are not independent evidence."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from cxrkit.metrics.classification import binary_metrics, multiclass_metrics, multilabel_metrics
from cxrkit.metrics.inputs import patient_clusters
from cxrkit.metrics.intervals import clustered_delong_auc, clustered_wilson, delong_auc, delong_interval, wilson_interval
from cxrkit.report.narrative import evaluation_sentences


def _scores(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, rng.normal(size=n) + y


def _obuchowski_by_loops(y, s, c, s2=None) -> float:
    """Obuchowski's (1997) variance of one AUC, or with ``s2`` the covariance of two, written out case by case as the paper
    gives it (an independent check of the vectorised code)."""
    s2 = s if s2 is None else s2
    pos, neg = [i for i in range(len(y)) if y[i]], [i for i in range(len(y)) if not y[i]]
    ids = sorted(set(c))
    m = {k: sum(1 for i in pos if c[i] == k) for k in ids}
    n = {k: sum(1 for j in neg if c[j] == k) for k in ids}

    def parts(sc):
        psi = lambda a, b: 1.0 if sc[a] > sc[b] else 0.5 if sc[a] == sc[b] else 0.0  # noqa: E731
        auc = sum(psi(i, j) for i in pos for j in neg) / (len(pos) * len(neg))
        x = {k: sum(sum(psi(i, j) for j in neg) / len(neg) for i in pos if c[i] == k) - m[k] * auc for k in ids}
        z = {k: sum(sum(psi(i, j) for i in pos) / len(pos) for j in neg if c[j] == k) - n[k] * auc for k in ids}
        return x, z

    (x1, z1), (x2, z2) = parts(s), parts(s2)
    i10, i01, i_all = sum(v > 0 for v in m.values()), sum(v > 0 for v in n.values()), len(ids)
    big_m, big_n = len(pos), len(neg)
    s10 = i10 / ((i10 - 1) * big_m) * sum(x1[k] * x2[k] for k in ids)
    s01 = i01 / ((i01 - 1) * big_n) * sum(z1[k] * z2[k] for k in ids)
    s11 = i_all / (i_all - 1) * sum(x1[k] * z2[k] + x2[k] * z1[k] for k in ids) / 2
    return s10 / big_m + s01 / big_n + 2 * s11 / (big_m * big_n)


def test_clustered_auc_variance_matches_the_paper_and_reduces_to_delong():
    y, s = _scores(40)
    s = np.round(s, 1)  # ties count half in both
    c = np.random.default_rng(1).integers(0, 12, 40)
    assert clustered_delong_auc(y, s, c)[1] == pytest.approx(_obuchowski_by_loops(y, s, c), rel=1e-10)
    assert clustered_delong_auc(y, s, np.arange(40))[1] == pytest.approx(delong_auc(y, s)[1], rel=1e-12)


def test_four_copies_of_each_image_in_one_patient_give_the_original_intervals():
    # Counting images, four films of each patient made the AUC interval half as wide; counting patients, nothing changes.
    y, s = _scores(60)
    Y, S, C = np.repeat(y, 4), np.repeat(s, 4), np.repeat(np.arange(60), 4)
    assert delong_auc(Y, S)[1] == pytest.approx(delong_auc(y, s)[1] / 4, rel=0.05)  # about a quarter (n - 1 against 4n - 1)
    assert clustered_delong_auc(Y, S, C)[1] == pytest.approx(delong_auc(y, s)[1], rel=1e-10)
    assert clustered_wilson(Y, C)[0] == pytest.approx(wilson_interval(int(y.sum()), 60), rel=0.01)
    assert clustered_wilson(Y, C)[1] == pytest.approx(60)
    # All right on 40 images of 10 patients: the interval of 10 cases, not of 40.
    ci, n_eff = clustered_wilson(np.ones(40), np.repeat(np.arange(10), 4))
    assert n_eff == 10 and ci == pytest.approx(wilson_interval(10, 10))


def test_intervals_by_patient_cover_the_true_auc_where_image_intervals_do_not():
    rng = np.random.default_rng(7)
    true = norm.cdf(1 / np.sqrt(2 * 1.09))  # label shift 1; patient effect N(0, 1) shared by 3 images, image noise N(0, 0.3^2)
    hits_image = hits_patient = 0
    trials = 300
    for _ in range(trials):
        lab = np.repeat(rng.integers(0, 2, 50), 3)
        score = lab + np.repeat(rng.normal(size=50), 3) + 0.3 * rng.normal(size=150)
        lo, hi = delong_interval(lab, score)[1]
        hits_image += lo <= true <= hi
        lo, hi = delong_interval(lab, score, clusters=np.repeat(np.arange(50), 3))[1]
        hits_patient += lo <= true <= hi
    assert hits_image / trials < 0.80 and hits_patient / trials > 0.90


def test_clustered_auc_interval_is_never_narrower_and_absent_when_one_patient_holds_every_positive():
    y, s = _scores(60, seed=3)
    for seed in range(5):
        c = np.random.default_rng(seed).integers(0, 15, 60)
        lo, hi = delong_interval(y, s, clusters=c)[1]
        plain = delong_interval(y, s)[1]
        assert hi - lo >= plain[1] - plain[0] - 1e-12
    c = np.where(y == 1, 0, np.arange(60) + 1)
    assert delong_interval(y, s, clusters=c)[1] is None


def test_binary_metrics_count_patients():
    y, s = _scores(80, seed=5)
    prob = 1 / (1 + np.exp(-s))
    P = [f"p{i}" for i in np.repeat(np.arange(80), 3)]
    by_image = binary_metrics(np.repeat(y, 3), np.repeat(prob, 3), 0.5, n_bootstrap=200)
    by_patient = binary_metrics(np.repeat(y, 3), np.repeat(prob, 3), 0.5, n_bootstrap=200, patients=P)
    single = binary_metrics(y, prob, 0.5, n_bootstrap=200)
    assert by_patient["n_patients"] == 80 and by_patient["intervals_by"] == "patient" and "n_patients" not in by_image
    for k in ("sensitivity", "specificity", "ppv", "npv", "accuracy"):
        e = by_patient["metrics"][k]
        assert e["ci"] == pytest.approx(single["metrics"][k]["ci"]) and e["method"] == "wilson by patient"
        assert e["numerator"] == 3 * single["metrics"][k]["numerator"]  # the counts stay images
        assert by_image["metrics"][k]["ci"][1] - by_image["metrics"][k]["ci"][0] < 0.7 * (e["ci"][1] - e["ci"][0])
    assert by_patient["metrics"]["roc_auc"]["ci"] == pytest.approx(single["metrics"]["roc_auc"]["ci"])
    f1_patient, f1_image = by_patient["metrics"]["f1"]["ci"], by_image["metrics"]["f1"]["ci"]
    assert f1_patient[1] - f1_patient[0] > 1.4 * (f1_image[1] - f1_image[0])
    # Every patient once: the same figures as without IDs, and said to count images.
    once = binary_metrics(y, prob, 0.5, n_bootstrap=200, patients=[f"p{i}" for i in range(80)])
    assert once["intervals_by"] == "image" and once["metrics"]["f1"]["ci"] == single["metrics"]["f1"]["ci"]


def test_multiclass_metrics_count_patients():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 60)
    probs = rng.dirichlet(np.ones(3), 60) * 0.5
    probs[np.arange(60), y] += 0.5
    m = multiclass_metrics(np.repeat(y, 2), np.repeat(probs, 2, axis=0), ["a", "b", "c"], n_bootstrap=200, patients=np.repeat(np.arange(60), 2))
    one = multiclass_metrics(y, probs, ["a", "b", "c"], n_bootstrap=200)
    assert m["n_patients"] == 60 and m["metrics"]["accuracy"]["ci"] == pytest.approx(one["metrics"]["accuracy"]["ci"])
    assert m["per_class"]["b"]["roc_auc"]["ci"] == pytest.approx(one["per_class"]["b"]["roc_auc"]["ci"])
    assert m["metrics"]["macro_roc_auc"]["method"] == "bootstrap by patient"


def test_a_finding_on_many_images_of_few_patients_stays_out_of_the_mean():
    # NIH test split: seven Pneumothorax images, all of one patient, counted as seven cases.
    rng = np.random.default_rng(4)
    patients = np.repeat(np.arange(40), 3)
    y = np.zeros((120, 2), int)
    y[:, 0] = np.repeat(rng.integers(0, 2, 40), 3)
    y[:7, 1] = 1  # patients 0, 1 and one image of patient 2
    probs = np.clip(y * 0.4 + rng.random((120, 2)) * 0.6, 0, 1)
    plain = multilabel_metrics(y, probs, ["common", "rare"], np.array([0.5, 0.5]), n_bootstrap=100)
    m = multilabel_metrics(y, probs, ["common", "rare"], np.array([0.5, 0.5]), n_bootstrap=100, patients=patients)
    assert plain["findings_in_mean_auc"] == ["common", "rare"] and m["findings_in_mean_auc"] == ["common"]
    rare = m["per_label"]["rare"]
    assert rare["patients_with_it"] == 3 and rare["roc_auc"]["ci"] is None and "3 patient(s) with it only" in rare["roc_auc"]["note"]
    assert m["metrics"]["mean_roc_auc"]["method"] == "bootstrap over patients"
    text = " ".join(evaluation_sentences({**m, "n": 120}, "test"))
    assert "at least 5 patients with and without them" in text and "120 images come from 40 patients" in text


def test_cluster_bootstrap_keeps_a_patients_images_together():
    from cxrkit.metrics.intervals import cluster_draw

    y = np.repeat([0, 1, 0, 1, 1], 2)
    draw, rng = cluster_draw(y, np.repeat(np.arange(5), 2), stratified=True), np.random.default_rng(0)
    for _ in range(20):
        idx = draw(rng)  # images 2k and 2k+1 (one patient) are drawn together, as often as each other
        assert np.array_equal(np.bincount(idx, minlength=10)[0::2], np.bincount(idx, minlength=10)[1::2])
        assert (y[idx] == 1).sum() == 6  # stratified: three patients with the disease in every resample


def test_bootstrap_by_patient_is_never_narrower_than_by_image():
    # Every positive from one patient: resampling patients held the positives still, and F1 was 0.857 (0.857-0.857),
    # with a note that "the model made one call for every case", beside 0.729-0.962 by image.
    y = np.r_[np.ones(20, int), np.zeros(20, int)]
    prob = np.r_[np.full(15, 0.9), np.full(5, 0.1), np.linspace(0.05, 0.95, 20)]
    patients = np.r_[np.zeros(20, int), np.arange(1, 21)]
    by_image = binary_metrics(y, prob, 0.5, n_bootstrap=300)["metrics"]
    by_patient = binary_metrics(y, prob, 0.5, n_bootstrap=300, patients=patients)["metrics"]
    for k in ("f1", "balanced_accuracy", "pr_auc"):
        lo, hi = by_patient[k]["ci"]
        assert hi - lo >= by_image[k]["ci"][1] - by_image[k]["ci"][0] - 1e-12 and hi - lo > 0.05 and "note" not in by_patient[k]
    # one patient holds the positives: the proportion counts one case, and the AUC has no interval
    assert by_patient["sensitivity"]["effective_n"] == 1.0 and by_patient["roc_auc"]["ci"] is None


def test_a_dominant_patient_widens_the_interval():
    # NIH test split: one patient held 39 of 57 positives, and sensitivity kept its image-level interval.
    rng = np.random.default_rng(0)
    hits = np.r_[rng.random(39) < 0.5, rng.random(18) < 0.5]
    clusters = np.r_[np.zeros(39, int), np.arange(1, 19)]
    ci, n_eff = clustered_wilson(hits, clusters)
    assert n_eff == pytest.approx(57 * 57 / (39 * 39 + 18)) and ci[1] - ci[0] > 0.6
    # 19 and 20 of 20 from one patient: both one case (was 0.764-0.991 at n 20 for 19, 0.207-1.0 for 20)
    assert clustered_wilson(np.r_[np.ones(19), 0], np.zeros(20))[1] == clustered_wilson(np.ones(20), np.zeros(20))[1] == 1.0


def test_patient_ids_are_checked():
    assert patient_clusters(None, 3) is None
    assert patient_clusters(["a", "b", "c"], 3) is None  # one image each: independent
    assert patient_clusters(["a", "b", "a"], 3).tolist() == [0, 1, 0]
    assert patient_clusters([3, 4, 3], 3).tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="one per image"):
        patient_clusters(["a", "b"], 3)
    assert patient_clusters([1, 1.0, "1", 2], 4).tolist() == [0, 0, 0, 1]  # one patient, whatever the type
    for missing in (["a", None, "a"], [1.0, float("nan"), 1.0], ["a", "nan", "a"], ["a", "  ", "a"], ["a", np.float32("nan"), "a"],
                    np.array(["2020-01-01", "NaT", "2020-01-01"], dtype="datetime64[D]")):
        with pytest.raises(ValueError, match="1 are missing"):  # each was one more "patient" holding every such image
            patient_clusters(missing, 3)
    with pytest.raises(ValueError, match="true/false"):
        patient_clusters(np.array([True, False, True]), 3)
    with pytest.raises(ValueError, match="one per image"):
        binary_metrics([0, 1, 1], [0.1, 0.8, 0.7], 0.5, patients=["a", "a"])


def test_paired_delong_by_patient_matches_the_paper_and_the_unrepeated_cases():
    from cxrkit.metrics.intervals import delong_paired

    y, s = _scores(60, seed=8)
    other = s + np.random.default_rng(9).normal(0, 0.8, 60)
    plain = delong_paired(y, s, other)
    assert delong_paired(y, s, other, clusters=np.arange(60))["se"] == pytest.approx(plain["se"], rel=1e-12)
    repeated = delong_paired(np.repeat(y, 3), np.repeat(s, 3), np.repeat(other, 3), clusters=np.repeat(np.arange(60), 3))
    assert repeated["se"] == pytest.approx(plain["se"], rel=1e-9) and repeated["p_value"] == pytest.approx(plain["p_value"], rel=1e-6)
    assert delong_paired(np.repeat(y, 3), np.repeat(s, 3), np.repeat(other, 3))["p_value"] < plain["p_value"] / 3
    # var(a - b) = var(a) + var(b) - 2 cov(a, b), each from Obuchowski's formulas written out; here each model reads its own
    # patient-level quirk, so the difference is clustered and its variance is above DeLong's
    for seed in range(3):
        rng = np.random.default_rng(seed)
        c, y = np.repeat(np.arange(20), 3), np.repeat(rng.integers(0, 2, 20), 3)
        a, b = (y + np.repeat(rng.normal(size=20), 3) + 0.3 * rng.normal(size=60) for _ in range(2))
        var_d = _obuchowski_by_loops(y, a, c) + _obuchowski_by_loops(y, b, c) - 2 * _obuchowski_by_loops(y, a, c, b)
        assert var_d > 2 * delong_paired(y, a, b)["se"] ** 2
        assert delong_paired(y, a, b, clusters=c)["se"] ** 2 == pytest.approx(var_d, rel=1e-9)


def test_sentences_say_why_a_figure_has_no_interval():
    # All 60 test images of one placeholder patient: "ROC-AUC 0.448 ():", empty brackets where the interval belongs.
    y = np.r_[np.ones(20, int), np.zeros(20, int)]
    prob = np.linspace(0.05, 0.95, 40)[::-1]
    m = binary_metrics(y, prob, 0.5, n_bootstrap=50, patients=np.r_[np.zeros(20, int), np.arange(1, 21)])
    text = " ".join(evaluation_sentences({**m, "classes": ["normal", "tb"]}, "test"))
    assert "ROC-AUC 1.000 (no interval: every positive image comes from one patient)" in text and "()" not in text


def test_images_without_a_patient_id_are_not_called_patients():
    # "These 26 images come from 24 patients": 20 of the 24 were images whose patient nobody named.
    from types import SimpleNamespace

    from cxrkit.data.splits import OWN_ID_PREFIX
    from cxrkit.evaluation.evaluate import compute_metrics
    from cxrkit.tasks import get_task

    y, s = _scores(26, seed=2)
    prob = np.stack([1 - 1 / (1 + np.exp(-s)), 1 / (1 + np.exp(-s))], axis=1)
    patients = ["a", "a", "b", "b", "c", "c"] + [f"{OWN_ID_PREFIX}img{i}.png" for i in range(20)]
    run = SimpleNamespace(task_object=get_task("binary"), classes=["normal", "tb"], threshold=0.5, thresholds=None,
                          record=SimpleNamespace(threshold_rule=None))
    m = compute_metrics(run, y, prob, patients=patients)
    assert m["n_patients"] == 23 and m["images_without_patient_id"] == 20
    assert "from 23 patients (20 of them images without a patient ID, each counted as its own)" in " ".join(evaluation_sentences(m, "test"))


def test_the_paired_test_falls_back_to_delong_when_one_patient_holds_every_positive():
    from cxrkit.metrics.intervals import delong_paired

    y = np.r_[np.ones(10), np.zeros(10)]
    a = np.linspace(0, 1, 20)[::-1]
    b = a + np.random.default_rng(0).normal(0, 0.3, 20)
    clustered = delong_paired(y, a, b, clusters=np.r_[np.zeros(10), np.arange(1, 11)])  # was a ValueError that stopped compare
    assert clustered["p_value"] == pytest.approx(delong_paired(y, a, b)["p_value"])
