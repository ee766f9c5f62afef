"""cxrkit: chest X-ray classification, from a folder of images to an honestly evaluated model and a report.

    import cxrkit
    run = cxrkit.load("runs/demo")
    run.predict("image.png")          # a Prediction: .probabilities, .decision, .ood_warning

Importing the package is cheap; heavy modules (torch, MONAI) load on first use of ``load``, ``train`` or ``evaluate``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "evaluate", "load", "train", "Run", "Prediction", "RunError"]


def __getattr__(name: str) -> Any:
    if name in ("load", "train", "evaluate"):
        from cxrkit import api

        return getattr(api, name)
    if name in ("Run", "Prediction", "RunError"):
        from cxrkit import run

        return getattr(run, name)
    raise AttributeError(f"module 'cxrkit' has no attribute {name!r}")
