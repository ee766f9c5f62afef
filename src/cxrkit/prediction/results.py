"""Per-image prediction results with the out-of-distribution check, the same for ``cxrkit predict``, its Python API and ``cxrkit serve``.

Each image is compared with the statistics of the run's training images (:func:`cxrkit.data.shift.image_outliers`):
brightness, contrast, dark or bright level or border outside the training range flags it, so a single
all-black or 1 x 1 image is flagged as it is by the service, not only a folder whose distribution shifted.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cxrkit.data.shift import image_outliers, image_stats
from cxrkit.run import Run, path_list


def ood_findings(reference: dict | None, images: np.ndarray) -> list[list[str]]:
    """Per uint8 image (N, S, S): the reasons it lies outside the training images; empty lists when the run has no reference."""
    if reference is None or not len(images):
        return [[] for _ in range(len(images))]
    return [[f["message"] for f in found] for found in image_outliers(reference, image_stats(images))]


def predict_results(run: Run, paths: list[Path], batch_size: int = 32, workers: int = 4, progress: bool = False,
                    on_batch: Callable[[np.ndarray], None] | None = None) -> list[dict]:
    """Classify files; per file ``{"path", "probabilities", "decision", "error", "ood_warning", "ood_findings"}``.

    A file that cannot be decoded has ``probabilities`` and ``decision`` None and the reason in ``error``.
    ``ood_warning`` is None for every image when the run has no shift reference: not checked, rather than a clean bill.
    ``on_batch`` receives each decoded uint8 batch (the whole-folder shift check collects statistics there).
    """
    paths = path_list(paths)  # a generator was a TypeError at len()
    reference = run.shift_reference()
    results: list[dict] = [{"path": str(p), "probabilities": None, "decision": None, "error": "", "ood_warning": False, "ood_findings": []}
                           for p in paths]
    bar = tqdm(total=len(paths), desc="predicting", unit="img", disable=not progress or None)
    for where, probs, images, errors in run.iter_predict(paths, batch_size, workers):
        if on_batch is not None and len(images):
            on_batch(images)
        bar.update(len(where) + len(errors))
        decisions = run.decision_labels(probs) if len(where) else []
        for k, (j, found) in enumerate(zip(where, ood_findings(reference, images))):
            results[j].update(probabilities={c: float(probs[k, i]) for i, c in enumerate(run.classes)}, decision=decisions[k],
                              ood_warning=None if reference is None else bool(found), ood_findings=found)
        for j, err in errors.items():
            results[j]["error"] = err
    bar.close()
    return results


def ood_summary(flagged: int, total: int) -> str | None:
    """The line for ``flagged`` of ``total`` images outside the training range: a warning when most are, a note otherwise; None when none is.

    A few per cent of in-distribution images fall outside one of the ranges by chance, so a handful in a
    large folder is a note, not a warning.
    """
    if not flagged:
        return None
    kind = "warning" if 2 * flagged > total else "note"
    return (f"{kind}: {flagged} of {total} image(s) lie outside the training images' range (see the ood_findings column); "
            "predictions on them are less reliable than the run's metrics suggest")
