"""Dataset-shift check: do incoming images look like the training images?

At training time a reference is saved from the training split (overall and per class): per-image
mean, standard deviation, 5th/95th intensity percentiles and border mean, and the pooled intensity
histogram, all on the decoded images the model sees. At evaluation or prediction time the same
statistics of the incoming images are compared with it: a two-sample Kolmogorov-Smirnov test per
statistic (flagged when the effect is large, KS distance D >= 0.3, and unlikely by chance, p < 0.001),
and the Jensen-Shannon distance between intensity histograms (flagged at >= 0.15). Large samples make
any tiny difference "significant", so the effect size decides and the p-value only guards small n.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

from cxrkit.data.spec import is_finite_number

STATS = ("mean", "std", "p5", "p95", "border")
WORDS = {"mean": "mean brightness", "std": "contrast (std)", "p5": "dark level (5th percentile)",
         "p95": "bright level (95th percentile)", "border": "border/corner brightness"}
KS_D = 0.3
KS_P = 1e-3
JS_MAX = 0.15
MIN_IMAGES = 10
_KEEP = 400  # per-image values kept in the reference for the KS tests


def image_stats(images: np.ndarray, chunk: int = 256) -> dict[str, np.ndarray]:
    """Per-image statistics (0-1 scale) of uint8 images (N, S, S): the values in ``STATS``, each image's
    32-bin histogram counts (``counts``) and the pooled, normalised ``histogram``."""
    n = len(images)
    out = {k: np.empty(n) for k in STATS}
    out["counts"] = np.zeros((n, 32))
    for i in range(0, n, chunk):
        x = np.asarray(images[i : i + chunk], dtype=np.float32) / 255.0
        flat = x.reshape(len(x), -1)
        out["mean"][i : i + len(x)] = flat.mean(1)
        out["std"][i : i + len(x)] = flat.std(1)
        p = np.percentile(flat, [5, 95], axis=1)
        out["p5"][i : i + len(x)], out["p95"][i : i + len(x)] = p[0], p[1]
        b = max(1, x.shape[1] // 16)  # outer 1/16 frame: where collimation, markers and text sit
        frame = np.concatenate([x[:, :b].reshape(len(x), -1), x[:, -b:].reshape(len(x), -1),
                                x[:, b:-b, :b].reshape(len(x), -1), x[:, b:-b, -b:].reshape(len(x), -1)], axis=1)
        out["border"][i : i + len(x)] = frame.mean(1)
        bins = np.minimum((flat * 32).astype(np.int64), 31) + 32 * np.arange(len(x))[:, None]
        out["counts"][i : i + len(x)] = np.bincount(bins.ravel(), minlength=32 * len(x)).reshape(len(x), 32)
    return _with_histogram(out)


def _with_histogram(stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    total = stats["counts"].sum(axis=0)
    stats["histogram"] = total / max(total.sum(), 1.0)
    return stats


def _select(stats: dict[str, np.ndarray], sel: np.ndarray) -> dict[str, np.ndarray]:
    """The statistics of a subset of the images (one class), without computing them again."""
    return _with_histogram({k: stats[k][sel] for k in (*STATS, "counts")})


# Half a unit of the 5 decimals the reference's per-image values are stored with, plus float32 noise.
ROUNDING = 1e-5


def _summary(stats: dict[str, np.ndarray], seed: int) -> dict:
    rng = np.random.default_rng(seed)
    n = len(stats["mean"])
    keep = np.sort(rng.choice(n, size=min(n, _KEEP), replace=False))
    return {"n": n, "histogram": stats["histogram"].round(6).tolist(),
            **{k: np.round(stats[k][keep], 5).tolist() for k in STATS}}


def build_reference(images: np.ndarray, labels: np.ndarray, class_names: list[str], seed: int = 0) -> dict:
    """The JSON-able reference of the training images: overall and per class."""
    stats = image_stats(images)
    ref = {"overall": _summary(stats, seed), "per_class": {}}
    for c, name in enumerate(class_names):
        sel = np.flatnonzero(labels == c)
        if len(sel) >= MIN_IMAGES:
            ref["per_class"][name] = _summary(_select(stats, sel), seed)
    return ref


def reference_problem(ref: object) -> str | None:
    """What is wrong with a reference read back from JSON (None when it is usable): a damaged one was a KeyError or
    TypeError at the first prediction."""

    def numbers(v: object, length: int | None = None) -> bool:
        return isinstance(v, list) and len(v) > 0 and (length is None or len(v) == length) and all(
            is_finite_number(x) for x in v)

    if not isinstance(ref, dict) or not isinstance(ref.get("overall"), dict) or not isinstance(ref.get("per_class", {}), dict):
        return "must hold an object with overall and per_class"
    for scope, summary in [("overall", ref["overall"]), *((f"per_class.{k}", v) for k, v in ref.get("per_class", {}).items())]:
        if not isinstance(summary, dict):
            return f"{scope} must be an object"
        bad = [k for k in STATS if not numbers(summary.get(k))] + ([] if numbers(summary.get("histogram"), 32) else ["histogram"])
        if bad:
            return f"{scope}.{bad[0]} must be a non-empty list of finite numbers{' (32 of them)' if bad[0] == 'histogram' else ''}"
    return None


def ks_test(a: np.ndarray, b: np.ndarray):
    """scipy's two-sample KS test, quiet: where the exact p-value fails it warns (into the command's output, with a file and
    line number) and uses the asymptotic one, which is what is wanted at these sizes anyway."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ks_2samp: Exact calculation unsuccessful", category=RuntimeWarning)
        return ks_2samp(a, b)


def _findings(ref: dict, stats: dict[str, np.ndarray], scope: str) -> list[dict]:
    out = []
    for k in STATS:
        # Rounded as the reference was stored: 243/255 = 0.952941... sorted above every stored 0.95294, so a histogram-
        # equalised run's own images (whose 95th percentiles tie) differed from its training data "with KS D 0.92".
        test = ks_test(np.asarray(ref[k]), np.round(stats[k], 5))
        if test.statistic >= KS_D and test.pvalue < KS_P:
            out.append({"scope": scope, "statistic": k, "ks_d": round(float(test.statistic), 3), "p_value": float(test.pvalue),
                        "training_median": round(float(np.median(ref[k])), 3), "incoming_median": round(float(np.median(stats[k])), 3)})
    js = float(jensenshannon(np.asarray(ref["histogram"]), stats["histogram"], base=2))
    if js >= JS_MAX:
        out.append({"scope": scope, "statistic": "histogram", "js_distance": round(js, 3)})
    return out


def merge_stats(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Combine :func:`image_stats` of several batches."""
    return _with_histogram({k: np.concatenate([p[k] for p in parts]) for k in (*STATS, "counts")})


def check_stats(ref: dict, stats: dict[str, np.ndarray]) -> dict:
    """Shift check of already computed statistics against the overall reference (no per-class part)."""
    n = len(stats["mean"])
    if n < MIN_IMAGES:
        return {"checked": n, "warning": False, "findings": [], "message": f"too few images ({n}) for a shift check"}
    findings = _findings(ref["overall"], stats, "all images")
    return {"checked": n, "warning": bool(findings), "findings": findings, "message": describe(findings)}


def check_shift(ref: dict, images: np.ndarray, labels: np.ndarray | None = None, class_names: list[str] | None = None) -> dict:
    """Compare incoming uint8 images (and, with labels, each class) with a training reference.

    Returns ``{"checked": n, "warning": bool, "findings": [...], "message": str}``, and for a run trained on several sites
    the training site they resemble most (:func:`nearest_site`); fewer than ``MIN_IMAGES`` images are too few to test and give
    ``checked`` with no warning.
    """
    stats = image_stats(images)
    result = check_stats(ref, stats)
    if result["checked"] >= MIN_IMAGES:
        result.update(nearest_site(ref, stats))
    if result["checked"] < MIN_IMAGES or labels is None or class_names is None:
        return {**result, "message": result["message"] + result.get("site_sentence", "")}
    findings = result["findings"]
    for c, name in enumerate(class_names):
        sel = np.flatnonzero(labels == c)
        if len(sel) >= MIN_IMAGES and name in ref.get("per_class", {}):
            findings += _findings(ref["per_class"][name], _select(stats, sel), f"class {name}")
    return {**result, "warning": bool(findings), "findings": findings, "message": describe(findings) + result.get("site_sentence", "")}


def nearest_site(ref: dict, stats: dict[str, np.ndarray]) -> dict:
    """For a run trained on several sites: which site's training images the incoming ones resemble most (the mean KS D over
    the image statistics against each site's), and a sentence for the shift message. Empty for a one-site run."""
    sites = ref.get("per_site") or {}
    if len(sites) < 2:
        return {}
    distance = {site: round(float(np.mean([ks_test(np.asarray(r[k]), np.round(stats[k], 5)).statistic for k in STATS])), 3)
                for site, r in sites.items()}
    order = sorted(distance, key=distance.get)
    others = ", ".join(f"{s} {distance[s]:.2f}" for s in order[1:])
    return {"site_distance": distance, "nearest_site": order[0],
            "site_sentence": f"; of the training sites they look most like {order[0]} (mean KS D {distance[order[0]]:.2f}; {others})"}


def describe(findings: list[dict], limit: int = 3) -> str:
    """One short sentence: the ``limit`` largest differences, with their measured sizes, and how many more there are."""
    if not findings:
        return "the images look like the training images (intensity, contrast, borders and histogram)"

    def strength(f: dict) -> float:
        return f.get("ks_d", f.get("js_distance", 0.0))

    parts = []
    for f in sorted(findings, key=strength, reverse=True)[:limit]:
        if f["statistic"] == "histogram":
            parts.append(f"{f['scope']}: intensity histogram (Jensen-Shannon distance {f['js_distance']:.2f})")
        else:
            parts.append(f"{f['scope']}: {WORDS[f['statistic']]} {f['incoming_median']:.3f} (training {f['training_median']:.3f}, KS D {f['ks_d']:.2f})")
    more = f"; {len(findings) - limit} more differences recorded" if len(findings) > limit else ""
    return "images differ from the training data: " + "; ".join(parts) + more


def image_outliers(ref: dict, stats: dict[str, np.ndarray]) -> list[list[dict]]:
    """Per image: the statistics that fall outside the range of the training images' kept values.

    A single image cannot be KS-tested, so it is flagged when its brightness, contrast, dark or bright
    level or border lies outside [min, max] of the reference sample (400 training images: a training
    image itself falls outside one of the five ranges about 2.5% of the time).
    """
    overall = ref["overall"]
    out = []
    for i in range(len(stats["mean"])):
        found = []
        for k in STATS:
            lo, hi = float(np.min(overall[k])), float(np.max(overall[k]))
            v = float(stats[k][i])
            # The reference keeps 5 decimals: the training image that set a bound lay a rounding step outside it and was flagged.
            if v < lo - ROUNDING or v > hi + ROUNDING:
                d = next((d for d in range(3, 7) if f"{v:.{d}f}" not in (f"{lo:.{d}f}", f"{hi:.{d}f}")), 6)  # never "0.639 outside 0.288-0.639"
                found.append({"statistic": k, "value": round(v, d), "training_range": [round(lo, d), round(hi, d)],
                              "message": f"{WORDS[k]} {v:.{d}f} is outside the training range {lo:.{d}f}-{hi:.{d}f}"})
        out.append(found)
    return out
