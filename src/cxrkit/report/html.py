"""Render ``report.html`` for a run folder: self-contained, images embedded as base64."""

from __future__ import annotations

import base64
import math
import re
from pathlib import Path

import yaml
from jinja2 import Environment, PackageLoader, select_autoescape

from cxrkit.data.augment import AugmentConfig
from cxrkit.models.registry import MODELS
from cxrkit.record import CALIBRATION_FILE, CONFIG_FILE, atomic_write_text, read_json, read_meta, read_metrics
from cxrkit.record.files import AUDIT_FILE, REPORT_FILE, RunRecordError, read_csv_rows, split_predictions
from cxrkit.report.narrative import (
    METRIC_WORDS,
    SCORE_KEYS,
    SPLIT_WORDS,
    cases_to_confirm_sentence,
    ci_text,
    evaluation_sentences,
    metric_words,
    pct,
    plural,
    reader_sentences,
    screening_sentences,
    split_words,
    threshold_spread_sentence,
)
from cxrkit.report.plots import MIN_BIN_COUNT

# Table rows start with a capital; the words themselves live in narrative.METRIC_WORDS (shared with the model card).
METRIC_LABELS = {k: v[0].upper() + v[1:] for k, v in METRIC_WORDS.items()}


def _img(path: Path) -> str | None:
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _read_csv(path: Path) -> list[dict]:
    return read_csv_rows(path) if path.is_file() else []


def _metric_rows(metrics: dict) -> list[dict]:
    rows = []
    for key, e in metrics.items():
        is_pct = key not in SCORE_KEYS  # shares of images read as percentages; AUCs stay 0-1 scores
        value = e["value"]
        rows.append({
            "name": METRIC_LABELS.get(key, metric_words(key)),
            "value": "n/a" if value is None else (pct(value) if is_pct else f"{value:.3f}"),
            "ci": ci_text(e, percent=is_pct).removeprefix("95% CI ") or "—",
            "counts": f"{e['numerator']}/{e['denominator']}" if "denominator" in e else "",
            "method": e.get("method", "") + (" — " + e["note"] if "note" in e else ""),
        })
    return rows


def _subgroups(run_dir: Path, subgroups: dict, fname: str) -> list[dict]:
    """One entry per subgroup column (per finding for multi-label runs), with its forest plot when one was drawn."""
    import re

    out = []
    for name, sub in subgroups.items():
        slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower() or "group"
        for finding, r in (sub.get("per_finding") or {"": sub}).items():
            out.append({"name": name, "finding": finding, "r": r,
                        "img": None if finding else _img(run_dir / "plots" / f"subgroups_{fname}_{slug}.png")})
    return out


def _data_path(config: dict, run_dir: Path) -> str:
    """The training data as the suggested commands should name it: config.yaml's ``data`` as typed, made absolute where the
    training ran (``runs/demo/data`` read from another folder named nothing)."""
    from cxrkit.config import training_cache_dir

    data = config.get("data")
    if not isinstance(data, str) or Path(data).is_absolute():
        return str(data)
    return training_cache_dir(data, config.get("out"), run_dir) or data


def _why_not_calibratable(run_dir: Path, meta: dict) -> str | None:
    """Why `cxrkit calibrate` would refuse this run's own validation split (the model never gets it wrong), or None."""
    from cxrkit.metrics.calibration import separated
    from cxrkit.tasks import get_task

    method = get_task(meta["task"]).calibration_method
    if not method or meta["task"] == "multilabel":  # a finding it cannot fit gets its intercept only: never refused
        return None
    _, y, probs = split_predictions(run_dir, "val", meta["classes"])
    return separated(y, probs, method) if len(y) and len(set(y.tolist())) > 1 else None


def build_context(run_dir: Path) -> dict:
    """Everything the template shows, read from the run folder's files."""
    meta = read_meta(run_dir).to_dict()
    config = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    metrics = read_metrics(run_dir)
    evaluations = []
    has_test = "test" in metrics
    keys = [k for k in ("test", "val", "train") if k in metrics] + sorted(k for k in metrics if k.startswith("external:"))
    for split in keys:
        m = metrics[split]
        words = split_words(split)
        fname = split.replace(":", "_")
        sentences = evaluation_sentences(m, words)
        per_class = []
        if m["task"] == "multiclass":
            for name, e in m["per_class"].items():
                cells = {k: (pct(e[k]["value"]), ci_text(e[k]).removeprefix("95% CI ")) for k in ("sensitivity", "specificity", "ppv", "npv")}
                auc = e["roc_auc"]
                cells["auc"] = ("n/a" if auc["value"] is None else f"{auc['value']:.3f}", ci_text(auc, False).removeprefix("95% CI "))
                per_class.append({"name": name, "support": e["support"], "cells": cells})
        if m["task"] == "multilabel":
            for name, e in m["per_label"].items():
                cells = {k: (pct(e[k]["value"]), ci_text(e[k]).removeprefix("95% CI ")) for k in ("sensitivity", "specificity", "ppv", "npv")}
                auc = e["roc_auc"]
                cells["auc"] = ("n/a" if auc["value"] is None else f"{auc['value']:.3f}", ci_text(auc, False).removeprefix("95% CI "))
                c = e["confusion"]
                per_class.append({"name": name, "support": e["support"], "cells": cells, "threshold": f"{e['threshold']:.3f}",
                                  "detected": f"{c['tp']}/{c['tp'] + c['fn']}", "cleared": f"{c['tn']}/{c['tn'] + c['fp']}"})
        evaluations.append({
            "split": split, "anchor": "results-" + re.sub(r"[^a-z0-9]+", "-", split.lower()).strip("-"),
            # Once a test evaluation exists, the splits that chose the model are background: folded away by default.
            "collapsed": has_test and split in ("val", "train"), "words": words, "m": m, "sentences": sentences, "rows": _metric_rows(m["metrics"]),
            "per_class": per_class, "notes": m.get("notes", []), "skipped": m.get("skipped", []), "per_site": m.get("per_site"),
            "roc": _img(run_dir / "plots" / f"roc_{fname}.png"), "pr": _img(run_dir / "plots" / f"pr_{fname}.png"),
            "confusion": _img(run_dir / "plots" / f"confusion_{fname}.png"), "shift": m.get("shift"),
            "reliability": _img(run_dir / "plots" / f"reliability_{fname}.png"), "decision": _img(run_dir / "plots" / f"decision_{fname}.png"),
            "attention_img": _img(run_dir / "plots" / f"attention_{fname}.png"), "gallery": _img(run_dir / "plots" / f"gallery_{fname}.png"),
            "screening": screening_sentences(m["screening"], m["classes"][1]) if m.get("screening") else [],
            "threshold_spread": threshold_spread_sentence(m.get("threshold_spread"), m.get("threshold"), m["classes"]),
            "cases_to_confirm": cases_to_confirm_sentence(m.get("who_triage"), m["classes"]),
            "subgroups": _subgroups(run_dir, m.get("subgroups") or {}, fname),
            "readers": [{"name": name, "r": r, "sentences": reader_sentences(r)} for name, r in ((m.get("readers") or {}).get("readers") or {}).items()],
            "risk_coverage": _img(run_dir / "plots" / f"risk_coverage_{fname}.png"),
        })
    internal = next((e for e in evaluations if e["split"] in ("test", "val")), None)
    external = [e for e in evaluations if e["split"].startswith("external:")]
    side_by_side = [internal, *external] if internal and external else []
    counts = meta["data"]["counts"]
    train_counts = meta["training"]["train_counts"]
    ratio = max(train_counts.values()) / max(1, min(train_counts.values()))
    history = _read_csv(run_dir / "history.csv")
    audit = read_json(run_dir / AUDIT_FILE) if (run_dir / AUDIT_FILE).is_file() else None
    calibration = read_json(run_dir / CALIBRATION_FILE) if (run_dir / CALIBRATION_FILE).is_file() else None
    if audit is not None:
        from cxrkit.audit.report import audit_figures

        try:  # the audit is the training's record of its data; a damaged one must not stop the report as a cxrkit bug
            if not isinstance(audit, dict):
                raise TypeError(f"a JSON object was expected, got {type(audit).__name__}")
            audit_figs = audit_figures(audit)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RunRecordError(f"{run_dir / AUDIT_FILE} is damaged ({type(exc).__name__}: {exc}); restore it, or delete it to "
                                 "write the report without the audit section") from None
    toc = [{"id": "summary", "title": "Summary"}] if evaluations else []
    if side_by_side:
        toc.append({"id": "internal-vs-external", "title": "Internal vs external"})
    toc += [{"id": e["anchor"], "title": f"Results on the {e['words']}" + ("" if e["split"].startswith("external:") else " split")
             + (" (folded)" if e["collapsed"] else "")} for e in evaluations]
    toc += [{"id": "data", "title": "Data"}] + ([{"id": "data-audit", "title": "Data audit"}] if audit is not None else [])
    toc += [{"id": i, "title": t} for i, t in (("preprocessing", "Preprocessing, and why"), ("model-and-training", "Model and training"),
                                               ("limitations", "Limitations"), ("reproducibility", "Reproducibility"))]
    return {
        "toc": toc, "plural": plural, "metric_words": metric_words, "min_bin_count": MIN_BIN_COUNT,
        "audit": audit, "audit_figs": audit_figs if audit is not None else None, "calibration": calibration,
        "meta": meta, "config": config, "config_yaml": yaml.safe_dump(config, sort_keys=False),
        "evaluations": evaluations, "side_by_side": side_by_side, "has_test": "test" in metrics, "counts": counts,
        "splits_present": [s for s in ("train", "val", "test") if s in counts],
        "imbalance_ratio": ratio, "history": history, "curves": _img(run_dir / "plots" / "history.png"),
        "skipped": _read_csv(run_dir / "skipped.csv"), "model_description": MODELS[meta["model"]].description if meta["model"] in MODELS else "",
        "augment": AugmentConfig(**config["augment"]), "split_words": SPLIT_WORDS, "pct": pct, "e": math.e,
        "label_counts": _img(run_dir / "plots" / "label_counts.png"), "cooccurrence": _img(run_dir / "plots" / "cooccurrence.png"),
        "images": meta["data"].get("images", {}),
        # Commands the report suggests name the run by its full path: config.out is as typed, relative to where training ran.
        "run_path": str(Path(run_dir).resolve()), "data_path": _data_path(config, run_dir),
        "not_calibratable": None if calibration is not None else _why_not_calibratable(run_dir, meta),
    }


def render_report(run_dir: str | Path) -> str:
    """The report's HTML for a run folder."""
    env = Environment(loader=PackageLoader("cxrkit", "report/templates"), autoescape=select_autoescape(["html", "j2"]))
    # Jinja's capitalize lowercases the rest: "view position PA ... (95% CI" read "view position pa ... (95% ci".
    env.filters["first_upper"] = lambda text: text[:1].upper() + text[1:]
    return env.get_template("report.html.j2").render(**build_context(Path(run_dir)))


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.html`` into the run folder and return its path."""
    path = Path(run_dir) / REPORT_FILE
    atomic_write_text(path, render_report(run_dir))
    return path
