"""Each class compared across splits: are test/healthy images like train/healthy images?

The class-against-class audit cannot see a test split that differs from the training split (a second
hospital, a later scanner): the figures measured on it then say little about the training data, in
either direction. The same statistics and thresholds as the shift check (:mod:`cxrkit.data.shift`) are
used: two-sample Kolmogorov-Smirnov per statistic, flagged at D >= 0.3 with p < 0.001 when the medians differ by at least
:data:`MIN_DIFFERENCE`, and the Jensen-Shannon distance of the intensity histograms, flagged at >= 0.15.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import jensenshannon

from cxrkit.data.shift import JS_MAX, KS_D, KS_P, MIN_IMAGES, STATS, WORDS, ks_test

# The smallest difference of medians (0-1 scale, about 5 grey levels) called a shift. KS D alone is no effect size: on
# histogram-equalised images, whose statistics are nearly constant, "contrast 0.29 vs 0.29, KS D 0.82" was a finding.
MIN_DIFFERENCE = 0.02

# What a larger value of each statistic means, for the sentence.
MORE = {"mean": "brighter", "std": "higher in contrast", "p5": "lighter in the darks", "p95": "lighter in the brights",
        "border": "brighter at the border"}
LESS = {"mean": "darker", "std": "lower in contrast", "p5": "darker in the darks", "p95": "darker in the brights",
        "border": "darker at the border"}


def compare_splits(stats: dict[str, np.ndarray], labels: np.ndarray, splits: np.ndarray, class_names: list[str]) -> list[dict]:
    """Findings for each class of val and test against the same class of train.

    ``stats`` holds per-image values (any of :data:`cxrkit.data.shift.STATS`, 0-1 scale) and optionally
    ``counts``, per-image 32-bin histograms; ``labels`` are class indices and ``splits`` split names.
    """
    labels, splits = np.asarray(labels), np.asarray(splits).astype(str)
    keys = [k for k in STATS if k in stats]
    out = []
    for c, name in enumerate(class_names):
        ref = (labels == c) & (splits == "train")
        if ref.sum() < MIN_IMAGES:
            continue
        for split in ("val", "test"):
            sel = (labels == c) & (splits == split)
            if sel.sum() < MIN_IMAGES:
                continue
            found = []
            for k in keys:
                a, b = np.asarray(stats[k])[ref], np.asarray(stats[k])[sel]
                a, b = a[np.isfinite(a)], b[np.isfinite(b)]  # undecodable files
                if min(len(a), len(b)) < MIN_IMAGES:
                    continue
                t = ks_test(a, b)
                if t.statistic >= KS_D and t.pvalue < KS_P and abs(float(np.median(a)) - float(np.median(b))) >= MIN_DIFFERENCE:
                    found.append({"statistic": k, "ks_d": round(float(t.statistic), 3), "p_value": float(t.pvalue),
                                  "train_median": round(float(np.median(a)), 3), "split_median": round(float(np.median(b)), 3)})
            if "counts" in stats:
                h = [np.asarray(stats["counts"])[m].sum(axis=0) for m in (ref, sel)]
                js = float(jensenshannon(h[0] / max(h[0].sum(), 1), h[1] / max(h[1].sum(), 1), base=2))
                if js >= JS_MAX:
                    found.append({"statistic": "histogram", "js_distance": round(js, 3)})
            if found:
                out.append({"class": name, "split": split, "n_train": int(ref.sum()), "n_split": int(sel.sum()), "findings": found,
                            "message": _sentence(name, split, found)})
    return out


def _sentence(name: str, split: str, found: list[dict]) -> str:
    ks = sorted((f for f in found if "ks_d" in f), key=lambda f: -f["ks_d"])
    if ks:
        f = ks[0]
        how = MORE[f["statistic"]] if f["split_median"] > f["train_median"] else LESS[f["statistic"]]
        what = (f"{how} than train/{name} ({WORDS[f['statistic']]} {f['split_median']:.2f} vs {f['train_median']:.2f}, "
                f"KS D {f['ks_d']:.2f})")
        if len(found) > 1:
            what += f", and {len(found) - 1} more difference(s)"
    else:
        what = f"differ from train/{name} in their intensity histogram (Jensen-Shannon distance {found[0]['js_distance']:.2f})"
    return f"{split}/{name} images are {what}: {split} figures will not reflect the training data"


def record_stats(records: list[dict]) -> dict[str, np.ndarray]:
    """The audit's per-file features as shift statistics (mean, std, border); undecodable files give NaN."""
    def col(key: str) -> np.ndarray:
        return np.array([np.nan if r.get("error") else r[key] for r in records], dtype=np.float64)

    return {"mean": col("mean"), "std": col("std"), "border": col("border_mean")}
