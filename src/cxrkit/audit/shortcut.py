"""A shortcut probe: can the classes be told apart from what is NOT anatomy (file size and format, colour mode,
bit depth, borders, corners, text-like marks)? If a classifier on those alone separates them, a model trained on
the images can learn the same shortcut instead of the disease (DeGrave et al. 2021, Nat Mach Intell 3:610)."""

from __future__ import annotations

import numpy as np

STRONG_SHORTCUT_AUC = 0.75
CORNER_NAMES = ("top-left", "top-right", "bottom-left", "bottom-right")


def probe_features(records: list[dict]) -> tuple[np.ndarray, list[str]]:
    """Matrix (N, F) of non-anatomical features and their names, from decoded records (see ``features.image_record``)."""
    formats = sorted({r["format"] for r in records})
    modes = sorted({r["mode"] for r in records})
    # File size is left out on purpose: how well an image compresses depends on its content (opacities, texture),
    # so it would flag genuine disease signal as a shortcut.
    names = ["width", "height", "aspect ratio", "bit depth", "channels", "colour difference between channels",
             "border mean", "border std"]
    names += [f"{c} corner {k}" for k in ("mean", "std", "edge density", "bright share") for c in CORNER_NAMES]
    names += [f"format {f}" for f in formats] + [f"mode {m}" for m in modes]
    rows = []
    for r in records:
        row = [r["width"], r["height"], r["width"] / r["height"], r["bit_depth"], r["channels"],
               r["channel_difference"], r["border_mean"], r["border_std"]]
        row += [*r["corner_means"], *r["corner_stds"], *r["corner_edges"], *r["corner_bright"]]
        row += [float(r["format"] == f) for f in formats] + [float(r["mode"] == m) for m in modes]
        rows.append(row)
    return np.asarray(rows, dtype=np.float64), names


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    from cxrkit.metrics.classification import rank_auc

    return rank_auc(y, s)


def shortcut_probe(records: list[dict], labels: np.ndarray, class_names: list[str], seed: int = 0, folds: int = 5) -> dict:
    """Cross-validated ROC-AUC (macro one-vs-rest for more than two classes) of a random forest on
    :func:`probe_features`, and each feature's own AUC (the larger of AUC and 1 - AUC: direction does not matter).
    ``warning`` is True when the probe's AUC exceeds STRONG_SHORTCUT_AUC; ``giveaways`` then names the features."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x, names = probe_features(records)
    y = np.asarray(labels, dtype=np.int64)  # no decodable image at all is an empty float array, which bincount refused
    k = len(class_names)
    counts = np.bincount(y, minlength=k)
    n_folds = int(min(folds, counts[counts > 0].min())) if counts.any() else 0
    if n_folds < 2 or (counts > 0).sum() < 2:
        return {"auc": None, "warning": False, "reason": "too few images per class for cross-validation", "features": []}
    # A random forest on one thread: no scaling needed, and gradient boosting's OpenMP threads measured 60 s
    # instead of 2 s for 500 images on a shared 2-core machine.
    clf = RandomForestClassifier(n_estimators=100, min_samples_leaf=3, n_jobs=1, random_state=seed)
    p = cross_val_predict(clf, x, y, cv=StratifiedKFold(n_folds, shuffle=True, random_state=seed), method="predict_proba")
    present = [c for c in range(k) if counts[c]]
    if k == 2:
        auc = _auc(y == 1, p[:, 1])
    else:
        auc = float(np.mean([_auc(y == c, p[:, c]) for c in present]))
    per_feature = []
    for j, name in enumerate(names):
        col = x[:, j]
        if np.ptp(col) == 0:
            continue
        pairs = [(c, _auc(y == c, col)) for c in ([1] if k == 2 else present)]
        c, a = max(pairs, key=lambda t: abs(t[1] - 0.5))
        direction = "higher" if a >= 0.5 else "lower"
        per_feature.append({"feature": name, "auc": float(max(a, 1 - a)), "class": class_names[c], "direction": direction})
    per_feature.sort(key=lambda d: -d["auc"])
    warning = bool(auc > STRONG_SHORTCUT_AUC)
    giveaways = [f for f in per_feature if f["auc"] > 0.7][:6] if warning else []
    if warning and not giveaways:
        giveaways = per_feature[:3]
    return {"auc": float(auc), "folds": n_folds, "threshold": STRONG_SHORTCUT_AUC, "warning": warning, "features": per_feature[:15],
            "giveaways": giveaways, "n_features": len(names)}
