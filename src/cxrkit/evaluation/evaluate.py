"""Evaluate a run on a split: predictions, the validation-chosen threshold, metrics, plots, files."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

from cxrkit.data.dataset import LabelledImages
from cxrkit.data.splits import OWN_ID_PREFIX
from cxrkit.evaluation.one_class import one_class_restriction
from cxrkit.metrics.classification import binary_metrics
from cxrkit.metrics.thresholds import GuaranteeImpossible, choose_threshold, parse_rule
from cxrkit.record import read_history, read_metrics, replace_predictions, split_predictions, update_metrics
from cxrkit.record.files import META_FILE, METRICS_FILE, PLOTS_DIR, PREDICTIONS_FILE, REPORT_FILE, all_or_nothing
from cxrkit.record.lock import run_lock
from cxrkit.record.meta import now
from cxrkit.report.narrative import SPLIT_WORDS, split_words
from cxrkit.report.plots import (
    plot_confusion,
    plot_cooccurrence,
    plot_decision_curve,
    plot_forest,
    plot_label_counts,
    plot_pr,
    plot_reliability,
    plot_risk_coverage,
    plot_roc,
    plot_roc_one_vs_rest,
    plot_roc_overlay,
)
from cxrkit.run import Run, load_run_dataset


def parse_class_map(text: str | None) -> dict[str, str] | None:
    """``"healthy=normal,TB=tb"`` -> {"healthy": "normal", "TB": "tb"}."""
    if not text:
        return None
    out = {}
    for item in text.split(","):
        src, sep, dst = item.partition("=")
        if not sep or not src.strip() or not dst.strip():
            raise ValueError(f"bad --class-map entry {item!r}: write DATASET_CLASS=MODEL_CLASS, comma-separated")
        if src.strip() in out and out[src.strip()] != dst.strip():  # the last one won: every image of that class took the other label
            raise ValueError(f"--class-map maps {src.strip()!r} twice ({src.strip()}={out[src.strip()]} and {src.strip()}={dst.strip()}); "
                             "give each dataset class once")
        out[src.strip()] = dst.strip()
    return out


def store_threshold(run: Run, y_val: np.ndarray, probs_val: np.ndarray, rule: str, allow_point_estimate: bool = False,
                    patients: list[str] | None = None) -> dict:
    """Choose the binary decision threshold on validation predictions and save it in meta.json (a guarantee counts ``patients``)."""
    choice = choose_threshold(y_val, probs_val[:, 1], rule, chosen_on="val", allow_point_estimate=allow_point_estimate,
                              patients=patients).to_dict()
    run.record.set_threshold(choice)
    run.save_record()
    return choice


def store_referral(run: Run, y_val: np.ndarray, probs_val: np.ndarray, spec: str, patients: list[str] | None = None) -> dict:
    """Choose a binary run's referral band on validation predictions and save it in meta.json (its bounds count ``patients``)."""
    from cxrkit.metrics.referral import choose_referral

    if run.task != "binary":
        raise ValueError("a referral band needs a binary run (one disease against normal)")
    band = choose_referral(y_val, probs_val[:, 1], spec, threshold=run.threshold, patients=patients)
    run.record.referral = band
    run.save_record()
    return band


def referral_analysis(run: Run, y: np.ndarray, probs: np.ndarray, patients: list[str] | None = None) -> dict | None:
    """What the run's referral band does on an evaluated split: decided share, accuracy of the decided ones,
    the risk-coverage curve and the same per 1,000 people (None when the run has no band)."""
    from cxrkit.metrics.referral import per_thousand, referral_outcomes, risk_coverage

    band = run.record.referral
    if band is None or len(np.unique(y)) < 2:
        return None
    out = referral_outcomes(y, probs[:, 1], band["lower"], band["upper"], patients)
    return {"band": band, "outcomes": out, "per_1000": per_thousand(out), "risk_coverage": risk_coverage(y, probs[:, 1], run.threshold)}


def unchosen_findings(run: Run) -> list[str]:
    """The findings of a multi-label run whose threshold is the 0.5 default because validation could not choose one."""
    if run.task != "multilabel" or not run.record.thresholds:
        return []
    return [name for name, t in run.record.thresholds.items() if t.get("unchosen") or str(t.get("rule", "")).startswith("0.5 (validation has")]


def unchosen_threshold_notes(run: Run) -> list[str]:
    """One sentence per finding whose threshold is the 0.5 default because validation could not choose one: every table
    and page said "at its validation threshold" (a finding with AUC 1.000 on test was found 0% of the time)."""
    unchosen = unchosen_findings(run)
    if not unchosen:
        return []
    scale = " (of the uncalibrated probability)" if getattr(run, "calibration", None) else ""
    return [f"{', '.join(unchosen)}: no threshold could be chosen on validation (no positive or no negative validation image), so "
            f"{'its' if len(unchosen) == 1 else 'their'} decisions use an unchosen 0.5{scale} "
            f"and {'its' if len(unchosen) == 1 else 'their'} "
            "sensitivity and specificity (and the pooled detection rates) are at that default; add validation images with and without "
            f"{'it' if len(unchosen) == 1 else 'them'}"]


def store_thresholds(run: Run, y_val: np.ndarray, probs_val: np.ndarray, rule: str, allow_point_estimate: bool = False,
                     patients: list[str] | None = None) -> dict:
    """Choose one threshold per finding of a multi-label run on validation predictions; save them in meta.json.

    A finding without a positive (or without a negative) validation image cannot have a threshold chosen
    by ``rule``; it gets 0.5 and says so in its ``rule``.
    """
    out = {}
    for c, name in enumerate(run.classes):
        yc = y_val[:, c]
        if 0 < yc.sum() < len(yc) or parse_rule(rule)[0] == "fixed":
            out[name] = choose_threshold(yc, probs_val[:, c], rule, chosen_on=f"val ({name})", allow_point_estimate=allow_point_estimate,
                                         patients=patients).to_dict()
        else:
            fallback = choose_threshold(yc, probs_val[:, c], "0.5", chosen_on="val").to_dict()
            fallback["rule"] = f"0.5 (validation has {'no positive' if yc.sum() == 0 else 'no negative'} {name} image; {rule} impossible)"
            fallback["unchosen"] = True
            out[name] = fallback
    run.record.set_thresholds(out, rule)
    run.save_record()
    return out


def compute_metrics(run: Run, y: np.ndarray, probs: np.ndarray, seed: int = 0, patients: list[str] | None = None) -> dict:
    """Metrics for the run's task at its stored threshold(s); intervals by patient where ``patients`` shows repeat images."""
    m = run.task_object.metrics(y, probs, run.classes, run.threshold, run.thresholds, seed=seed, patients=patients)
    unnamed = sum(str(p).startswith(OWN_ID_PREFIX) for p in patients or [])
    if unnamed and m.get("intervals_by") == "patient":  # "26 images from 24 patients", 20 of them images without an ID
        m["images_without_patient_id"] = unnamed
    if run.record.threshold_rule:
        m["threshold_rule"] = run.record.threshold_rule
    return m


def external_key(taken: dict[str, str], shown: Path, root: Path) -> str:
    """The results key of an external dataset: ``external:<its folder's name>``, made longer when a dataset elsewhere of the
    same name holds that key already (``taken``: key -> data path). Two sites' ``test/`` folders shared one key, and the
    second evaluation replaced the first's results in metrics.json, predictions.csv and the report without a word."""
    shown, root = Path(shown), Path(root)
    names = [shown.name, f"{shown.parent.name}/{shown.name}"] + [f"{shown.parent.name}/{shown.name}-{i}" for i in range(2, 1000)]
    for name in names:
        key = f"external:{name}"
        if taken.get(key, str(root)) == str(root):
            return key
    raise ValueError(f"too many external datasets named {shown.name} evaluated with this run")


def validation_predictions(run: Run) -> tuple[np.ndarray, np.ndarray] | None:
    """Labels and probabilities of the validation split as stored in predictions.csv (None if absent, or
    for a multi-label run, whose rows hold sets of findings)."""
    if run.task == "multilabel":
        return None
    _, y, probs = split_predictions(run.path, "val", run.classes)
    return (y, probs) if len(y) else None


def recorded_patients(run_dir: Path, paths: list[str]) -> list[str] | None:
    """The patient of each of ``paths`` as the run's splits.csv records it (an unnamed image is its own patient); None when
    the run names no patients."""
    from cxrkit.record.files import read_split_patients

    named = read_split_patients(run_dir)
    return [named.get(p) or f"{OWN_ID_PREFIX}{p}" for p in paths] if named else None


def validation_patients(run: Run) -> list[str] | None:
    """The patient of each validation row of predictions.csv, from splits.csv (None when the run names no patients)."""
    paths, _, _ = split_predictions(run.path, "val", run.classes)
    return recorded_patients(run.path, paths)


def fresh_validation_predictions(run: Run) -> tuple[np.ndarray, np.ndarray, list[str] | None] | None:
    """Labels, this model's probabilities and the patients of the validation split, predicted now from the images (None when
    the training data is not at hand, or for a multi-label run)."""
    from cxrkit.data.sources import DatasetError

    if run.task == "multilabel":
        return None
    try:
        ds, _ = load_run_dataset(run, progress=False)
    except (DatasetError, OSError):
        return None
    idx = ds.index("val")
    if not len(idx):
        return None
    return ds.labels[idx], run.predict_arrays(np.asarray(ds.images[idx])), ds.patients_of(idx)


def training_overlap(run_dir: Path, images: np.ndarray) -> dict | None:
    """How many of ``images`` are identical (decoded pixels) to images of the run's own splits, as a note; None when
    none is, or when the run predates the hashes in splits.csv. External data that holds training images is not
    external: the model has memorised them, and its figures there are optimistic."""
    from cxrkit.data.identity import pixel_hashes
    from cxrkit.record.files import read_split_hashes

    known = read_split_hashes(run_dir)
    if not known:
        return None
    found = [known.get(h) for h in pixel_hashes(images)]
    counts = {s: found.count(s) for s in ("train", "val", "test") if found.count(s)}
    if not counts:
        return None
    n = sum(counts.values())
    words = {"train": "was trained on", "val": "chose its best epoch and threshold on", "test": "was tested on"}
    parts = ", ".join(f"{c} it {words[s]}" for s, c in counts.items())
    message = (f"{n} of these {len(images)} images are identical to images of this run's own splits ({parts}): this is not "
               "independent data, and the figures below are optimistic" + (" (the model has learned its training images)" if "train" in counts else "")
               + "; evaluate on images from another source, or remove the copies")
    return {"identical": n, "of": len(images), "by_split": counts, "message": message}


def decision_analysis(
    run: Run, y: np.ndarray, probs: np.ndarray, raw_probs: np.ndarray, val: tuple[np.ndarray, np.ndarray] | None,
    prevalence: float | None = None, spread: bool = False, patients: list[str] | None = None,
) -> dict:
    """Calibration (of the model's own and of the calibrated probabilities), and for binary runs the operating
    points chosen on validation, the WHO TB-triage check, the decision curve and, with ``prevalence``, what the
    run's threshold means per 1,000 people screened. ``spread`` (``y`` is not the validation split itself) adds how
    far the threshold and this split's sensitivity and specificity move with another validation sample. ``patients``: the
    operating points and the WHO check count them where one has several images."""
    from cxrkit.metrics.calibration import calibration_summary
    from cxrkit.metrics.decision_curve import net_benefit
    from cxrkit.metrics.operating_points import operating_point, operating_points, screening_outcomes, who_triage_check

    if run.task == "multilabel":  # probabilities per finding; operating points are per decided class, so none here
        from cxrkit.metrics.calibration import calibration_in_the_large

        per = {"model": calibration_in_the_large(y, raw_probs, run.classes)}
        if run.calibration is not None:
            per["calibrated"] = calibration_in_the_large(y, probs, run.classes)
        return {"calibration_per_finding": per}
    if not run.task_object.one_label_per_image:
        return {}
    out: dict = {"calibration": {"model": calibration_summary(y, raw_probs, patients=patients)}}
    if run.calibration is not None:
        out["calibration"]["calibrated"] = calibration_summary(y, probs, patients=patients)
        out["calibration"]["method"] = run.calibration["method"]
    if run.task != "binary" or len(np.unique(y)) < 2:
        return out
    if val is not None and len(np.unique(val[0])) == 2:
        out["operating_points"] = operating_points(val[0], val[1][:, 1], y, probs[:, 1], patients=patients)
        out["who_triage"] = who_triage_check(val[0], val[1][:, 1], y, probs[:, 1], patients=patients)
        rule = (run.record.threshold or {}).get("rule")
        if spread and rule:
            from cxrkit.metrics.thresholds import threshold_spread

            pats = validation_patients(run)
            out["threshold_spread"] = threshold_spread(val[0], val[1][:, 1], rule, y, probs[:, 1],
                                                       val_patients=pats if pats is not None and len(pats) == len(val[0]) else None)
    out["decision_curve"] = net_benefit(y, probs[:, 1], prevalence=prevalence)
    if run.record.referral is not None:
        out["referral"] = referral_analysis(run, y, probs, patients)
    if prevalence is not None:
        m = operating_point(y, probs[:, 1], run.threshold, patients)
        out["screening"] = screening_outcomes(m["sensitivity"], m["specificity"], prevalence)
        out["screening"]["threshold"] = run.threshold
    return out


def write_evaluation(
    run: Run, split: str, ds: LabelledImages, idx: np.ndarray, probs: np.ndarray, metrics: dict, notes: list[str] | None = None
) -> None:
    """Record this split: stamp where it came from on ``metrics``, merge them into metrics.json, its rows
    into predictions.csv, and draw its plots."""
    source_split = metrics.get("source_split", split)
    skipped = [s for s in ds.skipped() if source_split == "all" or s[1] == source_split]
    metrics.update(split=split, data=str(ds.source.root), notes=list(notes or []), skipped=skipped)
    path = run.path
    update_metrics(path, split, metrics)
    rows = []
    decisions = run.decision_labels(probs)
    for j, i in enumerate(idx):
        row = {"split": split, "path": ds.relpaths[i], "true": ds.label_text(i)}
        # Unrounded (shortest exact text): at 6 decimals a probability within 5e-7 of the threshold read as the other side of `pred`.
        row.update({f"prob_{c}": repr(float(probs[j, c_i])) for c_i, c in enumerate(run.classes)})
        row["pred"] = decisions[j]
        rows.append(row)
    replace_predictions(path, split, rows, run.classes)

    plots = path / PLOTS_DIR
    y = ds.labels[idx]
    words = split_words(split)
    fname = split.replace(":", "_")
    if run.task == "multilabel":
        curves = []
        for c, name in enumerate(run.classes):
            e = metrics["per_label"][name]
            if e["roc_auc"]["value"] is not None:
                curves.append((f"{name} (n={e['support']})", y[:, c], probs[:, c],
                               (1 - e["specificity"]["value"], e["sensitivity"]["value"]), e["roc_auc"]["value"]))
        if curves:
            plot_roc_overlay(curves, f"ROC per finding, {words}", plots / f"roc_{fname}.png")
        return
    if run.task == "binary":
        m = metrics["metrics"]
        if m["roc_auc"]["value"] is not None:
            sens, spec, ppv = m["sensitivity"]["value"], m["specificity"]["value"], m["ppv"]["value"]
            readers = {name: (1 - r["specificity"]["reader"]["value"], r["sensitivity"]["reader"]["value"])
                       for name, r in (metrics.get("readers") or {}).get("readers", {}).items()
                       if r["specificity"]["reader"]["value"] is not None and r["sensitivity"]["reader"]["value"] is not None}
            plot_roc(y, probs[:, 1], (1 - spec, sens), m["roc_auc"]["value"], f"ROC, {words} (n={len(y)})", plots / f"roc_{fname}.png", readers)
            plot_pr(y, probs[:, 1], (sens, ppv), m["pr_auc"]["value"], f"Precision-recall, {words}", plots / f"pr_{fname}.png")
        c = metrics["confusion"]
        cm = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
    else:
        cm = np.array(metrics["confusion"])
        if metrics["metrics"]["macro_roc_auc"]["value"] is not None:
            aucs = {c: metrics["per_class"][c]["roc_auc"]["value"] for c in run.classes}
            plot_roc_one_vs_rest(y, probs, run.classes, aucs, f"One-vs-rest ROC, {words}", plots / f"roc_{fname}.png")
    plot_confusion(cm, run.classes, f"Confusion matrix, {words}", plots / f"confusion_{fname}.png")
    cal = metrics.get("calibration")
    if cal:
        curves = [("model", cal["model"]["bins"], cal["model"]["ece"])]
        if "calibrated" in cal:
            curves.append((f"calibrated ({cal['method']})", cal["calibrated"]["bins"], cal["calibrated"]["ece"]))
        plot_reliability(curves, f"Reliability, {words} (n={len(y)})", plots / f"reliability_{fname}.png")
    for name, sub in (metrics.get("subgroups") or {}).items():
        if "groups" in sub:
            plot_forest(sub, f"{name}, {words}", plots / f"subgroups_{fname}_{_slug(name)}.png")
    if metrics.get("referral"):
        r = metrics["referral"]
        plot_risk_coverage(r["risk_coverage"], r["outcomes"]["decided_share"]["value"], r["outcomes"]["error_rate_decided"]["value"],
                           f"Risk-coverage, {words} (n={len(y)})", plots / f"risk_coverage_{fname}.png")
    if metrics.get("decision_curve"):
        dc = metrics["decision_curve"]
        plot_decision_curve(dc, run.threshold, f"Decision curve, {words} (prevalence {dc['prevalence']:.1%})", plots / f"decision_{fname}.png")


def evaluate_run(
    run_dir: str | Path, data: str | Path | None = None, split: str | None = None, progress: bool = True, write_report: bool = True,
    class_map: dict[str, str] | None = None, recalibrate_on: str | Path | None = None, prevalence: float | None = None,
    explain: str | None = "auto", by: list[str] | None = None, by_table: str | Path | None = None, by_pattern: list[str] | None = None,
    device: str = "cpu", readers: str | Path | None = None, reader_columns: list[str] | None = None,
) -> dict:
    """Evaluate a trained run on one split of its dataset, or on another dataset (external validation).

    The threshold is the one chosen on validation data at training time. ``split`` defaults to
    ``test`` on the training data and ``all`` (every image) on another dataset, whose results are
    stored under ``external:<folder name>`` beside the internal ones. ``class_map`` maps the other
    dataset's class names to the model's. A shift check compares the images with the training images.
    ``recalibrate_on`` (binary tasks, external data): a small labelled sample of the new site, disjoint
    from the evaluated images, on which the threshold is chosen again with the run's rule; the
    evaluated images are then also scored at that threshold. ``prevalence`` (binary) recomputes PPV and NPV
    for a screening population with that share of disease. ``explain`` (a heat-map method, or None) adds
    the gallery and the "where does it look" figure. ``by`` (columns of ``by_table``, by default the run's own
    label table) and ``by_pattern`` (``NAME=REGEX`` on file names) add per-subgroup figures with heterogeneity
    tests (:mod:`cxrkit.metrics.subgroups`). ``readers`` (binary): a CSV of human readers' calls on these images, one
    column per reader (``reader_columns`` names them), compared with the model on the same images
    (:mod:`cxrkit.metrics.readers`). ``device`` places the model (auto, cpu, cuda). Returns the metrics
    dict and writes metrics.json, predictions.csv, plots and report.html.
    """
    # Locked from loading the run to its last write: metrics.json, predictions.csv and meta.json's history are read,
    # extended and written back, and an evaluation running beside this one would otherwise lose its results or ours.
    with run_lock(run_dir, "evaluate"):
        run = Run.load(run_dir, device=device)
        ds, cfg = load_run_dataset(run, data, progress, class_map)
        trained_on = run.record.data_root(run.path)
        same_data = trained_on is not None and run.is_own_data(ds.source.root)
        split = split or ("test" if same_data else "all")
        from cxrkit.data.sources import left_out_notes

        notes = [*left_out_notes(ds.source), *ds.notes]  # 10 .webp of 30 images were left out, and the prevalence shown was wrong
        if same_data and ds.fingerprint() != run.record.data.get("fingerprint"):
            notes.append("the dataset changed since training (files added, removed, resized or relabelled); split membership may differ")
        key = split
        if not same_data:
            key = external_key({e["split"]: e["data"] for e in run.record.evaluations}, ds.source.shown, ds.source.root)
            scope = "all its images" if split == "all" else f"its {SPLIT_WORDS.get(split, split)} split"
            notes.append(f"external data: {ds.source.shown}, {scope} (trained on {run.record.data.get('root')})")
        elif split == "all":
            raise ValueError("--split all mixes training, validation and test images of the training data; choose test, val or train")
        idx = ds.index(split)
        if len(idx) == 0:
            available = [s for s in ("train", "val", "test") if len(ds.index(s))]
            raise ValueError(f"split {split!r} has no images in {ds.source.shown}; available: {', '.join(available)}")
        images = np.asarray(ds.images[idx])  # one read of the memory map for the looks, the shift check and the predictions
        # Which images were looked at, by their decoded content and labels, not by where they lie: keyed by the folder's path, a
        # run copied or moved with its data (the demo keeps it inside the run) counted its earlier looks at test as none, a moved
        # external set counted its looks anew, and other images put at its old path were counted as its looks.
        digest = hashlib.sha256(np.ascontiguousarray(images).data)  # no copy of the images
        digest.update(np.ascontiguousarray(ds.labels[idx]).data)
        looked_at = digest.hexdigest()[:16]
        history = run.record.evaluations
        external = not same_data
        # copies of the test images evaluated as another site were looks at test too (recorded with "test_copies")
        earlier = [e for e in history if (same_data and (e.get("split") == key or (key == "test" and e.get("test_copies")))) or (
            external and str(e.get("split", "")).startswith("external:")
            and (e["images"] == looked_at if "images" in e else e.get("split") == key and e.get("data") == str(ds.source.root)))]
        if (key == "test" or not same_data) and earlier:
            notes.append(
                f"this {'test split' if same_data else 'external set'} was evaluated {len(earlier)} time(s) before; if the model or settings changed in between, "
                "the test set has been used for tuning and its figures are optimistic"
            )
        if run.task == "multilabel" and not same_data:
            unnamed = [c for c, k in zip(run.classes, np.asarray(ds.labels[idx]).sum(axis=0)) if k == 0]
            if unnamed:  # each was counted as absent on every image, and its 100% specificity went into the summary
                notes.append(f"no image of {ds.source.shown} has {', '.join(unnamed)}: these findings cannot be measured here (no ROC-AUC or "
                             "sensitivity), and if its readers did not look for them, their 'absent' is not known; their specificity is "
                             "counted in the figures over all findings")
        overlap = None if same_data else training_overlap(run.path, images)
        if overlap:
            notes.append(overlap["message"])
            test_looks = sum(e.get("split") == "test" or bool(e.get("test_copies")) for e in history)
            if overlap["by_split"].get("test"):
                # a copy of the test split evaluated as "external" was a fresh look at test that counted as none
                notes.append(f"its {overlap['by_split']['test']} copies of the run's test images make this a look at the test split"
                             + (f", which was looked at {test_looks} time(s) before: if the model or settings changed in between, the "
                                "test set has been used for tuning and its figures are optimistic" if test_looks else
                                "; later evaluations of the test split count it"))
        reference = run.shift_reference()
        shift = None
        if reference is not None:
            from cxrkit.data.shift import check_shift

            shift = check_shift(reference, images, *ds.label_groups(idx))
            if shift["warning"]:
                notes.append("shift check: " + shift["message"])
        else:
            from cxrkit.run import NO_SHIFT_REFERENCE

            notes.append(f"shift check: the run has no {NO_SHIFT_REFERENCE}")
        if prevalence is not None and run.task != "binary":
            raise ValueError("--prevalence applies to binary runs (a disease against normal)")
        if readers is not None and run.task != "binary":
            raise ValueError(f"--readers compares a binary run (a disease against normal) with readers' calls; this run is {run.task}")
        if reader_columns and readers is None:
            raise ValueError("--reader-columns names columns of a --readers table; give the table too")
        if readers is not None:  # read before the model runs: a table that does not fit these images says so at once
            from cxrkit.evaluation.readers import read_calls, reader_comparison

            calls = read_calls(readers, run.classes, [ds.relpaths[i] for i in idx], reader_columns)
        t0 = time.perf_counter()
        raw_probs = run.predict_arrays(images, calibrated=False)
        seconds = time.perf_counter() - t0
        probs = run.apply_calibration(raw_probs)
        metrics = compute_metrics(run, ds.labels[idx], probs, seed=cfg.seed, patients=ds.patients_of(idx))
        if overlap:
            metrics["training_overlap"] = {k: v for k, v in overlap.items() if k != "message"}
        one_class = one_class_restriction(metrics)
        if one_class:
            notes.append(one_class)
        notes.extend(unchosen_threshold_notes(run))
        # The validation split itself: its fresh predictions are the validation predictions (as training and calibrate
        # pass them); the stored rows are about to be replaced, and damaged ones must not stop their own rewrite.
        own_val = same_data and split == "val" and run.task != "multilabel"
        val = (ds.labels[idx], probs) if own_val else validation_predictions(run)
        metrics.update(decision_analysis(run, ds.labels[idx], probs, raw_probs, val, prevalence, spread=not (same_data and split == "val"),
                                         patients=ds.patients_of(idx)))
        if not same_data:
            from cxrkit.evaluation.threshold_transfer import threshold_transfer

            metrics["threshold_transfer"] = threshold_transfer(read_metrics(run.path).get("val"), metrics,
                                                               f"cxrkit evaluate {run.path} {ds.source.shown} --recalibrate-on SAMPLE_DIR")
            if metrics["threshold_transfer"] and not metrics["threshold_transfer"]["holds"]:
                notes.append(metrics["threshold_transfer"]["message"])
        if readers is not None:
            metrics["readers"] = reader_comparison(run, ds.labels[idx], probs, readers, *calls, seed=cfg.seed, patients=ds.patients_of(idx))
            notes.extend(metrics["readers"].pop("notes"))
        # All or none, from the first figure drawn (the heat maps) to the report: a full disk at predictions.csv must
        # not leave metrics.json with results the history lacks, nor plots/ with figures of an evaluation that failed.
        with all_or_nothing([run.path / f for f in (METRICS_FILE, PREDICTIONS_FILE, META_FILE, REPORT_FILE)], [run.path / PLOTS_DIR]):
            if explain and run.task_object.one_label_per_image:  # heat maps are per decided class; a multi-label decision is a set
                metrics["attention"] = _explain(run, images, ds.labels[idx], probs, key, explain, cfg.seed)
            if by or by_pattern:
                from cxrkit.evaluation.subgroups import subgroup_analysis

                table = Path(by_table) if by_table else (Path(cfg.labels) if same_data and cfg.labels else None)
                metrics["subgroups"] = subgroup_analysis(run, ds.labels[idx], probs, [ds.relpaths[i] for i in idx], list(by or []), table,
                                                         list(by_pattern or []), seed=cfg.seed,
                                                         sites=None if ds.sites is None else [str(ds.sites[i]) for i in idx],
                                                         patients=ds.patients_of(idx))
            metrics["inference_images_per_second"] = len(idx) / seconds if seconds > 0 else None
            metrics["shift"] = shift
            metrics["source_split"] = split
            if same_data and ds.sites is not None:
                from cxrkit.evaluation.sites import per_site_metrics

                metrics["per_site"] = per_site_metrics(run, ds, idx, probs, cfg.seed)
            if recalibrate_on is not None:
                metrics["recalibrated"] = _recalibrated(run, ds, idx, probs, recalibrate_on, class_map, progress, cfg.seed)
                r = metrics["recalibrated"]
                small = min(r["positives"], r["n"] - r["positives"]) < 20  # 2 tb and 1 healthy image chose it without a word
                notes.append(f"threshold re-chosen on {r['sample']} ({r['n']} images, {r['positives']} {run.classes[1]}): "
                             f"{r['threshold']:.3f} instead of {run.threshold:.3f}"
                             + ("; with under 20 images of a class the chosen threshold moves a lot with the sample: read its "
                                "figures as a rough guide" if small else ""))
            write_evaluation(run, key, ds, idx, probs, metrics, notes)
            history.append({"split": key, "data": str(ds.source.root), "images": looked_at, "time": now(),
                            **({"test_copies": overlap["by_split"]["test"]} if overlap and overlap["by_split"].get("test") else {})})
            run.save_record()
            if write_report:
                from cxrkit.report.html import write_report as _write

                _write(run.path)
        return metrics


def _explain(run: Run, images: np.ndarray, y: np.ndarray, probs: np.ndarray, split: str, method: str, seed: int) -> dict | None:
    """Gallery and attention figures; a model without a layer for ``method`` is noted, not fatal."""
    from cxrkit.evaluation.gallery import explain_split
    from cxrkit.explain.cam import ExplainError

    try:
        return explain_split(run, images, y, probs, run.path / "plots", split.replace(":", "_"), method, seed)
    except ExplainError as exc:
        return {"error": str(exc)}


def _recalibrated(
    run: Run, ds: LabelledImages, idx: np.ndarray, probs: np.ndarray, sample: str | Path, class_map: dict[str, str] | None,
    progress: bool, seed: int,
) -> dict:
    """Threshold chosen on a labelled sample of the new site, and the evaluated images' metrics at it."""
    if run.task != "binary":
        raise ValueError("--recalibrate-on applies to binary tasks (multi-class decisions take the most probable class)")
    cal, _ = load_run_dataset(run, sample, progress, class_map)
    if cal.source.root == ds.source.root:
        raise ValueError("the recalibration sample must be other images than the evaluated ones; give a separate folder")
    from cxrkit.data.identity import pixel_hashes

    # By decoded pixels, not name and size: the same images renamed chose the threshold and were scored at it.
    evaluated = set(pixel_hashes(np.asarray(ds.images[idx])))
    cal_idx = cal.index("all")
    overlap = sum(h in evaluated for h in pixel_hashes(np.asarray(cal.images[cal_idx])))
    if overlap:
        raise ValueError(f"{overlap} image(s) of the recalibration sample are identical to evaluated images (decoded pixels): a threshold "
                         "chosen on them and scored on them is not tested; give a sample of other images")
    cal_probs = run.predict_arrays(cal.images[cal_idx])
    rule = run.record.threshold_rule
    try:
        choice = choose_threshold(cal.labels[cal_idx], cal_probs[:, 1], rule, chosen_on=f"recalibration sample {cal.source.root.name}",
                                  patients=cal.patients_of(cal_idx))
    except GuaranteeImpossible as exc:  # its advice named --allow-point-estimate, which evaluate does not have
        raise GuaranteeImpossible(f"{str(exc).split('; add ')[0]}: give a larger labelled sample, or evaluate without "
                                  "--recalibrate-on") from None
    m = binary_metrics(ds.labels[idx], probs[:, 1], choice.value, seed=seed, patients=ds.patients_of(idx))
    return {"sample": str(cal.source.root), "n": len(cal_idx), "positives": int((cal.labels[cal_idx] == 1).sum()), "rule": rule,
            "threshold": choice.value,
            "metrics": {k: m["metrics"][k] for k in ("sensitivity", "specificity", "ppv", "npv")}, "confusion": m["confusion"]}


def finish_training(
    run_dir: str | Path, ds: LabelledImages, threshold_rule: str, seed: int = 0, explain: str | None = "auto", allow_point_estimate: bool = False,
    referral: str | None = None,
) -> dict:
    """After training: choose the threshold on validation data, evaluate validation, draw curves, write the report."""
    from cxrkit.report.html import write_report
    from cxrkit.report.plots import plot_history

    run = Run.load(run_dir, allow_incomplete=True)
    idx = ds.index("val")
    images = np.asarray(ds.images[idx])
    probs = run.predict_arrays(images)
    if run.task == "binary":
        try:
            store_threshold(run, ds.labels[idx], probs, threshold_rule, allow_point_estimate, ds.patients_of(idx))
        except GuaranteeImpossible as exc:
            raise GuaranteeImpossible(f"{exc}. The trained model is kept in {run.path} without a threshold: finish it with "
                                      "`cxrkit train DATA --out RUN --resume` and another --threshold-rule or --allow-point-estimate") from None
        if referral:
            store_referral(run, ds.labels[idx], probs, referral, ds.patients_of(idx))
    elif run.task == "multilabel":
        store_thresholds(run, ds.labels[idx], probs, threshold_rule, allow_point_estimate, ds.patients_of(idx))
        plot_label_counts(ds.counts(), ds.image_counts(), run.path / "plots" / "label_counts.png")
        train = ds.index("train")
        plot_cooccurrence(ds.labels[train], ds.class_names, run.path / "plots" / "cooccurrence.png")
    else:  # multi-class decides the most probable class: nothing to choose, the run is complete
        run.record.complete = True
        run.save_record()
    metrics = compute_metrics(run, ds.labels[idx], probs, seed=seed, patients=ds.patients_of(idx))
    metrics.update(decision_analysis(run, ds.labels[idx], probs, probs, (ds.labels[idx], probs), patients=ds.patients_of(idx)))
    if ds.sites is not None:
        from cxrkit.evaluation.sites import per_site_metrics

        metrics["per_site"] = per_site_metrics(run, ds, idx, probs, seed)
    if explain and run.task_object.one_label_per_image:  # heat maps are per decided class; a multi-label decision is a set
        metrics["attention"] = _explain(run, images, ds.labels[idx], probs, "val", explain, seed)
    write_evaluation(run, "val", ds, idx, probs, metrics, unchosen_threshold_notes(run))
    history = [{k: v for k, v in r.items() if k != "stage"} for r in read_history(run.path)]
    plot_history(history, run.record.training["best_epoch"], run.path / PLOTS_DIR / "history.png")
    write_report(run.path)
    return metrics


def _slug(name: str) -> str:
    """A file-name-safe form of a column name."""
    import re

    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower() or "group"
