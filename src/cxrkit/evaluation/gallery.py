"""Heat maps for a split during evaluation: the "where does it look" summary and a gallery of right and wrong calls."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrkit.explain.attention import attention_summary, max_images, pick_gallery
from cxrkit.explain.cam import heatmaps, resolve_method
from cxrkit.report.plots import plot_attention, plot_gallery
from cxrkit.run import Run


def explain_split(
    run: Run, images: np.ndarray, y: np.ndarray, probs: np.ndarray, plots: Path, fname: str, method: str = "gradcam", seed: int = 0,
) -> dict:
    """Heat maps for (a sample of) a split, each image explained for the class the run decided: the attention
    summary, a region figure and a gallery figure in ``plots``."""
    method = resolve_method(run, method)
    cap = max_images(method, run.preprocessing.image_size)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(images), cap, replace=False)) if len(images) > cap else np.arange(len(images))
    # Each image is explained for the class the run decided on, so "normal" calls show what cleared them.
    decided = run.decide(probs[sample])
    heat = np.zeros((len(sample), *images.shape[1:]), dtype=np.float32)
    for c in np.unique(decided):
        heat[decided == c] = heatmaps(run, np.asarray(images[sample[decided == c]]), class_index=int(c), method=method)
    summary = attention_summary(heat, np.asarray(images[sample]) if run.preprocessing.aspect == "pad" else None)  # squash: no bars
    summary["no_heat"] = int((heat.reshape(len(heat), -1).max(1) == 0).sum())
    summary.update(method=method, sampled=len(sample) < len(images), n_split=int(len(images)))
    plot_attention(summary, heat.mean(axis=0), plots / f"attention_{fname}.png")
    if run.task == "binary":
        score = probs[:, 1]
        pred = run.decide(probs)
        picks = pick_gallery(y, pred, score)
        items = [(cell, int(i)) for cell, idx in picks.items() for i in idx]
        title = lambda cell, i: f"{cell}\nP({run.classes[1]}) = {score[i]:.2f}"
    else:
        pred = probs.argmax(1)
        items = []
        for c, name in enumerate(run.classes):
            right = np.flatnonzero((y == c) & (pred == c))
            wrong = np.flatnonzero((y == c) & (pred != c))
            items += [(f"{name}: right", int(i)) for i in right[np.argsort(-probs[right, c])][:1]]
            items += [(f"{name}: called {run.classes[pred[i]]}", int(i)) for i in wrong[np.argsort(-probs[wrong].max(1))][:1]]
        title = lambda cell, i: f"{cell}\nP = {probs[i, pred[i]]:.2f}"
    if items:
        idx = np.array([i for _, i in items])
        maps = heatmaps(run, np.asarray(images[idx]), class_index=1 if run.task == "binary" else None, method=method)
        plot_gallery(np.asarray(images[idx]), maps, [title(cell, i) for cell, i in items], plots / f"gallery_{fname}.png")
        summary["gallery"] = [{"cell": cell, "index": i} for cell, i in items]
    return summary
