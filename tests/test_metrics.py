import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

from cxrkit.metrics.classification import average_precision, binary_metrics, multiclass_metrics, rank_auc
from cxrkit.metrics.intervals import bootstrap_interval, delong_auc, delong_interval, wilson_interval


def _scores(n=300, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = np.clip(0.35 * y + rng.random(n) * 0.65, 0, 1)
    return y, (np.round(s, 1) if ties else s)


def test_wilson_matches_published_values():
    # Newcombe (1998), Stat Med 17:857, table I: 81/263 -> 0.2553 to 0.3662.
    lo, hi = wilson_interval(81, 263)
    assert lo == pytest.approx(0.2553, abs=1e-4) and hi == pytest.approx(0.3662, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.7225, abs=1e-4)
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(5, 3)


@pytest.mark.parametrize("ties", [False, True])
def test_fast_auc_and_ap_equal_sklearn(ties):
    y, s = _scores(ties=ties)
    assert rank_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert np.isnan(rank_auc(np.ones(5), np.arange(5)))


def test_delong_auc_and_variance_match_brute_force():
    y, s = _scores(n=80, seed=2, ties=True)
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)  # structural components per positive / per negative
    var = v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg)
    auc, dvar = delong_auc(y, s)
    assert auc == pytest.approx(psi.mean()) and auc == pytest.approx(roc_auc_score(y, s))
    assert dvar == pytest.approx(var, rel=1e-10)
    a, (lo, hi) = delong_interval(y, s)
    assert lo < a < hi and hi - lo == pytest.approx(2 * 1.959964 * np.sqrt(var), rel=1e-5)


def test_binary_metrics_against_hand_confusion_matrix():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.4, 0.7, 0.6, 0.1, 0.2, 0.3, 0.05, 0.55])
    m = binary_metrics(y, p, threshold=0.5)
    # Positive when p >= 0.5: TP = 3 (0.9, 0.8, 0.7), FN = 1 (0.4), FP = 2 (0.6, 0.55), TN = 4.
    assert m["confusion"] == {"tp": 3, "fp": 2, "tn": 4, "fn": 1}
    mm = m["metrics"]
    assert mm["sensitivity"]["value"] == 0.75 and mm["sensitivity"]["denominator"] == 4
    assert mm["specificity"]["value"] == pytest.approx(4 / 6)
    assert mm["ppv"]["value"] == pytest.approx(3 / 5) and mm["npv"]["value"] == pytest.approx(4 / 5)
    assert mm["accuracy"]["value"] == pytest.approx(0.7)
    pred = (p >= 0.5).astype(int)
    assert mm["f1"]["value"] == pytest.approx(f1_score(y, pred))
    assert mm["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert mm["roc_auc"]["value"] == pytest.approx(roc_auc_score(y, p))
    assert mm["pr_auc"]["value"] == pytest.approx(average_precision_score(y, p))
    lo, hi = mm["sensitivity"]["ci"]
    assert (lo, hi) == pytest.approx(wilson_interval(3, 4))


def test_binary_metrics_agree_with_sklearn_on_random_data():
    y, s = _scores(n=500, seed=5)
    m = binary_metrics(y, s, 0.5)
    tn, fp, fn, tp = confusion_matrix(y, s >= 0.5).ravel()
    assert m["confusion"] == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    for key in ("f1", "balanced_accuracy", "pr_auc", "roc_auc"):
        lo, hi = m["metrics"][key]["ci"]
        assert lo <= m["metrics"][key]["value"] <= hi


def test_zero_division_is_reported_as_undefined():
    y = np.array([0, 0, 1, 1])
    m = binary_metrics(y, np.array([0.1, 0.2, 0.3, 0.4]), threshold=0.9)  # never says positive
    assert m["metrics"]["ppv"]["value"] is None and m["metrics"]["ppv"]["ci"] is None
    assert m["metrics"]["sensitivity"]["value"] == 0.0
    assert np.isnan(m["metrics"]["f1"]["value"] or np.nan) or m["metrics"]["f1"]["value"] == 0.0
    only_neg = binary_metrics(np.zeros(5, int), np.linspace(0, 1, 5), 0.5, n_bootstrap=50)
    assert only_neg["metrics"]["sensitivity"]["value"] is None
    assert only_neg["metrics"]["roc_auc"]["value"] is None


def test_multiclass_metrics_one_vs_rest():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 240)
    probs = rng.dirichlet([1, 1, 1], 240)
    probs[np.arange(240), y] += 0.6
    probs /= probs.sum(axis=1, keepdims=True)
    m = multiclass_metrics(y, probs, ["Covid", "Normal", "Viral Pneumonia"], n_bootstrap=200)
    np.testing.assert_array_equal(np.array(m["confusion"]), confusion_matrix(y, probs.argmax(1)))
    assert m["metrics"]["accuracy"]["value"] == pytest.approx(np.mean(probs.argmax(1) == y))
    assert m["metrics"]["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(y, probs.argmax(1)))
    assert m["metrics"]["macro_f1"]["value"] == pytest.approx(f1_score(y, probs.argmax(1), average="macro"))
    assert m["metrics"]["macro_roc_auc"]["value"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    covid = m["per_class"]["Covid"]
    yc, pc = y == 0, probs.argmax(1) == 0
    assert covid["sensitivity"]["value"] == pytest.approx((yc & pc).sum() / yc.sum())
    assert covid["specificity"]["value"] == pytest.approx((~yc & ~pc).sum() / (~yc).sum())
    assert covid["roc_auc"]["value"] == pytest.approx(roc_auc_score(yc, probs[:, 0]))


def test_bootstrap_is_seeded_and_stratified():
    y, s = _scores(n=100, seed=9)
    a = bootstrap_interval(rank_auc, y, s, 200, seed=1)
    b = bootstrap_interval(rank_auc, y, s, 200, seed=1)
    c = bootstrap_interval(rank_auc, y, s, 200, seed=2)
    assert a == b and a != c


def test_perfect_separation_flags_the_degenerate_auc_interval():
    y = np.array([0, 0, 0, 1, 1, 1])
    m = binary_metrics(y, np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), 0.5, n_bootstrap=100)
    auc = m["metrics"]["roc_auc"]
    assert auc["value"] == 1.0 and auc["ci"] == [1.0, 1.0] and "perfectly separated" in auc["note"]
    assert "note" not in m["metrics"]["sensitivity"]  # Wilson stays informative: 3/3 -> 43.9%-100%
    assert m["metrics"]["sensitivity"]["ci"][0] == pytest.approx(0.4385, abs=1e-4)
    from cxrkit.report.narrative import binary_sentences

    assert "on more cases the AUC may well be lower" in " ".join(binary_sentences({**m, "classes": ["normal", "tb"]}, "the test set"))
    # Separated the wrong way round: AUC 0.000 was followed by "on more cases the AUC may well be lower".
    inverted = binary_metrics(y, np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1]), 0.5, n_bootstrap=100)
    text = " ".join(binary_sentences({**inverted, "classes": ["normal", "tb"]}, "the test set"))
    assert inverted["metrics"]["roc_auc"]["value"] == 0.0 and "may well be lower" not in text
    assert "every normal image scored above every tb image. The model's outputs are inverted" in text


def test_a_constant_score_is_not_called_perfectly_separated():
    # A diverged model that scores everything 0.0: AUC 0.500 (0.500-0.500) was explained as "perfectly separated".
    from cxrkit.report.narrative import binary_sentences

    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
    m = binary_metrics(y, np.zeros(9), 0.5, n_bootstrap=100)
    auc = m["metrics"]["roc_auc"]
    assert auc["value"] == 0.5 and auc["ci"] == [0.5, 0.5] and "every case got the same score" in auc["note"]
    text = " ".join(binary_sentences({**m, "classes": ["normal", "tb"]}, "the validation set"))
    assert "does not tell the classes apart at all" in text and "perfectly separated" not in text


def test_one_call_for_every_image_is_not_explained_as_tied_scores():
    # A 3-class model calling every image class 0 had balanced accuracy 0.333 (0.333-0.333) "because every case got the same
    # score", beside per-class AUCs well above chance: its scores differed, its calls did not.
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    logits = rng.normal(size=(60, 3)) + 1.5 * np.eye(3)[y]
    logits[:, 0] += 10  # the top class is always 0, the ranking within each column still follows the labels
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = multiclass_metrics(y, probs, ["covid", "normal", "viral"], n_bootstrap=100)["metrics"]
    for key in ("balanced_accuracy", "macro_f1"):
        assert m[key]["ci"][0] == m[key]["ci"][1] and "made one call for every case" in m[key]["note"], key
        assert "same score" not in m[key]["note"]
    assert m["macro_roc_auc"]["value"] > 0.75 and "note" not in m["macro_roc_auc"]
    b = binary_metrics(np.array([0, 0, 0, 1, 1, 1]), np.array([0.6, 0.7, 0.8, 0.7, 0.8, 0.9]), 0.5, n_bootstrap=100)["metrics"]
    assert "made one call for every case" in b["balanced_accuracy"]["note"] and "note" not in b["roc_auc"]


def test_a_class_without_images_is_said_to_be_missing_not_measured():
    # A validation split with no covid images: the sentence read "Of the 0 covid images ... (sensitivity n/a, )" and the
    # macro AUC of 1.0 over the two classes present read as the three-class model's.
    from cxrkit.report.narrative import multiclass_sentences

    y = np.array([1, 1, 1, 2, 2, 2])
    p = np.array([[0.1, 0.6, 0.3]] * 3 + [[0.1, 0.4, 0.5]] * 3)
    m = multiclass_metrics(y, p, ["covid", "normal", "tb"], n_bootstrap=50)
    macro = m["metrics"]["macro_roc_auc"]
    assert macro["value"] == 1.0 and macro["missing_classes"] == ["covid"]
    assert macro["note"].startswith("averaged over the 2 of 3 classes present: no covid images here; zero-width")
    text = multiclass_sentences(m, "validation")
    assert text[0] == "The validation set has no <b>covid</b> images, so how well the model finds covid is not measured here; it never says covid."
    assert "n/a, )" not in " ".join(text)
    full = multiclass_metrics(np.array([0, 1, 2] * 3), np.eye(3)[[0, 1, 2] * 3] * 0.8 + 0.05, ["covid", "normal", "tb"], n_bootstrap=50)
    assert "missing_classes" not in full["metrics"]["macro_roc_auc"]


def test_multiclass_balanced_accuracy_when_the_model_predicts_a_class_the_split_lacks_says_nothing():
    """scikit-learn's warning ("y_pred contains classes not in y_true") was printed into `cxrkit train`'s output."""
    import warnings

    from cxrkit.metrics.classification import multiclass_metrics

    y = np.array([0, 0, 0, 1, 1, 1])
    probs = np.eye(3)[[0, 2, 0, 1, 1, 2]] * 0.8 + 0.2 / 3  # class 2 predicted twice, never true
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = multiclass_metrics(y, probs, ["a", "b", "c"], n_bootstrap=50)
    assert m["metrics"]["balanced_accuracy"]["value"] == pytest.approx((2 / 3 + 2 / 3) / 2)  # mean recall over the classes present
