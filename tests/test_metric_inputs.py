"""The public metric functions refuse what they cannot measure honestly: labels other than 0/1, NaN or out-of-scale
scores, mismatched lengths, impossible thresholds and settings. Each was a plausible-looking wrong figure, a raw
traceback, or (a NaN score) a loop that never ended."""

from __future__ import annotations

import re

import numpy as np
import pytest

rng = np.random.default_rng(0)
Y = rng.integers(0, 2, 100)
P = np.clip(Y * 0.3 + rng.random(100) * 0.7, 0, 1)
P_NAN = P.copy()
P_NAN[:10] = np.nan


def _calls():
    from cxrkit.metrics.classification import binary_confusion, binary_metrics
    from cxrkit.metrics.decision_curve import net_benefit
    from cxrkit.metrics.intervals import delong_interval, delong_paired
    from cxrkit.metrics.operating_points import operating_point, ppv_npv_at_prevalence
    from cxrkit.metrics.readers import compare_with_reader
    from cxrkit.metrics.referral import choose_referral, referral_outcomes
    from cxrkit.metrics.subgroups import binary_subgroups
    from cxrkit.metrics.thresholds import choose_threshold

    groups = ["F", "M"] * 100
    return {
        # a NaN score: the DeLong midranks looped forever (NaN never equals itself)
        "delong_interval NaN": (lambda: delong_interval(Y, P_NAN), "finite; 10 are NaN"),
        "binary_metrics NaN": (lambda: binary_metrics(Y, P_NAN, 0.5), "finite; 10 are NaN"),
        "delong_paired NaN": (lambda: delong_paired(Y, P_NAN, P), "finite"),
        "subgroups NaN": (lambda: binary_subgroups(Y, P_NAN, groups[:100], 0.5, "sex"), "finite"),
        # labels 1/2: every image counted positive, 156 positives among 100 images
        "binary_metrics labels 1/2": (lambda: binary_metrics(Y + 1, P, 0.5), "must be 0 (negative) or 1 (positive), got 2"),
        "binary_metrics labels 0/0.7": (lambda: binary_metrics(Y * 0.7, P, 0.5), "must be 0 (negative) or 1"),
        "operating_point labels 1/2": (lambda: operating_point(Y + 1, P, 0.5), "must be 0 (negative) or 1"),
        "choose_referral labels 1/2": (lambda: choose_referral(Y + 1, P, "npv:0.98,ppv:0.9"), "must be 0 (negative) or 1"),
        "referral_outcomes labels 1/2": (lambda: referral_outcomes(Y + 1, P, 0.2, 0.8), "must be 0 (negative) or 1"),
        "choose_threshold labels 1/2": (lambda: choose_threshold(Y + 1, P, "0.5"), "must be 0 (negative) or 1"),
        "net_benefit labels 1/2": (lambda: net_benefit(Y + 1, P), "must be 0 (negative) or 1"),
        "binary_confusion labels 1/2": (lambda: binary_confusion(Y + 1, Y), "must be 0 (negative) or 1"),
        # scores on a 0-100 scale, a NaN threshold
        "binary_metrics percentages": (lambda: binary_metrics(Y, P * 100, 0.5), "must lie in [0, 1], got values from"),
        "choose_threshold percentages": (lambda: choose_threshold(Y, P * 100), "must lie in [0, 1]"),
        "binary_metrics NaN threshold": (lambda: binary_metrics(Y, P, float("nan")), "threshold must be a number in [0, 1]"),
        # reader calls as text, 1/2 or NaN (unread): all read as positive, the reader's specificity 0
        "reader calls as text": (lambda: compare_with_reader(Y, P, 0.5, np.where(Y, "yes", "no")), "the reader's calls"),
        "reader calls 1/2": (lambda: compare_with_reader(Y, P, 0.5, Y + 1), "the reader's calls"),
        "reader calls NaN": (lambda: compare_with_reader(Y, P, 0.5, np.where(Y, 1.0, np.nan)), "the reader's calls"),
        # the decision curve
        "net_benefit NaN": (lambda: net_benefit(Y, P_NAN), "finite"),
        "net_benefit prevalence 5": (lambda: net_benefit(Y, P, prevalence=5), "prevalence must be a number in (0, 1)"),
        "net_benefit threshold 1": (lambda: net_benefit(Y, P, thresholds=np.array([0.5, 1.0])), "strictly between 0 and 1"),
        # subgroups: a shorter list silently dropped half the images; a string was one group per letter
        "subgroups short list": (lambda: binary_subgroups(np.r_[Y, Y], np.r_[P, P], groups[:100], 0.5, "sex"), "100 group values for 200"),
        "subgroups string": (lambda: binary_subgroups(Y[:3], P[:3], "FMF", 0.5, "sex"), "one group name (or None) per image"),
        # lengths, settings, empties: raw tracebacks before
        "binary_metrics lengths": (lambda: binary_metrics(Y, P[:90], 0.5), "90 given for 100 labels"),
        "binary_metrics n_bootstrap 0": (lambda: binary_metrics(Y, P, 0.5, n_bootstrap=0), "n_bootstrap must be a whole number"),
        "binary_metrics confidence 95": (lambda: binary_metrics(Y, P, 0.5, confidence=95), "confidence (e.g. 0.95, not 95)"),
        "binary_metrics empty": (lambda: binary_metrics(np.array([]), np.array([]), 0.5), "no images"),
        "binary_metrics 2-D labels": (lambda: binary_metrics(Y[:, None], P, 0.5), "one label per image (1-D)"),
        "ppv at sensitivity 90": (lambda: ppv_npv_at_prevalence(90, 0.9, 0.1), "sensitivity must be a number in [0, 1]"),
    }


@pytest.mark.parametrize("name", list(_calls()))
def test_bad_metric_inputs_are_refused_in_one_line(name):
    call, words = _calls()[name]
    with pytest.raises(ValueError) as exc:
        call()
    assert words in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


def test_multiclass_labels_out_of_range_and_class_lists_of_another_length_are_refused():
    from cxrkit.metrics.classification import multiclass_metrics, multilabel_metrics

    yk = rng.integers(0, 3, 60)
    pk = rng.dirichlet(np.ones(3), 60)
    with pytest.raises(ValueError, match=r"class indices 0\.\.2"):  # -1 was counted as class "c"
        multiclass_metrics(yk - 1, pk, ["a", "b", "c"], n_bootstrap=10)
    with pytest.raises(ValueError, match="2 class names for 3 probability columns"):
        multiclass_metrics(yk, pk, ["a", "b"], n_bootstrap=10)
    ym = rng.integers(0, 2, (40, 2))
    with pytest.raises(ValueError, match="one threshold per finding"):  # a scalar threshold: IndexError
        multilabel_metrics(ym, rng.random((40, 2)), ["x", "y"], 0.5, n_bootstrap=10)
    with pytest.raises(ValueError, match="finding labels must be 0"):
        multilabel_metrics(ym + 1, rng.random((40, 2)), ["x", "y"], np.array([0.5, 0.5]), n_bootstrap=10)


def test_valid_inputs_keep_their_figures_and_bool_labels_are_classes():
    from sklearn.metrics import roc_auc_score

    from cxrkit.metrics.calibration import fit_calibration
    from cxrkit.metrics.classification import binary_metrics
    from cxrkit.metrics.intervals import delong_interval

    as_int = binary_metrics(Y, P, 0.5, n_bootstrap=50)
    as_bool = binary_metrics(Y.astype(bool), list(P), 0.5, n_bootstrap=50)  # a list of probabilities, bool labels
    assert as_int["confusion"] == as_bool["confusion"] and as_int["n_positive"] == int(Y.sum())
    auc, _ = delong_interval(Y, P)
    assert auc == pytest.approx(roc_auc_score(Y, P))
    tied = np.round(P, 1)  # many ties: the midranks (now scipy's) give the Mann-Whitney AUC
    assert delong_interval(Y, tied)[0] == pytest.approx(roc_auc_score(Y, tied))
    # "labels must be class indices 0..1" for bool labels
    assert fit_calibration(Y.astype(bool), np.c_[1 - P, P], "platt").method == "platt"


def test_settings_of_the_interval_and_study_size_functions_are_checked():
    from cxrkit.metrics.calibration import expected_calibration_error
    from cxrkit.metrics.intervals import wilson_interval
    from cxrkit.metrics.sample_size import auc_standard_error, cases_for_proportion, images_for_auc, wilson_reach

    for call, words in ((lambda: wilson_interval(3, 10, 95), "not 95"),  # gave (0.0, 1.0) without a word
                        (lambda: cases_for_proportion(0.9, 0.05, 95), "not 95"),  # OverflowError
                        (lambda: images_for_auc(0.9, 0.1, 0.05, 95), "not 95"),
                        (lambda: wilson_reach(0.5, 0), "at least 1"),  # ZeroDivisionError
                        (lambda: auc_standard_error(0.9, 0, 10), "at least one positive"),
                        (lambda: expected_calibration_error(Y, np.c_[1 - P, P], n_bins=0), "n_bins must be")):
        with pytest.raises(ValueError, match=words):
            call()
    assert cases_for_proportion(0.9, 0.05) > 100


def test_dataset_and_config_settings_from_python_are_checked(tmp_path):
    from cxrkit.config import ConfigError, TrainConfig
    from cxrkit.data.dataset import load_dataset

    for kw in ({"image_size": 0}, {"image_size": -1}, {"image_size": 32, "seed": -1}):  # ZeroDivisionError, numpy's, sklearn's
        with pytest.raises(ValueError, match="must be a whole number"):
            load_dataset(tmp_path, progress=False, **kw)
    assert TrainConfig(data="d", image_size=np.int64(96), lr=np.float32(0.5)).image_size == 96  # numbers from numpy are numbers
    for kw, words in (({"data": " "}, "data must name a dataset folder"), ({"data": "d", "positive": ""}, "positive (--positive) must not be blank"),
                      ({"data": "d", "augment": None}, "augment must be an AugmentConfig")):
        with pytest.raises(ConfigError, match=re.escape(words)):
            TrainConfig(**kw)


def test_a_band_that_rules_nothing_in_is_still_a_band():
    from cxrkit.metrics.referral import choose_referral, referral_outcomes

    # the highest validation score is a healthy image: nothing can be ruled in, said by an upper threshold just above 1,
    # which the new input check refused ("upper threshold must be a number in [0, 1], got 1.000000001")
    band = choose_referral(np.array([0, 1, 0, 1, 0, 1]), np.array([0.95, 0.8, 0.3, 0.6, 0.1, 0.4]), "npv:0.9,ppv:0.9")
    assert band["upper"] > 1 and referral_outcomes(np.array([0, 1]), np.array([0.2, 0.9]), band["lower"], band["upper"])["ruled_in"] == 0
    with pytest.raises(ValueError, match="upper threshold must be a number"):
        referral_outcomes(np.array([0, 1]), np.array([0.2, 0.9]), 0.1, 1.5)
