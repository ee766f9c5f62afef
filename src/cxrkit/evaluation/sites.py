"""Per-site figures of a run trained on several sources: the pooled figure can hide a site where the model fails."""

from __future__ import annotations

import numpy as np

from cxrkit.data.dataset import LabelledImages
from cxrkit.run import Run


def per_site_metrics(run: Run, ds: LabelledImages, idx: np.ndarray, probs: np.ndarray, seed: int = 0) -> dict | None:
    """``{site: {"n", "n_positive", "metrics"}}`` of the images at ``idx`` (None when the data have no sites)."""
    sites = ds.sites
    if sites is None or run.task == "multilabel":
        return None
    out, pats = {}, ds.patients_of(idx)
    for site in np.unique(sites[idx]):
        sel = sites[idx] == site
        m = run.task_object.metrics(ds.labels[idx][sel], probs[sel], run.classes, run.threshold, run.thresholds, seed=seed,
                                    patients=None if pats is None else [pats[i] for i in np.flatnonzero(sel)])
        out[str(site)] = {"n": int(sel.sum()), "n_positive": m.get("n_positive"), "metrics": m["metrics"]}
    return out


def site_table(per_site: dict) -> list[str]:
    """Plain-text lines: one per site with n, ROC-AUC (95% CI) and, for binary runs, sensitivity and specificity."""
    lines = []
    for site, e in per_site.items():
        m = e["metrics"]
        auc = m.get("roc_auc") or m.get("macro_roc_auc") or {}
        text = (f"ROC-AUC {auc['value']:.3f} ({auc['ci'][0]:.3f}-{auc['ci'][1]:.3f})" if auc.get("value") is not None
                else "ROC-AUC n/a (one class)")
        if "sensitivity" in m:
            se, sp = m["sensitivity"]["value"], m["specificity"]["value"]
            text += (f", sensitivity {'n/a' if se is None else f'{100 * se:.1f}%'}, specificity {'n/a' if sp is None else f'{100 * sp:.1f}%'}")
        lines.append(f"  site {site} ({e['n']} images): {text}")
    return lines
