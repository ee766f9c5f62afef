"""An external evaluation says when the validation-chosen threshold's sensitivity or specificity did not travel."""

from __future__ import annotations

import pytest

from cxrkit.evaluation.threshold_transfer import threshold_transfer


def _entry(tp: int, pos: int, tn: int, neg: int, threshold: float = 0.159, task: str = "binary") -> dict:
    def rate(a: int, b: int) -> dict | None:
        return {"value": a / b, "numerator": a, "denominator": b} if b else None

    return {"task": task, "threshold": threshold, "metrics": {"sensitivity": rate(tp, pos), "specificity": rate(tn, neg)}}


def test_the_sakha_case_is_named_with_counts_and_p():
    # The 500-image default on Sakha-TB (BENCHMARKS.md round 7): 41 of 151 TB found, 30 of 37 on validation.
    r = threshold_transfer(_entry(30, 37, 34, 38), _entry(41, 151, 148, 151), "cxrkit evaluate runs/tb1 sakha --recalibrate-on S")
    assert not r["holds"]
    sens = r["rates"]["sensitivity"]
    assert sens["moved"] and sens["change"] == pytest.approx(41 / 151 - 30 / 37)
    assert sens["p_value"] == pytest.approx(4.1e-9, rel=0.05)  # Fisher's exact test on [[30, 7], [41, 110]]
    assert not r["rates"]["specificity"]["moved"]  # 98.0% against 89.5%: p 0.03 but a change under 10 points
    assert "sensitivity 27.2% (41 of 151) against 81.1% (30 of 37)" in r["message"]
    assert "specificity" not in r["message"] and "`cxrkit evaluate runs/tb1 sakha --recalibrate-on S`" in r["message"]


def test_a_large_change_on_few_images_or_a_small_change_on_many_is_not_called_a_failure():
    few = threshold_transfer(_entry(9, 10, 9, 10), _entry(6, 10, 9, 10))  # 90% -> 60% on 10 cases: p 0.30
    assert few["holds"] and not few["rates"]["sensitivity"]["moved"] and few["rates"]["sensitivity"]["p_value"] > 0.05
    many = threshold_transfer(_entry(900, 1000, 900, 1000), _entry(850, 1000, 900, 1000))  # -5 points, p < 0.01
    assert many["rates"]["sensitivity"]["p_value"] < 0.01 and many["holds"]
    assert "holds here" in many["message"]


def test_a_rise_is_named_too():
    # A threshold that flags nearly everything at the new site buys sensitivity with specificity.
    r = threshold_transfer(_entry(30, 40, 36, 40), _entry(99, 100, 20, 100))
    assert [n for n, x in r["rates"].items() if x["moved"]] == ["sensitivity", "specificity"]
    assert r["rates"]["sensitivity"]["change"] > 0 > r["rates"]["specificity"]["change"]


def test_nothing_to_compare():
    assert threshold_transfer(None, _entry(1, 2, 1, 2)) is None
    assert threshold_transfer(_entry(1, 2, 1, 2, task="multiclass"), _entry(1, 2, 1, 2, task="multiclass")) is None
    assert threshold_transfer(_entry(1, 2, 1, 2, threshold=0.3), _entry(1, 2, 1, 2, threshold=0.5)) is None  # another threshold
    one_class = threshold_transfer(_entry(30, 37, 34, 38), _entry(0, 0, 50, 100))  # only normal images: specificity only
    assert list(one_class["rates"]) == ["specificity"] and not one_class["holds"]


def test_repeat_films_count_as_their_patients():
    # 80 of 100 found on validation against 60 of 100 here: moved (p 0.003) if the films are independent, not if they are
    # four films of each of 25 patients (effective n 25 on each side).
    from scipy.stats import fisher_exact

    val, here = _entry(80, 100, 90, 100), _entry(60, 100, 90, 100)
    assert threshold_transfer(val, here)["rates"]["sensitivity"]["moved"]
    for e in (val, here):
        e["metrics"]["sensitivity"]["effective_n"] = 25.0
    r = threshold_transfer(val, here)["rates"]["sensitivity"]
    assert r["p_value"] == pytest.approx(fisher_exact([[20, 5], [15, 10]])[1]) and not r["moved"]
