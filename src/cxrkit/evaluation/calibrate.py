"""``cxrkit calibrate``: fit a probability calibration on a run's validation split, store it in the run and
re-choose the decision threshold on the calibrated validation probabilities so decisions stay consistent."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrkit.evaluation.evaluate import compute_metrics, decision_analysis, store_threshold, write_evaluation
from cxrkit.metrics.calibration import Calibration, fit_calibration, fit_multilabel_calibration
from cxrkit.record import CALIBRATION_FILE, META_FILE, atomic_write_json, file_sha256, read_meta, read_metrics, update_metrics, write_meta
from cxrkit.record.files import METRICS_FILE, PLOTS_DIR, PREDICTIONS_FILE, REPORT_FILE, all_or_nothing
from cxrkit.record.lock import run_lock
from cxrkit.run import Run, load_run_dataset

STALE_PREFIX = "evaluated with probabilities the run no longer gives"
# the notes written before this one, found and replaced like it
STALE_PREFIXES = (STALE_PREFIX, "evaluated with a calibration that has since been", "evaluated before the run was calibrated")


def calibrate_run(run_dir: str | Path, data: str | Path | None = None, method: str = "auto", progress: bool = True) -> dict:
    """Fit ``method`` on the validation split of the run's dataset (never test), save ``calibration.json``,
    re-choose a binary run's threshold with its rule on the calibrated validation probabilities, and
    rewrite the validation results and the report. Returns the calibration as stored.

    ``auto`` is Platt scaling for binary runs and temperature scaling otherwise: class-weighted training
    shifts a binary model's probabilities, which a temperature cannot undo (on Kermany temperature scaling
    raised test ECE from 0.116 to 0.130 while Platt lowered it to 0.012; benchmarks/calibration_effect.py)."""
    with run_lock(run_dir, "calibrate"):  # the threshold in meta.json and the validation results are read and rewritten
        run = Run.load(run_dir)
        if method == "auto":
            method = run.task_object.calibration_method
        if run.task == "multilabel" and method != "platt":
            raise ValueError(f"a multi-label run is calibrated with one platt map per finding (--method auto or platt), not {method}")
        ds, cfg = load_run_dataset(run, data, progress)
        idx = ds.index("val")
        if len(idx) == 0:
            raise ValueError(f"{ds.source.root} has no validation images to fit the calibration on")
        images = np.asarray(ds.images[idx])
        if not run.is_own_data(data):
            # Another dataset's "validation" cut may hold the run's own training images: 52 of 75 were, and the map was fitted
            # to images the model had memorised.
            from cxrkit.evaluation.evaluate import training_overlap

            overlap = training_overlap(run.path, images)
            if overlap and set(overlap["by_split"]) & {"train", "test"}:
                raise ValueError(f"{overlap['message'].split(': this is not')[0]}: a calibration fitted on them is fitted to images "
                                 "the model was trained or tested on; calibrate on images from another source")
        y = ds.labels[idx]
        raw = run.predict_arrays(images, calibrated=False)
        if run.task == "multilabel":
            cal = fit_multilabel_calibration(y, raw, run.classes, fitted_on=f"val split of {ds.source.root}")
        else:
            cal = fit_calibration(y, raw, method, fitted_on=f"val split of {ds.source.root}")
            _refuse_inverting_map(cal)
        # All or nothing, from the threshold in meta.json to the report: a failure half-way (a full disk, Ctrl-C) must
        # not leave a threshold chosen on calibrated probabilities without calibration.json, nor the reverse.
        files = [run.path / f for f in (META_FILE, CALIBRATION_FILE, METRICS_FILE, PREDICTIONS_FILE, REPORT_FILE)]
        rechosen = None
        with all_or_nothing(files, [run.path / PLOTS_DIR]):
            if run.task == "binary":
                old = dict(run.record.threshold)
                uncalibrated = old.get("uncalibrated_value", old["value"])
                choice = store_threshold(run, y, cal.apply(raw), old["rule"], patients=ds.patients_of(idx))
                choice.update(calibrated=method, uncalibrated_value=uncalibrated)
                run.record.set_threshold(choice)
                cal.threshold = {"uncalibrated": uncalibrated, "calibrated": choice["value"], "rule": old["rule"]}
                rechosen = _rechoose_referral(run, y, cal.apply(raw), ds.patients_of(idx))
            elif run.task == "multilabel":
                _map_finding_thresholds(run, cal)
            record = cal.to_dict()
            atomic_write_json(run.path / CALIBRATION_FILE, record)
            # meta.json after calibration.json, naming it by its hash: a reader that loads between the two writes sees
            # the old meta.json with a calibration it does not name and is refused, never a threshold on the wrong scale.
            run.record.calibration_sha256 = file_sha256(run.path / CALIBRATION_FILE)
            run.save_record()
            _rescore_validation(Run.load(run_dir), ds, idx, images, raw, cfg.seed,
                                f"{STALE_PREFIX} (it was calibrated since); run `cxrkit evaluate` again for figures with its calibration")
        return {**record, "referral": rechosen} if rechosen else record


def _map_finding_thresholds(run: Run, cal: Calibration) -> None:
    """Move each finding's threshold through its calibration map, so that every decision stays as it was.

    Re-choosing them on the calibrated probabilities would give the same split for a chosen threshold, but a finding left
    at an unchosen 0.5 (no validation image with it) would then be called on other images without a word.
    """
    thresholds = {}
    for k, name in enumerate(run.classes):
        t = dict(run.record.thresholds[name])
        uncalibrated = t.get("uncalibrated_value", t["value"])
        mapped = float(cal.apply(np.full((1, len(run.classes)), uncalibrated))[0, k])
        thresholds[name] = {**t, "value": mapped, "uncalibrated_value": uncalibrated, "calibrated": cal.params["how"][k]}
    run.record.set_thresholds(thresholds, run.record.threshold_rule or "youden")


def _rechoose_referral(run: Run, y: np.ndarray, probs: np.ndarray, patients: list[str] | None = None) -> dict | None:
    """A referral band chosen again with its own rule on the probabilities the run now gives (calibrated or not): left as it
    was, its bounds were on the old scale, and 98% of images were "decided alone" against the 37% it was chosen for."""
    band = run.record.referral
    if not band:
        return None
    from cxrkit.metrics.referral import choose_referral

    run.record.referral = choose_referral(y, probs[:, 1], band["spec"], threshold=run.record.threshold_value, patients=patients)
    return run.record.referral


def _refuse_inverting_map(cal: Calibration) -> None:
    """Refuse a fitted map that reverses or erases the model's ranking of images: it would decide against the model."""
    # A model whose validation probabilities fall as the disease becomes likelier (AUC under 0.5: it learned nothing, or
    # a few validation images say so by chance) gets a negative Platt slope, and the map turns every ranking around:
    # the image the model finds likeliest becomes the least likely. A flat isotonic map gives every image one probability.
    # fit_calibration fits Platt on the standardised logit, so a slope of exactly 0 now means probabilities that are all
    # the same (it meant an unscaled fit stopped at its start on ones that differ only in the fourth decimal).
    p = cal.params
    if cal.method == "platt" and p["slope"] < 0:
        raise ValueError(f"platt calibration on {cal.n} validation images has slope {p['slope']:.3g}: the model's validation "
                         "probabilities fall as the disease becomes likelier, so the map would reverse its decisions; nothing was "
                         "changed. Retrain the model (or validate on more images) before calibrating")
    if (cal.method == "platt" and p["slope"] == 0) or (cal.method == "isotonic" and min(p["y"]) == max(p["y"])):
        raise ValueError(f"{cal.method} calibration on {cal.n} validation images is flat (every image would get one probability): "
                         "the model's validation probabilities do not rank the cases; nothing was changed. Retrain the model "
                         "(or validate on more images) before calibrating")


def _rescore_validation(run: Run, ds, idx: np.ndarray, images: np.ndarray, raw: np.ndarray, seed: int, stale_note: str) -> None:
    """Rewrite the validation results and the report with the run's probabilities as they now are (calibrated or not).

    Validation predictions feed later evaluations (operating points, the WHO check, the threshold's spread), so they
    must be on the scale the run now predicts on. The other splits were scored with the calibration as it was: each
    gets ``stale_note`` rather than a silent mix of two scales.
    """
    y = ds.labels[idx]
    probs = run.apply_calibration(raw)
    metrics = compute_metrics(run, y, probs, seed=seed, patients=ds.patients_of(idx))
    metrics.update(decision_analysis(run, y, probs, raw, (y, probs), patients=ds.patients_of(idx)))
    old = read_metrics(run.path)
    if "attention" in old.get("val", {}):
        metrics["attention"] = old["val"]["attention"]  # heat maps do not change with calibration
    write_evaluation(run, "val", ds, idx, probs, metrics)
    for split, m in old.items():
        if split not in ("val", "train") and isinstance(m, dict):
            # One note for the latest change: three piled up after calibrate, calibrate, --remove, calibrate, and "evaluated
            # before the run was calibrated" was false for a split scored with a calibration since removed.
            kept = [n for n in m.get("notes", []) if not n.startswith(STALE_PREFIXES)]
            update_metrics(run.path, split, {**m, "notes": [*kept, stale_note]})
    from cxrkit.report.html import write_report

    write_report(run.path)


def remove_calibration(run_dir: str | Path, data: str | Path | None = None, progress: bool = True) -> bool:
    """Delete a run's calibration, restore the threshold chosen on the model's own probabilities and re-score the
    validation split with them (its stored predictions were calibrated; later evaluations choose operating points on them).
    False, with nothing changed, for a run that has no calibration."""
    with run_lock(run_dir, "calibrate"):
        had = (Path(run_dir) / CALIBRATION_FILE).exists()
        files = [Path(run_dir) / f for f in (META_FILE, CALIBRATION_FILE, METRICS_FILE, PREDICTIONS_FILE, REPORT_FILE)]
        # All or nothing: calibration.json deleted under a threshold chosen on calibrated probabilities, or validation
        # results left on the calibrated scale, would decide wrongly.
        with all_or_nothing(files, [Path(run_dir) / PLOTS_DIR]):
            if (Path(run_dir) / META_FILE).is_file():  # before loading: Run.load refuses a damaged calibration.json
                (Path(run_dir) / CALIBRATION_FILE).unlink(missing_ok=True)
                meta = read_meta(run_dir)
                if meta.calibration_sha256 not in (None, "none"):  # runs written before the record keep having none
                    meta.calibration_sha256 = "none"
                    write_meta(run_dir, meta)
            run = Run.load(run_dir)
            t = dict(run.record.threshold or {})
            per_finding = {k: dict(v) for k, v in (run.record.thresholds or {}).items()}
            mapped = any("uncalibrated_value" in v for v in per_finding.values())
            if not had and "uncalibrated_value" not in t and not mapped:
                return False  # never calibrated: nothing to restore, and no split was scored with a calibration
            if "uncalibrated_value" in t or mapped:
                if mapped:
                    for v in per_finding.values():
                        v["value"] = v.pop("uncalibrated_value", v["value"])
                        v.pop("calibrated", None)
                    run.record.set_thresholds(per_finding, run.record.threshold_rule or "youden")
                else:
                    t["value"] = t.pop("uncalibrated_value")
                    t.pop("calibrated", None)
                    run.record.set_threshold(t)
                run.save_record()
                run = Run.load(run_dir)
            if not read_metrics(run.path).get("val") and not run.record.referral:
                return True  # never evaluated: nothing on the calibrated scale to re-score
            ds, cfg = load_run_dataset(run, data, progress)
            idx = ds.index("val")
            if len(idx) == 0:
                return True
            images = np.asarray(ds.images[idx])
            if run.record.referral:  # its bounds were on the calibrated scale
                _rechoose_referral(run, ds.labels[idx], run.predict_arrays(images, calibrated=False), ds.patients_of(idx))
                run.save_record()
                run = Run.load(run_dir)
            if not read_metrics(run.path).get("val"):
                return True
            _rescore_validation(run, ds, idx, images, run.predict_arrays(images, calibrated=False), cfg.seed,
                                f"{STALE_PREFIX} (its calibration was removed since); run `cxrkit evaluate` again for figures without it")
    return True
