"""`cxrkit stress`: re-evaluate a split under controlled image changes; does the model read anatomy or exposure?

Each change of :func:`cxrkit.data.perturb.standard_perturbations` is applied to the decoded images of one
split and the ROC-AUC (DeLong 95% CI) is compared with the unchanged images' by DeLong's paired test on the
same images. A change that leaves the lungs alone (exposure, contrast, the film border, the corners) should
barely move a model that reads anatomy; a drop of at least ``SHORTCUT_DROP`` with p < 0.05 is called a shortcut.

A run trained with ``--intensity`` normalises every image it is given, so a re-exposed file is normalised
before the model sees it: the changes are applied to the decoded image *before* the run's normalisation,
which is then applied (at the run's size rather than full resolution) to the unchanged and changed images alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cxrkit.data.intensity import normalize_intensity
from cxrkit.data.perturb import standard_perturbations
from cxrkit.evaluation.evaluate import external_key, training_overlap
from cxrkit.metrics.intervals import delong_interval, delong_paired
from cxrkit.record import atomic_write_text
from cxrkit.record.lock import run_lock
from cxrkit.record.meta import now
from cxrkit.report.narrative import ci_text
from cxrkit.run import Run, load_run_dataset

SHORTCUT_DROP = 0.05  # the tolerance: a robust model's stressed AUC stays within 0.05
STRESS_FILE = "stress.json"


def reference_exposure(run: Run) -> tuple[float, float]:
    """The training images' typical per-image mean and std (0-1 units): medians from the shift reference,
    else the run's pooled normalisation statistics."""
    ref = run.shift_reference()
    if ref is not None and ref["overall"].get("mean") and ref["overall"].get("std"):
        return float(np.median(ref["overall"]["mean"])), float(np.median(ref["overall"]["std"]))
    return run.preprocessing.mean, run.preprocessing.std


def normalise_as_run(run: Run, images: np.ndarray) -> np.ndarray:
    """``images`` after the run's per-image intensity normalisation (unchanged when it has none)."""
    mode = run.preprocessing.intensity
    if mode == "none":
        return images
    return np.stack([normalize_intensity(im, mode) for im in images]) if len(images) else images


def stress_arrays(run: Run, images: np.ndarray, y: np.ndarray, patients: list[str] | None = None) -> dict:
    """AUC of a binary run on ``images`` (uint8, decoded at the run's size *without* its intensity normalisation,
    see ``load_run_dataset(raw_intensity=True)``) and under each perturbation; intervals and paired tests count
    ``patients`` where one has several images."""
    from cxrkit.metrics.inputs import patient_clusters

    if run.task != "binary":
        raise ValueError("cxrkit stress needs a binary run (it compares ROC-AUCs); this run is " + run.task)
    y = np.asarray(y).astype(int)
    if y.min() == y.max():
        raise ValueError("the split has images of one class only; ROC-AUC needs both")
    clusters = patient_clusters(patients, len(y))
    base = run.predict_arrays(normalise_as_run(run, images))[:, 1]
    auc, ci = delong_interval(y, base, clusters=clusters)
    mean, std = reference_exposure(run)
    rows = []
    for pert in standard_perturbations(mean, std):
        p = run.predict_arrays(normalise_as_run(run, pert.apply(images)))[:, 1]
        a, c = delong_interval(y, p, clusters=clusters)
        d = delong_paired(y, p, base, clusters)
        shortcut = not pert.anatomy and d["difference"] <= -SHORTCUT_DROP and d["p_value"] < 0.05
        rows.append({"name": pert.name, "description": pert.description, "touches_anatomy": pert.anatomy,
                     "auc": a, "ci": list(c) if c else None, "change": d["difference"], "p_value": d["p_value"], "shortcut": shortcut})
    return {"n": int(len(y)), "positives": int(y.sum()), "auc": auc, "ci": list(ci) if ci else None,
            **({} if clusters is None else {"n_patients": int(clusters.max()) + 1, "intervals_by": "patient"}),
            "reference": {"mean": mean, "std": std}, "perturbations": rows, "verdict": verdict(rows)}


def verdict(rows: list[dict]) -> str:
    """The stress result in words."""
    bad = [r for r in rows if r["shortcut"]]
    if not bad:
        worst = min((r for r in rows if not r["touches_anatomy"]), key=lambda r: r["change"])
        said = f"no shortcut found: no change that leaves the lungs alone lowered ROC-AUC by {SHORTCUT_DROP} or more with p < 0.05"
        if worst["change"] >= 0:  # "largest drop: darker, +0.000"
            return f"{said} (none lowered it)"
        if worst["change"] <= -SHORTCUT_DROP:  # a drop of 0.12 beside "no change lowered it by 0.05" read as a contradiction
            return (f"{said}; the largest, {worst['name']} ({worst['change']:+.3f}, p={p_text(worst['p_value'])}), is not significant on "
                    "these images: more test images would tell whether the model relies on it")
        return f"{said} (largest drop: {worst['name']}, {worst['change']:+.3f})"
    names = ", ".join(f"{r['name']} ({r['change']:+.3f}, p={p_text(r['p_value'])})" for r in bad)
    return (f"SHORTCUT: ROC-AUC drops under changes that leave the anatomy in place: {names}. The model reads exposure, "
            "borders or markers as well as the lungs, so its figures will not carry over to a site with other exposure or "
            "markers; consider --crop-border, per-image --intensity normalisation or the robust augmentation preset (the "
            "default), and check with `cxrkit stress` again")


def stress_run(run_dir: str | Path, data: str | Path | None = None, split: str | None = None, progress: bool = True,
               class_map: dict[str, str] | None = None) -> dict:
    """Stress-test a run on a split of its dataset (default test) or on all images of another dataset; writes RUN/stress.json."""
    with run_lock(run_dir, "stress"):  # stress.json and meta.json's history are read, extended and written back
        run = Run.load(run_dir)
        ds, _ = load_run_dataset(run, data, progress, class_map, raw_intensity=True)
        trained_on = run.record.data_root(run.path)
        same_data = trained_on is not None and run.is_own_data(ds.source.root)
        split = split or ("test" if same_data else "all")
        if same_data and split == "all":
            raise ValueError("--split all mixes training, validation and test images of the training data; choose test, val or train")
        idx = ds.index(split)
        if len(idx) == 0:
            raise ValueError(f"split {split!r} has no images in {ds.source.root}")
        path = Path(run_dir) / STRESS_FILE
        stored = json.loads(path.read_text()) if path.is_file() else {}
        key = split if same_data else external_key({k: v.get("data") for k, v in stored.items() if isinstance(v, dict)},
                                                   ds.source.root, ds.source.root)
        images = np.asarray(ds.images[idx])
        result = stress_arrays(run, images, ds.labels[idx], ds.patients_of(idx))
        result.update(split=key, data=str(ds.source.root))
        # Copies of the run's own images in "another" dataset made a memorised set look robust, without a word.
        overlap = None if same_data else training_overlap(run.path, _as_trained(run, data, class_map, images, idx))
        if overlap:
            result["training_overlap"] = {k: v for k, v in overlap.items() if k != "message"}
            result["notes"] = [overlap["message"]]
        stored[key] = result
        atomic_write_text(path, json.dumps(stored, indent=2))
        if key == "test":  # every look at the test set is recorded, as evaluate does
            run.record.evaluations.append({"split": "stress:test", "data": str(ds.source.root), "time": now()})
            run.save_record()
        return result


def _as_trained(run: Run, data, class_map: dict[str, str] | None, raw: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``raw`` as the run's splits were hashed: its intensity normalisation runs before the resize, so it is read again."""
    if run.preprocessing.intensity == "none":
        return raw
    ds, _ = load_run_dataset(run, data, progress=False, class_map=class_map)
    return np.asarray(ds.images[idx])


def p_text(p: float) -> str:
    """A p-value as read against 0.05: 0.0496 was shown as "p=0.05" beside a verdict that called it below 0.05."""
    if p < 0.001:
        return "<0.001"
    text = f"{p:.3g}" if p < 0.1 else f"{p:.2f}"
    return "<0.05" if p < 0.05 and float(text) >= 0.05 else text


def format_table(result: dict) -> str:
    """The stress result as a plain-text table and verdict."""
    patients = f" from {result['n_patients']} patients, intervals by patient" if result.get("intervals_by") == "patient" else ""
    lines = [f"{result['split']}: {result['n']} images ({result['positives']} positive{patients}), ROC-AUC {result['auc']:.3f} "
             f"({ci_text(result, percent=False) or 'no interval'})",
             f"{'change':<18} {'ROC-AUC (95% CI)':<24} {'vs unchanged':>12} {'p':>8}  touches lungs"]
    for r in result["perturbations"]:
        ci = f"{r['ci'][0]:.3f}–{r['ci'][1]:.3f}" if r["ci"] else "no interval"
        lines.append(f"{r['name']:<18} {r['auc']:.3f} ({ci})      {r['change']:+12.3f} {p_text(r['p_value']):>8}  "
                     f"{'yes' if r['touches_anatomy'] else 'no'}{'  <- shortcut' if r['shortcut'] else ''}")
    lines.append(result["verdict"])
    return "\n".join([f"note: {n}" for n in result.get("notes", [])] + lines)
