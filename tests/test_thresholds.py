import numpy as np
import pytest

from cxrkit.metrics.thresholds import choose_threshold, parse_rule

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
