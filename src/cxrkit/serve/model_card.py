"""The model card a service shows: what the model is, what it was trained and measured on, and its limits.

Every number comes from the run's own files (meta.json, metrics.json); nothing is re-computed here.
"""

from __future__ import annotations

from cxrkit.record import SHIFT_FILE, read_metrics
from cxrkit.report.narrative import dataset_name, metric_text, metric_words, split_words, validation_chose
from cxrkit.run import NO_SHIFT_REFERENCE, Run

HEADLINE = {"binary": ("roc_auc", "sensitivity", "specificity", "ppv", "npv"), "multiclass": ("macro_roc_auc", "accuracy", "balanced_accuracy"),
            "multilabel": ("mean_roc_auc", "detection_rate_positive", "detection_rate_negative")}


def model_identity(run: Run) -> dict:
    """Model id (the run's folder name), version (:meth:`Run.model_id`: the weights and the decision rule, as each prediction
    row is stamped) and the first 12 hex digits of the weights' SHA-256."""
    # The version was the weights' hash alone: answers under two thresholds or referral bands carried one version, and
    # predict --json's rows another id than its own header.
    return {"id": run.path.name, "version": run.model_id, "weights": run.weights_sha256()[:12], "architecture": run.meta["model"],
            "created": run.meta.get("created"), "cxrkit_version": run.meta.get("cxrkit_version")}


def decision_rule(run: Run) -> dict:
    """How :meth:`Run.decide` turns probabilities into a decision, in data and in words."""
    if run.task == "binary":
        t = run.meta["threshold"]
        out = {"threshold": t["value"], "rule": t["rule"], "chosen_on": t.get("chosen_on", "val"), "positive_class": run.classes[1],
               "kind": t.get("kind", "point"), "guarantee": t.get("guarantee"),
               "words": f"called {run.classes[1]} when P({run.classes[1]}) >= {t['value']:.3f} "
                        f"(threshold chosen on the {split_words(t.get('chosen_on', 'val'))} split by rule {t['rule']})"}
        band = run.record.referral
        if band is not None:
            out["referral"] = {"lower": band["lower"], "upper": band["upper"], "spec": band.get("spec")}
            out["words"] += (f"; with a referral band: ruled out below {band['lower']:.3f}, ruled in at or above {band['upper']:.3f}, "
                             "'refer' (a reader decides) in between")
        return out
    if run.task == "multilabel":
        return {"threshold": {c: float(t) for c, t in zip(run.classes, run.thresholds)}, "rule": "per-finding thresholds",
                "chosen_on": "val", "positive_class": None,
                "words": "each finding is reported when its probability reaches its own threshold, chosen on the validation split"}
    return {"threshold": None, "rule": "most probable class", "chosen_on": None, "positive_class": None,
            "words": "the most probable class is the decision"}


def _metric_summary(m: dict) -> dict:
    keys = HEADLINE.get(m.get("task"), ())
    out = {"n": m.get("n"), "data": m.get("data"), "split_name": None}
    if m.get("intervals_by"):  # the intervals below count patients where one had several images
        out.update(n_patients=m.get("n_patients"), intervals_by=m["intervals_by"])
    for k in keys:
        entry = m.get("metrics", {}).get(k)
        if entry is not None:
            # "name" and "text" are for people (the web page shows them); value/ci95 stay 0-1 fractions for programs.
            out[k] = {"value": entry.get("value"), "ci95": entry.get("ci"), "method": entry.get("method"),
                      "name": metric_words(k), "text": metric_text(k, entry)}
    if m.get("findings_in_mean_auc") is not None and "mean_roc_auc" in out:
        # validation averaged 2 findings and test 3, both called "mean AUC over findings"
        out["mean_roc_auc"]["over"] = m["findings_in_mean_auc"]
        out["mean_roc_auc"]["name"] += f" (over {len(m['findings_in_mean_auc'])} of {len(m.get('classes') or [])} findings)"
    if m.get("shift"):
        out["shift_check"] = m["shift"].get("message")
    if m.get("subgroups"):
        out["subgroups"] = {name: _subgroup_summary(sub) for name, sub in m["subgroups"].items()}
    if m.get("referral"):
        o = m["referral"]["outcomes"]
        out["referral"] = {"decided_share": o["decided_share"], "npv_ruled_out": o["npv_ruled_out"], "ppv_ruled_in": o["ppv_ruled_in"],
                           "per_1000": m["referral"]["per_1000"]}
    return out


def _subgroup_summary(sub: dict) -> dict:
    """Per group n and sensitivity/specificity/AUC with intervals, the heterogeneity p-values and the largest gap."""
    per = sub.get("per_finding") or {"": sub}
    out = {}
    for finding, r in per.items():
        out[finding or "all"] = {
            "groups": {g["group"]: {"n": g["n"], **{k: {"value": g[k]["value"], "ci95": g[k]["ci"]} for k in ("sensitivity", "specificity", "roc_auc")}}
                       for g in r["groups"]},
            "heterogeneity_p": {k: t["p_value"] for k, t in r["tests"].items()},
            "largest_gap": (r.get("largest_gap") or {}).get("sentence"),
        }
    return out


def model_card(run: Run) -> dict:
    """A JSON model card: identity, intended use, training data, decision rule, metrics with 95% CIs, limitations."""
    metrics = read_metrics(run.path)
    data = run.meta.get("data", {})
    counts = data.get("counts", {})
    # Images, not counts summed over classes: a multi-label run's counts are per-finding positives (122 for 160 images).
    train_n = (data.get("images") or {}).get("train") or (sum(counts.get("train", {}).values()) if counts and run.task != "multilabel" else None)
    sites = sorted(data.get("sites") or {})
    source = (f"{len(sites)} sites ({', '.join(sites)})" if len(sites) > 1 else f"one dataset ({dataset_name(data.get('root')) or 'unknown'})")
    adapted = run.meta.get("adapted")
    limitations = [
        "Research software, not a certified medical device: every decision needs review by a qualified reader.",
        f"Trained on {train_n if train_n is not None else 'an unrecorded number of'} images of {source}; images from "
        "other hospitals, devices, projections (lateral, AP supine) or age groups may be classified worse than the metrics below.",
        "Probabilities are " + ("calibrated on validation data." if getattr(run, "calibration", None) is not None
                                else "the model's own, not calibrated: read them as scores, not as risks."),
        "Each response carries an out-of-distribution warning when an image's intensity statistics fall outside the training range; "
        "such predictions are less reliable." if (run.path / SHIFT_FILE).is_file() else
        "This run has no " + NO_SHIFT_REFERENCE + " (ood_warning is null in every response).",
    ]
    if "test" not in metrics:
        limitations.append(f"No test-split evaluation is stored: the figures are validation figures, which chose "
                           f"{validation_chose(run.record.training)} "
                           "and are therefore optimistic.")
    if not any(k.startswith("external:") for k in metrics):
        limitations.append("No external validation (a dataset from another site) is stored for this model.")
    if isinstance(adapted, dict):  # the weights are the source run's, with batch-norm statistics of another site's images
        limitations.append(f"Adapted ({adapted.get('method', 'AdaBN')}) from {adapted.get('source_run')}: batch-norm statistics "
                           f"re-estimated on {adapted.get('images')} unlabelled images of {adapted.get('folder')}; the weights, the "
                           "threshold and any calibration are the source run's, chosen on its validation split.")
    if run.task == "multilabel":
        flagged = list(run.classes)
    else:  # classes[1:] took "normal" for a multi-class run whose first class is covid, and left it out
        from cxrkit.data.sources import NEGATIVE_NAMES, canonical_name

        flagged = [run.record.positive_class] if run.task == "binary" and run.record.positive_class else [
            c for c in run.classes if canonical_name(c) not in NEGATIVE_NAMES]
    name = dataset_name(data.get("root"))
    return {
        "model": {**model_identity(run), "task": run.task, "classes": run.classes, "engine": run.engine,
                  "input": {"image_size": run.preprocessing.image_size, "aspect": run.preprocessing.aspect,
                            "intensity": run.preprocessing.intensity, "crop_border": run.preprocessing.crop_border}},
        "intended_use": (f"Triage support: flag frontal chest radiographs for {' / '.join(flagged)} for priority review by a "
                         "clinician. Not for use without human review, and not for ruling disease out."),
        "training_data": {"dataset": name, "layout": data.get("layout"), "images": data.get("images"), "sites": sites or None,
                          "adapted": adapted if isinstance(adapted, dict) else None,
                          "counts": counts, "skipped_files": data.get("skipped")},
        "decision": {**decision_rule(run), "calibrated": getattr(run, "calibration", None) is not None},
        "metrics": {split: {**_metric_summary(m), "split_name": split_words(split)} for split, m in metrics.items()},
        "limitations": limitations,
    }
