"""Plan a validation study from a trained run: its stored figures as the anticipated ones, the images a new site needs."""

from __future__ import annotations

from pathlib import Path

from cxrkit.metrics.sample_size import interval_reach, plan_study

FIGURES = ("sensitivity", "specificity", "roc_auc")


def stored_figures(run_dir: str | Path, split: str | None = None) -> dict:
    """A binary run's stored sensitivity, specificity and ROC-AUC (value and interval) on ``split`` (test, else validation).

    Returns ``{"split", "n", "n_positive", "figures": {name: {"value", "ci"}}, "entries"}`` (``entries``: the split's stored
    metrics, for the note of a figure with no value); a ValueError names what is missing."""
    from cxrkit.record import read_metrics
    from cxrkit.record.files import RunRecordError

    run_dir = Path(run_dir)
    if not (run_dir / "meta.json").is_file():
        raise ValueError(f"{run_dir} is not a run folder (no meta.json); give the folder `cxrkit train` wrote, or the figures "
                         "themselves (--sensitivity, --specificity, --auc)")
    try:
        metrics = read_metrics(run_dir)
    except RunRecordError as exc:
        raise ValueError(str(exc)) from None
    if split is None:
        split = "test" if "test" in metrics else "val"
    if split not in metrics:
        stored = ", ".join(metrics) or "none"
        raise ValueError(f"{run_dir} has no stored {split!r} evaluation (stored: {stored}); run `cxrkit evaluate {run_dir}` first, "
                         "or give the figures themselves")
    m = metrics[split]
    if m.get("task") != "binary":
        raise ValueError(f"{run_dir} is a {m.get('task')} run; study planning covers binary runs (one disease against its absence)")
    figures = {}
    for name in FIGURES:
        entry = (m.get("metrics") or {}).get(name) or {}
        if isinstance(entry.get("value"), (int, float)):
            figures[name] = {"value": float(entry["value"]), "ci": entry.get("ci")}
    return {"split": split, "n": m.get("n"), "n_positive": m.get("n_positive"), "n_patients": m.get("n_patients") if m.get("intervals_by") == "patient" else None,
            "figures": figures, "entries": m.get("metrics") or {}}


def conservative(name: str, value: float, ci: list | None) -> float:
    """The end of a figure's interval that needs the most images: for sensitivity and specificity the one nearer 0.5
    (a proportion's variance peaks there), for ROC-AUC the lower one. The point estimate when there is no interval."""
    if not ci or ci[0] is None or ci[1] is None:
        return value
    lo, hi = float(ci[0]), float(ci[1])
    if name == "roc_auc":
        return lo
    return min(max(0.5, lo), hi)  # 0.5 itself when the interval spans it


def plan_for_run(run_dir: str | Path, half_width: float, prevalence: float | None = None, split: str | None = None,
                 confidence: float = 0.95, point_estimates: bool = False, **given: float | None) -> dict:
    """:func:`cxrkit.metrics.sample_size.plan_study` with the run's stored figures where ``given`` (sensitivity=,
    specificity=, auc=) leaves them out, and the split's prevalence when ``prevalence`` is None.

    A stored figure is taken at the end of its interval that needs the most images (:func:`conservative`): a
    sensitivity of 1.0 on 7 images plans for 35 positives, its Wilson lower bound 0.65 for ten times as many.
    ``point_estimates`` takes the point values instead."""
    stored = stored_figures(run_dir, split)
    figures = stored["figures"]
    anticipated = {"sensitivity": given.get("sensitivity"), "specificity": given.get("specificity"), "auc": given.get("auc")}
    for key, name in (("sensitivity", "sensitivity"), ("specificity", "specificity"), ("auc", "roc_auc")):
        if anticipated[key] is None and name in figures:
            f = figures[name]
            anticipated[key] = f["value"] if point_estimates else conservative(name, f["value"], f["ci"])
    skipped = {}
    auc_from_run = given.get("auc") is None  # a value the user gave is checked by plan_study like any other
    if auc_from_run and anticipated["auc"] is not None and anticipated["auc"] <= 0.5:
        # a model that may be at chance has no AUC interval to plan for; its sensitivity and specificity still do
        skipped["roc_auc"] = (f"the {stored['split']} split's ROC-AUC interval reaches chance (0.5): the model may not rank at all, "
                              "so no AUC precision can be planned; give --auc to plan for one anyway")
        anticipated["auc"] = None
    elif auc_from_run and anticipated["auc"] is not None and anticipated["auc"] >= 1:
        # a split ranked perfectly has an interval of [1, 1]: no variance to plan from (it stopped the whole plan)
        skipped["roc_auc"] = (f"the {stored['split']} split's ROC-AUC is 1 with no width to its interval ({stored['n']} images ranked "
                              "without a mistake), so it says nothing about the AUC a new site will see; give --auc, e.g. 0.9, to plan for one")
        anticipated["auc"] = None
    for key, name in (("sensitivity", "sensitivity"), ("specificity", "specificity"), ("auc", "roc_auc")):
        if anticipated[key] is None and name not in figures and name not in skipped:  # it was left out of the plan without a word
            why = (m.get("note") if isinstance(m := stored["entries"].get(name), dict) else None) or "none is stored"
            flag = "--auc" if key == "auc" else f"--{key}"
            skipped[name] = f"the {stored['split']} split has no {name.replace('_', '-')} figure ({why}); give {flag} to plan for one"
    if all(v is None for v in anticipated.values()):
        raise ValueError(f"{run_dir}'s {stored['split']} split has no figure to plan for" + (f": {skipped['roc_auc']}" if skipped else ""))
    prevalence_from_run = prevalence is None
    if prevalence is None:
        n, pos = stored["n"], stored["n_positive"]
        if not n or not pos or pos >= n:
            raise ValueError(f"the {stored['split']} split of {run_dir} has no usable prevalence ({pos} of {n}); pass --prevalence")
        prevalence = pos / n
    plan = plan_study(prevalence, half_width, confidence=confidence, **anticipated)
    plan["from_run"] = {"run": str(run_dir), "split": stored["split"], "n": stored["n"], "n_positive": stored["n_positive"],
                        "prevalence_from_run": prevalence_from_run, "anticipated_from_run": "point estimates" if point_estimates else
                        "interval ends nearest chance", "taken_from_run": [k for k, v in given.items() if v is None], "skipped": skipped,
                        # how far each interval reaches from its estimate, on its longer side: the ±D the plan bounds (half
                        # the width said ±0.14 for 1.0 (0.72-1.0), 0.28 below)
                        "current_reach": {name: interval_reach(f["value"], *f["ci"])
                                          for name, f in figures.items() if f.get("ci") and None not in f["ci"]}}
    if stored["n_patients"]:
        # The plan counts independent cases. That split's images came several to a patient, and its intervals counted
        # patients: "needed: 762 images" read as films would leave a study of repeat films far too small.
        entries = stored["entries"]
        plan["from_run"]["patients"] = {
            "n_patients": stored["n_patients"], "images_per_patient": stored["n"] / stored["n_patients"],
            "design_effect": {k: entries[k]["denominator"] / entries[k]["effective_n"] for k in ("sensitivity", "specificity")
                              if isinstance(entries.get(k), dict) and entries[k].get("effective_n")}}
    return plan
