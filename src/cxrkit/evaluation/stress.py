"""`cxrkit stress`: re-evaluate a split under controlled image changes; does the model read anatomy or exposure?"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrkit.run import Run


def reference_exposure(run: Run) -> tuple[float, float]:
    """The training images' typical per-image mean and std (0-1 units): medians from the shift reference,
    else the run's pooled normalisation statistics."""
    ref = run.shift_reference()
    if ref is not None and ref["overall"].get("mean") and ref["overall"].get("std"):
        return float(np.median(ref["overall"]["mean"])), float(np.median(ref["overall"]["std"]))
    return run.preprocessing.mean, run.preprocessing.std
