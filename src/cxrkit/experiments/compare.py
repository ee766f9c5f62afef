"""Train several models on the same split and compare them: one table, paired DeLong tests, a recommendation.

Every model gets the same data, split, seed, preprocessing cache and training settings; only the
architecture (and, if asked, the image size) differs. Progress lives in ``comparison.json``, written
after each model, so an interrupted comparison resumes where it stopped, and a model that fails is
recorded in its row without stopping the others.
"""

from __future__ import annotations

import json
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cxrkit.config import TrainConfig
from cxrkit.data.spec import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from cxrkit.evaluation.speed import inference_ms_per_image
from cxrkit.metrics.inputs import patient_clusters
from cxrkit.metrics.intervals import delong_paired, paired_bootstrap_difference
from cxrkit.models.registry import get_spec
from cxrkit.record import META_FILE, MODEL_FILE, atomic_write_csv, atomic_write_text, read_history, read_meta, split_metrics, split_predictions
from cxrkit.report.plots import plot_roc_overlay
from cxrkit.run import Run

STATE_FILE = "comparison.json"
AUC_MARGIN = 0.02
ALPHA = 0.05
RULE = (
    f"the model with the fewest parameters whose ROC-AUC is within {AUC_MARGIN} of the best model's and not significantly "
    f"lower (two-sided p >= {ALPHA}: a paired DeLong test for binary runs, a paired bootstrap of the averaged AUC otherwise); "
    "ties go to the faster model at batch size 1"
)
COLUMNS = [
    "model", "status", "image_size", "roc_auc", "roc_auc_ci_low", "roc_auc_ci_high", "auc_difference_vs_best", "delong_p_vs_best",
    "paired_p_vs_best",
    "threshold", "sensitivity", "specificity", "ppv", "npv", "f1", "tp", "fp", "tn", "fn", "parameters_trainable", "parameters_total",
    "model_file_mb", "pretrained", "epochs_run", "best_epoch", "stopped_by", "train_minutes", "seconds_per_epoch",
    "train_images_per_second", "inference_ms_batch1", "inference_ms_per_image_batch32", "error",
]


def parse_models(spec: str, image_size: int) -> list[tuple[str, str, int]]:
    """``"cnn,pasa,resnet18:128"`` -> [(label, model, image size)]; ``name:SIZE`` overrides the size for one model."""
    out, seen = [], set()
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, _, size = item.partition(":")
        get_spec(name)  # unknown names fail before anything trains
        if size and not size.isdigit():
            raise ValueError(f"bad model entry {item!r}: write NAME or NAME:IMAGE_SIZE, e.g. resnet18:128")
        if size and not MIN_IMAGE_SIZE <= int(size) <= MAX_IMAGE_SIZE:  # else the other models trained and this one failed after them
            raise ValueError(f"bad model entry {item!r}: the image size must be from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}")
        label = item if size else name
        if label in seen:
            raise ValueError(f"model {label} is listed twice")
        seen.add(label)
        out.append((label, name, int(size) if size else image_size))
    if len(out) < 2:
        raise ValueError("a comparison needs at least two models, e.g. --models cnn,pasa")
    return out


def _run_dir(out: Path, label: str) -> Path:
    return out / re.sub(r"[^A-Za-z0-9._-]+", "_", label)


def _comparable(cfg: TrainConfig) -> dict:
    d = cfg.to_dict()
    for k in ("out", "model", "image_size"):
        d.pop(k)
    return d


def _read_split(run_dir: Path, split: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(paths, true class index, probabilities) of one split from a run's predictions.csv."""
    meta = read_meta(run_dir)
    return split_predictions(run_dir, split, meta.classes, meta.task == "multilabel")


def _row(run_dir: Path, split: str) -> dict:
    """The comparison row of a finished run, read from its files, plus inference timing measured now."""
    run = Run.load(run_dir)
    meta = run.meta
    m = split_metrics(run_dir, split)
    t = meta["training"]
    per_epoch = [h["train_seconds"] + h["val_seconds"] for h in read_history(run_dir)]
    pt = t.get("pretrained")
    row = {
        "status": "done", "image_size": meta["preprocessing"]["image_size"],
        "parameters_trainable": t["parameters_trainable"], "parameters_total": t["parameters_total"],
        "model_file_mb": round((run_dir / MODEL_FILE).stat().st_size / 1e6, 3),
        "pretrained": pt["source"] if pt else "none",
        "epochs_run": t["epochs_run"], "best_epoch": t["best_epoch"], "stopped_by": t.get("stopped_by", ""),
        "train_minutes": round(t["seconds_total"] / 60, 2), "seconds_per_epoch": round(float(np.median(per_epoch)), 2),
        "train_images_per_second": round(t["images_per_second_median"], 1),
        "inference_ms_batch1": round(inference_ms_per_image(run, 1, images=16), 2),
        "inference_ms_per_image_batch32": round(inference_ms_per_image(run, 32, images=64), 2),
    }
    mm = m["metrics"]
    if m["task"] == "binary":
        auc = mm["roc_auc"]
        row.update(roc_auc=auc["value"], threshold=m["threshold"], **{k: mm[k]["value"] for k in ("sensitivity", "specificity", "ppv", "npv", "f1")},
                   **m["confusion"])
    elif m["task"] == "multilabel":
        auc = mm["mean_roc_auc"]
        row.update(roc_auc=auc["value"])
    else:
        auc = mm["macro_roc_auc"]
        row.update(roc_auc=auc["value"], f1=mm["macro_f1"]["value"], confusion=m["confusion"])
    ci = auc.get("ci") or [None, None]
    row.update(roc_auc_ci_low=ci[0], roc_auc_ci_high=ci[1])
    return row


def _save_state(out: Path, state: dict) -> None:
    atomic_write_text(out / STATE_FILE, json.dumps(state, indent=2))


def compare(
    data: str, models: list[tuple[str, str, int]], out: str | Path, base: TrainConfig, split: str = "val",
    resume: bool = False, overwrite: bool = False, progress: bool = True, track: str | None = None,
) -> dict:
    """Train and evaluate each of ``models`` (from :func:`parse_models`) with ``base``'s settings; returns the summary.

    ``split`` is where models are compared: ``val`` (default; the split that already chose each
    model's checkpoint and threshold) or ``test`` (each run is then evaluated on test once).
    Writes one run folder per model under ``out`` and comparison.json/.csv/.md, plots and report.html.
    """
    if split not in ("val", "test"):
        raise ValueError("compare on split val or test")
    from cxrkit.data.dataset import open_source

    # an unreadable dataset fails once, not once per model
    open_source(data, base.labels, base.label_column, base.task, Path(base.cache_dir) if base.cache_dir else None)
    out = Path(out)
    state_path = out / STATE_FILE
    if state_path.exists() and not (resume or overwrite):
        raise FileExistsError(f"{out} already holds a comparison; pass --resume to continue it or --overwrite to start again")
    if (out / META_FILE).exists():  # its report.html was replaced by the comparison's, and model runs were added inside it
        raise FileExistsError(f"{out} is a training run; give the comparison a folder of its own (--out)")
    state = json.loads(state_path.read_text()) if (state_path.exists() and resume) else {}
    if not overwrite:
        # Runs in --out that this comparison did not start were replaced without a word (a 15-epoch run by a 1-epoch one).
        ours = {m.get("run") for m in state.get("models", {}).values()}
        theirs = [d.name for d in (_run_dir(out, label) for label, _, _ in models)
                  if d.name not in ours and d.is_dir() and any(d.iterdir())]
        if theirs:
            raise FileExistsError(f"{out} already holds {', '.join(theirs)}, which this comparison would replace; choose another --out "
                                  "or pass --overwrite")
    settings = _comparable(replace(base, data=str(data)))
    if state and (state.get("settings") != settings or state.get("split") != split):
        raise ValueError(f"{out} was started with other settings or split; --resume needs the same options (or use --overwrite)")
    state.update(settings=settings, split=split, data=str(data), rule=RULE)
    state.setdefault("models", {})
    state["order"] = [label for label, _, _ in models]
    out.mkdir(parents=True, exist_ok=True)
    _save_state(out, state)

    def log(msg: str) -> None:
        if progress:
            tqdm.write(msg)

    for i, (label, name, size) in enumerate(models, 1):
        run_dir = _run_dir(out, label)
        done = state["models"].get(label, {})
        if resume and done.get("status") == "done" and (run_dir / META_FILE).exists():
            trained_at = read_meta(run_dir).preprocessing.image_size
            if trained_at == size:
                log(f"[{i}/{len(models)}] {label}: finished earlier, skipped")
                continue
            # A changed --image-size on --resume kept the old run and reported it as the model at the new size.
            log(f"[{i}/{len(models)}] {label}: finished earlier at {trained_at} px, now asked at {size} px: trained again")
        log(f"\n[{i}/{len(models)}] {label} ({size} px) -> {run_dir}")
        state["models"][label] = {"status": "started", "run": run_dir.name}  # ours from now: --resume may replace it after a crash
        _save_state(out, state)
        t0 = time.perf_counter()
        try:
            from cxrkit.training import train

            cfg = replace(base, data=str(data), model=name, image_size=size, out=str(run_dir))
            from cxrkit.training.tracking import make_tracker

            train(cfg, progress=progress, overwrite=True, tracker=make_tracker(track))
            if read_meta(run_dir).training["interrupted"]:
                state["models"][label] = {"status": "interrupted", "run": run_dir.name}
                _save_state(out, state)
                raise KeyboardInterrupt
            if split == "test":
                from cxrkit.evaluation.evaluate import evaluate_run

                evaluate_run(run_dir, split="test", progress=progress)
            state["models"][label] = {"run": run_dir.name, **_row(run_dir, split)}
            log(f"{label}: AUC {_fmt(state['models'][label]['roc_auc'], '.4f')} on {split} in {time.perf_counter() - t0:.0f} s")
        except KeyboardInterrupt:
            log(f"comparison interrupted during {label}; continue it with --resume")
            _save_state(out, state)
            raise
        except Exception as exc:  # one model failing (out of memory, bad option) must not stop the others
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "error.txt").write_text(traceback.format_exc())
            state["models"][label] = {"status": "failed", "run": run_dir.name, "error": f"{type(exc).__name__}: {exc}"[:500]}
            log(f"{label} FAILED: {type(exc).__name__}: {exc} (details in {run_dir / 'error.txt'})")
        _save_state(out, state)
    return summarise(out)


def summarise(out: str | Path) -> dict:
    """Paired tests against the best model, the recommendation, and comparison.csv/.md/report.html from comparison.json."""
    out = Path(out)
    state = json.loads((out / STATE_FILE).read_text())
    split = state["split"]
    rows = []
    for label in state["order"]:
        entry = state["models"].get(label, {"status": "not run"})
        rows.append({"model": label, **entry})
    done = [r for r in rows if r["status"] == "done" and r.get("roc_auc") is not None]
    best, recommended, curves, notes = None, None, [], []
    if done:
        _check_same_data(out, done)
        best = max(done, key=lambda r: r["roc_auc"])
        preds = {r["model"]: _read_split(out / r["run"], split) for r in done}
        paths_best, y, p_best = preds[best["model"]]
        task = read_meta(out / best["run"]).task
        binary = task == "binary"
        clusters = _patient_clusters(out / best["run"], paths_best)
        if clusters is not None:
            how = "Obuchowski's clustered DeLong" if binary else "a bootstrap of whole patients"
            notes.append(f"the {len(y)} images come from {len(np.unique(clusters))} patients: the paired tests count patients "
                         f"({how}), not images")
        averaged = None if binary else _averaged_auc(task, y, split_metrics(out / best["run"], split))
        for r in done:
            paths, y_r, p_r = preds[r["model"]]
            if paths != paths_best or not np.array_equal(y_r, y):
                raise ValueError(f"{r['model']} was evaluated on other cases than {best['model']}; the comparison is not paired")
            r["auc_difference_vs_best"] = r["roc_auc"] - best["roc_auc"]
            if binary and r is not best:
                r["delong_p_vs_best"] = r["paired_p_vs_best"] = delong_paired(y, p_best[:, 1], p_r[:, 1], clusters)["p_value"]
            elif averaged is not None and r is not best:
                # Multi-class and multi-label runs were ranked by their averaged AUC with no test at all: a 0.01 lead of
                # noise chose the model.
                test = paired_bootstrap_difference(lambda rows, a=p_best, b=p_r: averaged(rows, a) - averaged(rows, b), len(y),
                                                   seed=0, clusters=clusters)
                if test is not None:
                    r["paired_p_vs_best"] = test["p_value"]
            if binary:
                point = (1 - r["specificity"], r["sensitivity"])
                curves.append((r["model"], y, p_r[:, 1], point, r["roc_auc"]))
        if not binary:
            what = "the mean of the per-finding AUCs" if task == "multilabel" else "the macro one-vs-rest AUC"
            notes.append(f"{task} task: AUC is {what}; each model is tested against the best by a paired bootstrap of that "
                         "average (2,000 resamples of the same images" + (", whole patients" if clusters is not None else "") + ")")
        ok = [r for r in done if r is best or (r["auc_difference_vs_best"] >= -AUC_MARGIN and r.get("paired_p_vs_best", 1.0) >= ALPHA)]
        recommended = min(ok, key=lambda r: (r["parameters_total"], r["inference_ms_batch1"]))
        if curves:
            plot_roc_overlay(curves, f"ROC on the {'validation' if split == 'val' else 'test'} split (n={len(y)}), "
                             "dots: validation-chosen thresholds", out / "plots" / "roc_overlay.png")
        if split == "val":
            notes.append("compared on the validation split, which also chose each model's epoch and threshold: the figures are "
                         "optimistic for all models alike. Evaluate only the chosen model on test, once: "
                         f"cxrkit evaluate {out / recommended['run']} --split test")
        else:
            notes.append("compared on the test split: choosing a model by these figures makes the chosen model's test figure "
                         "optimistic; report it as such, or confirm it on new data")
        if len(done) > 2:
            notes.append(f"{len(done) - 1} tests against the best model, not corrected for multiple comparisons")
        tie = _indistinguishable_note(done, best, len(y))
        if tie:
            notes.insert(0, tie)
    failed = [r for r in rows if r["status"] != "done"]
    summary = {"split": split, "data": state["data"], "rule": RULE, "rows": rows, "best": best and best["model"],
               "recommended": recommended and recommended["model"], "notes": notes, "failed": [r["model"] for r in failed]}
    if recommended:
        summary["recommendation"] = _recommendation_text(recommended, best)
    atomic_write_csv(out / "comparison.csv", [{c: _csv_value(r.get(c)) for c in COLUMNS} for r in rows], COLUMNS)
    atomic_write_text(out / "comparison.md", _markdown(summary))
    from cxrkit.report.comparison import write_comparison_report

    write_comparison_report(out, summary)
    return summary


def _averaged_auc(task: str, y: np.ndarray, best_metrics: dict) -> Callable[[np.ndarray, np.ndarray], float] | None:
    """The figure a multi-class (macro one-vs-rest) or multi-label (mean over the findings in the best model's mean) run is
    ranked by, as a function of (rows, probabilities)."""
    from cxrkit.metrics.classification import rank_auc

    if task == "multilabel":
        names = best_metrics.get("classes") or []
        kept = [names.index(c) for c in best_metrics.get("findings_in_mean_auc") or [] if c in names]
        if not kept:
            return None

        def mean_over_findings(rows: np.ndarray, probs: np.ndarray) -> float:
            return float(np.mean([rank_auc(y[rows, k], probs[rows, k]) for k in kept]))  # NaN when a resample lacks a class
        return mean_over_findings
    classes = np.unique(y)

    def macro(rows: np.ndarray, probs: np.ndarray) -> float:
        return float(np.mean([rank_auc(y[rows] == c, probs[rows, c]) for c in classes]))
    return macro


def _patient_clusters(run_dir: Path, paths: list[str]) -> np.ndarray | None:
    """One patient code per image of ``paths`` from the run's splits.csv, or None when no patient has two of them."""
    from cxrkit.evaluation.evaluate import recorded_patients

    return patient_clusters(recorded_patients(run_dir, paths), len(paths))


def _check_same_data(out: Path, done: list[dict]) -> None:
    """Refuse to pair runs trained on other data: a comparison resumed after images were replaced under the same names
    has the same validation paths and labels, so the paired test would compare predictions on different images."""
    prints = {r["model"]: read_meta(out / r["run"]).data.get("fingerprint") for r in done}
    known = {m: f for m, f in prints.items() if f}
    if len(set(known.values())) > 1:
        first, *_ = known
        other = next(m for m, f in known.items() if f != known[first])
        raise ValueError(f"{other} was trained on other data than {first} (dataset fingerprint {known[other]} vs {known[first]}: "
                         "images added, removed, relabelled or resized since); the comparison is not paired. Start it again "
                         "with --overwrite")


def _indistinguishable_note(done: list[dict], best: dict, n: int) -> str | None:
    """A note when no model differs significantly from the best: then the ranking is noise, whatever the table shows."""
    rivals = [r for r in done if r is not best and r.get("paired_p_vs_best") is not None]
    if not rivals or min(r["paired_p_vs_best"] for r in rivals) < ALPHA:
        return None
    widest = min(r["auc_difference_vs_best"] for r in rivals)
    return (f"the {n} images of this split cannot tell the models apart: no ROC-AUC differs significantly from "
            f"{best['model']}'s (smallest paired p = {min(r['paired_p_vs_best'] for r in rivals):.2g}, although the gap reaches "
            f"{-widest:.3f}), so the ranking may be noise; a larger split (--val-fraction) or more data is needed to choose")


def _csv_value(v: object) -> object:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def _recommendation_text(rec: dict, best: dict) -> str:
    if rec is best:
        return (f"Recommended: {rec['model']}, the best ROC-AUC ({rec['roc_auc']:.3f}); no model with fewer parameters "
                f"came within {AUC_MARGIN} of it without a significant loss.")
    return (f"Recommended: {rec['model']} ({rec['parameters_total']:,} parameters, {rec['inference_ms_batch1']:.1f} ms per image): "
            f"ROC-AUC {rec['roc_auc']:.3f} vs the best {best['roc_auc']:.3f} ({best['model']}, {best['parameters_total']:,} parameters), "
            f"a difference of {rec['auc_difference_vs_best']:+.3f} ({'DeLong' if 'delong_p_vs_best' in rec else 'paired bootstrap'} "
            f"p = {rec.get('paired_p_vs_best', float('nan')):.3g}).")


def _fmt(v: object, spec: str = ".3f") -> str:
    return "—" if v is None or v == "" else format(v, spec)


def _markdown(s: dict) -> str:
    words = "validation" if s["split"] == "val" else "test"
    lines = [f"# Model comparison on {s['data']} ({words} split)", ""]
    head = ["model", "ROC-AUC (95% CI)", "Δ vs best", "paired p", "sens", "spec", "PPV", "NPV", "F1", "params", "MB", "epochs",
            "train min", "s/epoch", "ms/img (b=1)", "ms/img (b=32)", "status"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in s["rows"]:
        if r["status"] != "done":
            lines.append(f"| {r['model']} |" + " |" * (len(head) - 2) + f" {r['status']}: {r.get('error', '')} |")
            continue
        # None: a multi-label split with no finding seen on 5 images with it and 5 without (no mean AUC)
        auc = f"{_fmt(r['roc_auc'])} ({_fmt(r['roc_auc_ci_low'])}–{_fmt(r['roc_auc_ci_high'])})"
        cells = [r["model"], auc, _fmt(r.get("auc_difference_vs_best"), "+.3f"), _fmt(r.get("paired_p_vs_best"), ".3g"),
                 *(_fmt(r.get(k)) for k in ("sensitivity", "specificity", "ppv", "npv", "f1")),
                 f"{r['parameters_total']:,}", _fmt(r["model_file_mb"], ".2f"), str(r["epochs_run"]), _fmt(r["train_minutes"], ".1f"),
                 _fmt(r["seconds_per_epoch"], ".1f"), _fmt(r["inference_ms_batch1"], ".2f"), _fmt(r["inference_ms_per_image_batch32"], ".2f"), "done"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Rule: {s['rule']}.", ""]
    if s.get("recommendation"):
        lines += [s["recommendation"], ""]
    lines += [f"- {n}" for n in s["notes"]]
    return "\n".join(lines) + "\n"
