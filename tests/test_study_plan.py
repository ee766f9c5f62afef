"""`cxrkit plan`: the images a validation study needs for intervals of a given width."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import norm

from cxrkit.cli import main
from cxrkit.evaluation.study_plan import conservative, plan_for_run
from cxrkit.metrics.intervals import delong_interval, wilson_bounds, wilson_interval
from cxrkit.metrics.sample_size import auc_standard_error, cases_for_proportion, images_for_auc, plan_study, wilson_reach


def test_hanley_mcneil_standard_error_matches_the_published_formula():
    # AUC 0.8, 50 + 50 cases: Q1 = 0.8/1.2, Q2 = 2*0.64/1.8 -> SE 0.0445 (Hanley and McNeil 1982)
    assert auc_standard_error(0.8, 50, 50) == pytest.approx(0.04450, abs=5e-5)
    assert auc_standard_error(0.9, 100, 100) < auc_standard_error(0.7, 100, 100)  # better ranking, narrower


@pytest.mark.parametrize("p", [0.5, 0.7, 0.9, 0.97, 1.0])
@pytest.mark.parametrize("d", [0.03, 0.05, 0.1])
def test_the_planned_count_is_the_smallest_whose_wilson_interval_lies_within_plus_minus_d(p, d):
    n = cases_for_proportion(p, d)
    lo, hi = wilson_bounds(p, n, 0.95)  # the interval cxrkit will report when the study sees the anticipated proportion
    assert p - d <= lo + 1e-12 and hi <= p + d + 1e-12
    assert wilson_reach(p, n) <= d < wilson_reach(p, n - 1) if n > 1 else wilson_reach(p, n) <= d


@pytest.mark.parametrize(("successes", "n"), [(90, 100), (45, 50), (7, 7), (0, 12), (141, 141)])
def test_the_planned_reach_is_that_of_the_interval_cxrkit_reports(successes, n):
    lo, hi = wilson_interval(successes, n)
    assert wilson_reach(successes / n, n) == pytest.approx(max(successes / n - lo, hi - successes / n), abs=1e-12)


def test_near_one_half_it_agrees_with_buderer_and_near_one_wilson_differs():
    buderer = lambda p, d: math.ceil(norm.ppf(0.975) ** 2 * p * (1 - p) / d**2)  # noqa: E731
    assert abs(cases_for_proportion(0.5, 0.05) - buderer(0.5, 0.05)) <= 5  # 381 against 385
    # Away from 0.5 Wilson's interval is longer on the side towards 0.5: 141 cases (Buderer's count, near enough) gave
    # 0.839-0.939 for a sensitivity of 0.90, 0.061 below it, under a plan that said "0.90 +- 0.05".
    assert cases_for_proportion(0.9, 0.05) == 196 and buderer(0.9, 0.05) == 139
    assert wilson_bounds(0.9, 141, 0.95)[0] < 0.85 <= wilson_bounds(0.9, 196, 0.95)[0]
    assert cases_for_proportion(1.0, 0.05) > 0 == buderer(1.0, 0.05)  # the normal formula says 0 cases at 100%


@pytest.mark.parametrize(("auc", "prevalence"), [(0.85, 0.3), (0.75, 0.5), (0.9, 0.1)])
def test_simulated_studies_of_the_planned_size_get_delong_intervals_no_wider_than_asked(auc, prevalence):
    total, pos, neg = images_for_auc(auc, prevalence, 0.05)
    assert pos + neg == total and pos == round(total * prevalence)
    rng = np.random.default_rng(0)
    mu = math.sqrt(2) * norm.ppf(auc)  # binormal scores of this AUC
    y = np.r_[np.ones(pos), np.zeros(neg)].astype(int)
    half = [np.diff(delong_interval(y, np.r_[rng.normal(mu, 1, pos), rng.normal(0, 1, neg)])[1])[0] / 2 for _ in range(100)]
    assert 0.6 * 0.05 < np.mean(half) <= 0.05 * 1.03  # Hanley-McNeil errs on the side of more images, never fewer
    smaller = images_for_auc(auc, prevalence, 0.1)[0]
    assert smaller < total / 3  # half the width, about a quarter of the images


def test_a_study_needs_the_largest_requirement_at_the_site_prevalence():
    plan = plan_study(0.1, 0.05, sensitivity=0.9, specificity=0.8, auc=0.85)
    by = {r["metric"]: r for r in plan["requirements"]}
    assert by["sensitivity"]["needed_cases"] == by["sensitivity"]["positives"] == 196
    assert by["sensitivity"]["images"] == 1960  # 196 positives at 10%
    assert by["specificity"]["negatives"] == 289 and by["specificity"]["images"] == math.ceil(289 / 0.9)
    assert plan["binding"] == "sensitivity" and plan["images"] == 1960 == max(r["images"] for r in plan["requirements"])
    assert plan_study(0.02, 0.05, sensitivity=0.9)["images"] == 196 * 50  # screening: fifty images per positive


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"prevalence": 0.0, "half_width": 0.05, "sensitivity": 0.9}, "prevalence must be a number strictly between 0 and 1, got 0.0"),
    ({"prevalence": 0.1, "half_width": 0.0, "sensitivity": 0.9}, "half-width must be from 0.005 to 0.5"),
    ({"prevalence": 0.1, "half_width": float("nan"), "sensitivity": 0.9}, "half-width must be from 0.005 to 0.5"),
    ({"prevalence": 0.1, "half_width": 0.05, "sensitivity": 1.2}, "anticipated proportion must be a number from 0 to 1"),
    ({"prevalence": 0.1, "half_width": 0.05, "auc": 0.5}, "anticipated ROC-AUC must be a number strictly between 0.5 and 1"),
    ({"prevalence": 0.1, "half_width": 0.05}, "give at least one anticipated figure"),
    ({"prevalence": 0.1, "half_width": 0.05, "sensitivity": 0.9, "confidence": 1.0}, "confidence must be"),
])
def test_bad_inputs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_study(**kwargs)


def _fake_run(path, split="test", task="binary", n=40, pos=10, sens=(1.0, (0.72, 1.0)), spec=(0.9, (0.74, 0.97)), auc=(0.9, (0.8, 1.0))):
    path.mkdir()
    (path / "meta.json").write_text("{}")
    metrics = {k: {"value": v, "ci": list(ci), "method": "x"} for k, (v, ci) in {"sensitivity": sens, "specificity": spec, "roc_auc": auc}.items()}
    (path / "metrics.json").write_text(json.dumps({split: {"task": task, "split": split, "classes": ["healthy", "tb"], "n": n, "n_positive": pos,
                                                          "metrics": metrics}}))
    return path


def test_a_run_plans_from_the_ends_of_its_intervals_that_need_most_images(tmp_path):
    run = _fake_run(tmp_path / "run")
    plan = plan_for_run(run, 0.05, prevalence=0.05)
    by = {r["metric"]: r["anticipated"] for r in plan["requirements"]}
    assert by == {"sensitivity": 0.72, "specificity": 0.74, "roc_auc": 0.8}  # not the 1.0 seen on 10 positives
    assert plan["from_run"]["split"] == "test" and not plan["from_run"]["prevalence_from_run"]
    assert plan["from_run"]["current_reach"]["sensitivity"] == pytest.approx(0.28)  # 1.0 (0.72-1.0): was "±0.14", half its width
    point = plan_for_run(run, 0.05, prevalence=0.05, point_estimates=True)
    assert {r["metric"]: r["anticipated"] for r in point["requirements"]}["sensitivity"] == 1.0
    assert point["images"] < plan["images"]
    assert plan_for_run(run, 0.05)["prevalence"] == 0.25  # the split's own when none is given
    given = plan_for_run(run, 0.05, prevalence=0.05, sensitivity=0.95)
    assert {r["metric"]: r["anticipated"] for r in given["requirements"]}["sensitivity"] == 0.95
    assert conservative("sensitivity", 0.6, [0.3, 0.8]) == 0.5  # an interval across 0.5: the worst case is 0.5 itself


def test_a_run_that_may_be_at_chance_plans_no_auc_and_says_why(tmp_path):
    plan = plan_for_run(_fake_run(tmp_path / "run", auc=(0.62, (0.45, 0.79))), 0.05, prevalence=0.1)
    assert [r["metric"] for r in plan["requirements"]] == ["sensitivity", "specificity"]
    assert "reaches chance" in plan["from_run"]["skipped"]["roc_auc"]


def test_a_perfect_auc_plans_the_rest_and_a_given_chance_auc_is_refused(tmp_path):
    # A stored AUC of 1 with interval [1, 1] stopped the whole plan ("strictly between 0.5 and 1, got 1.0"); --auc 0.5 given
    # by the user was skipped with "give --auc to plan for one anyway".
    run = _fake_run(tmp_path / "run", auc=(1.0, (1.0, 1.0)))
    plan = plan_for_run(run, 0.05, prevalence=0.1)
    assert [r["metric"] for r in plan["requirements"]] == ["sensitivity", "specificity"]
    assert "ROC-AUC is 1 with no width" in plan["from_run"]["skipped"]["roc_auc"]
    assert {r["metric"]: r["anticipated"] for r in plan_for_run(run, 0.05, prevalence=0.1, auc=0.9)["requirements"]}["roc_auc"] == 0.9
    with pytest.raises(ValueError, match="strictly between 0.5 and 1, got 0.5"):
        plan_for_run(run, 0.05, prevalence=0.1, auc=0.5)


def test_a_figure_the_run_does_not_hold_is_named_not_left_out_unsaid(tmp_path):
    run = _fake_run(tmp_path / "run")
    metrics = json.loads((run / "metrics.json").read_text())
    del metrics["test"]["metrics"]["roc_auc"]
    metrics["test"]["metrics"]["sensitivity"] = {"value": None, "ci": None, "note": "no images with the disease"}
    (run / "metrics.json").write_text(json.dumps(metrics))
    plan = plan_for_run(run, 0.05, prevalence=0.1)
    assert [r["metric"] for r in plan["requirements"]] == ["specificity"]
    skipped = plan["from_run"]["skipped"]
    assert skipped["roc_auc"] == "the test split has no roc-auc figure (none is stored); give --auc to plan for one"
    assert skipped["sensitivity"] == "the test split has no sensitivity figure (no images with the disease); give --sensitivity to plan for one"
    assert "sensitivity" not in plan_for_run(run, 0.05, prevalence=0.1, sensitivity=0.9)["from_run"]["skipped"]


@pytest.mark.parametrize(("make", "args", "message"), [
    (lambda p: p.mkdir(), [], "is not a run folder"),
    (lambda p: _fake_run(p, task="multiclass"), [], "is a multiclass run; study planning covers binary runs"),
    (lambda p: _fake_run(p, split="val"), ["--split", "test"], "has no stored 'test' evaluation (stored: val)"),
    (None, ["--sensitivity", "0.9"], "--prevalence is needed without a run"),
    (None, ["--prevalence", "0.1", "--sensitivity", "0.9", "--point-estimates"], "--point-estimates reads a run's stored figures"),
])
def test_the_command_refuses_in_one_line(tmp_path, capsys, make, args, message):
    run = tmp_path / "run"
    if make:
        make(run)
    assert main(["plan", *([str(run)] if make else []), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_the_command_prints_the_plan_and_its_json(tmp_path, capsys):
    run = _fake_run(tmp_path / "run", split="val")
    assert main(["plan", str(run), "--prevalence", "0.02"]) == 0
    out = capsys.readouterr().out
    assert "needed:" in out and "interval ends nearest chance" in out and "optimistic" in out  # validation figures
    ext = _fake_run(tmp_path / "ext", split="external:sakha")
    assert main(["plan", str(ext), "--split", "external:sakha", "--prevalence", "0.1", "--confidence", "0.975"]) == 0
    out = capsys.readouterr().out
    assert "97.5% intervals" in out and "optimistic" not in out  # another site's figures are not validation figures
    assert main(["plan", "--prevalence", "0.1", "--sensitivity", "0.9", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["images"] == 1960 and doc["binding"] == "sensitivity"


def test_evaluate_points_to_plan_when_its_intervals_are_wide(tmp_path, capsys):
    from cxrkit.cli import _plan_hint

    run = _fake_run(tmp_path / "run", split="external:sakha", n=45, pos=20, sens=(0.85, (0.64, 0.95)))
    m = json.loads((run / "metrics.json").read_text())["external:sakha"]
    _plan_hint(str(run), m)
    hint = capsys.readouterr().out
    assert "on 45 images (20 tb) the sensitivity interval (0.64-0.95) reaches 0.21 from its estimate 0.85" in hint  # was "±0.15"
    assert "--split external:sakha" in hint
    command = hint.split("`")[1].split()[1:]  # the command it prints runs as printed
    assert main([*command[:-1], "0.05"]) == 0 and "needed:" in capsys.readouterr().out
    narrow = {**m, "metrics": {k: {"value": 0.9, "ci": [0.87, 0.93]} for k in ("sensitivity", "specificity", "roc_auc")}}
    _plan_hint(str(run), narrow)
    assert capsys.readouterr().out == ""  # ±0.03: nothing to say
