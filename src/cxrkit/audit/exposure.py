"""An exposure probe: can the classes be told apart from each image's brightness and contrast alone?

Two numbers per image (mean and standard deviation of its pixels) carry no anatomy. When a classifier on
them separates the classes, the images of one class were exposed differently (a scanner, a referral pathway,
a second hospital that sent most of the cases), and a model trained on the pixels can learn that instead of
the disease. The probe is a cross-validated logistic regression on the two numbers, over all images and
within each site that has enough of them (a shortcut at one hospital is diluted in the pooled figure); for
more than two classes, each class against the rest. The flag uses the same bar as the non-anatomical
shortcut probe (:data:`cxrkit.audit.shortcut.STRONG_SHORTCUT_AUC`).

Measured on the training and validation images of the shared datasets (benchmarks/exposure_probe.py,
BENCHMARKS.md round 9): the TB sites, alone, in every pair and all three, 0.58-0.66; Kermany pneumonia 0.70;
PneumoniaMNIST 0.80 (its pneumonia images are brighter overall: the disease, not the scanner, which the probe
cannot tell apart); the COVID/normal/viral set, whose COVID images come from other sources than its
paediatric normal and viral ones, 0.86; the synthetic planted shortcut of the tests 1.00 within its bright site.
"""

from __future__ import annotations

import numpy as np

from cxrkit.audit.shortcut import STRONG_SHORTCUT_AUC

MIN_PER_CLASS = 20  # fewer images of a class in a site: its within-site AUC is too noisy to flag on


def _cv_auc(x: np.ndarray, y: np.ndarray, seed: int) -> float | None:
    """Cross-validated ROC-AUC of a logistic regression on ``x`` for the binary ``y``; None when a class is too small."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from cxrkit.metrics.classification import rank_auc

    counts = np.bincount(y, minlength=2)
    if counts.min() < MIN_PER_CLASS:
        return None
    clf = make_pipeline(StandardScaler(), LogisticRegression())
    p = cross_val_predict(clf, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=seed), method="predict_proba")[:, 1]
    return float(rank_auc(y == 1, p))


def exposure_probe(mean: np.ndarray, std: np.ndarray, labels: np.ndarray, class_names: list[str],
                   sites: np.ndarray | None = None, seed: int = 0) -> dict:
    """How well brightness (``mean``) and contrast (``std``) alone tell each class from the others.

    Returns ``auc`` (the largest cross-validated AUC found, or None when no class has enough images), where it
    was found (``class``, ``site``: None for all images), ``warning`` (``auc`` >= STRONG_SHORTCUT_AUC), every
    figure in ``checks`` and a ``message`` naming the finding. Images with a non-finite value are left out.
    """
    mean, std, labels = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64), np.asarray(labels)
    if not len(mean) == len(std) == len(labels) or (sites is not None and len(sites) != len(labels)):
        raise ValueError("exposure_probe needs one mean, std, label (and site) per image")
    ok = np.isfinite(mean) & np.isfinite(std)
    x, labels = np.stack([mean, std], axis=1)[ok], labels[ok]
    sites = None if sites is None else np.asarray(sites).astype(str)[ok]
    scopes: list[tuple[str | None, np.ndarray]] = [(None, np.ones(len(labels), dtype=bool))]
    if sites is not None and len(set(sites)) > 1:
        scopes += [(s, sites == s) for s in sorted(set(sites))]
    targets = [1] if len(class_names) == 2 else list(range(len(class_names)))
    checks = []
    for site, sel in scopes:
        for c in targets:
            auc = _cv_auc(x[sel], (labels[sel] == c).astype(np.int64), seed)
            if auc is not None:
                checks.append({"class": class_names[c], "site": site, "n": int(sel.sum()), "auc": round(auc, 3)})
    if not checks:
        return {"auc": None, "warning": False, "class": None, "site": None, "checks": [],
                "message": f"not checked: fewer than {MIN_PER_CLASS} images of a class"}
    top = max(checks, key=lambda r: r["auc"])
    warning = top["auc"] >= STRONG_SHORTCUT_AUC
    what = f"{class_names[1]} from {class_names[0]}" if len(class_names) == 2 else f"{top['class']} from the other classes"
    where = f" at site {top['site']}" if top["site"] is not None else ""
    message = (f"brightness and contrast alone tell {what}{where} (cross-validated AUC {top['auc']:.3f}): the classes differ in "
               "exposure, from the disease itself or from how they were imaged, and a model can learn exposure instead of anatomy" if warning else
               f"brightness and contrast alone do not tell the classes apart (largest cross-validated AUC {top['auc']:.3f}, "
               f"below the {STRONG_SHORTCUT_AUC} that flags a shortcut)")
    return {"auc": top["auc"], "warning": bool(warning), "class": top["class"], "site": top["site"], "checks": checks, "message": message}


def choose_intensity(images: np.ndarray, labels: np.ndarray, class_names: list[str], index: np.ndarray,
                     sites: np.ndarray | None = None, ok: np.ndarray | None = None, seed: int = 0) -> tuple[str, dict]:
    """What ``--intensity auto`` trains with: ``histeq`` when the exposure probe on ``images[index]`` (the training and
    validation images, decoded without normalisation; never the test split) flags an exposure shortcut, else ``none``.

    Returns the mode and a record for the run (``asked``, ``intensity``, the probe's figures and a ``message``).
    Histogram equalisation is rank-based, so exposure and contrast changes cannot reach the model; it is not the
    default otherwise because it cost 0.06-0.09 external AUC with Shenzhen held out (BENCHMARKS.md, round 8).
    """
    index = np.asarray(index)
    mean, std = np.empty(len(index)), np.empty(len(index))
    for i in range(0, len(index), 512):  # in chunks: the images may be a memory map larger than RAM
        x = np.asarray(images[index[i : i + 512]], dtype=np.float32).reshape(len(index[i : i + 512]), -1) / 255.0
        mean[i : i + len(x)], std[i : i + len(x)] = x.mean(1), x.std(1)
    if ok is not None:
        bad = ~np.asarray(ok)[index]
        mean, std = np.where(bad, np.nan, mean), np.where(bad, np.nan, std)
    probe = exposure_probe(mean, std, np.asarray(labels)[index], class_names, None if sites is None else np.asarray(sites)[index], seed)
    mode = "histeq" if probe["warning"] else "none"
    if probe["warning"]:
        message = (f"{probe['message']}, so each image is histogram-equalised (--intensity histeq; "
                   "--intensity none keeps the images as they are)")
    elif probe["auc"] is None:
        message = f"exposure probe {probe['message']}; images kept as they are (--intensity none)"
    else:
        message = f"{probe['message']}; images kept as they are (--intensity none)"
    record = {"asked": "auto", "intensity": mode, "auc": probe["auc"], "class": probe["class"], "site": probe["site"],
              "checks": probe["checks"], "message": message}
    return mode, record
