"""Class-imbalance handling: loss weights computed from training-split counts."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def class_counts(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Number of training images per class index."""
    return np.bincount(labels, minlength=n_classes)


def make_loss(task: str, counts: np.ndarray, weighted: bool = True) -> tuple[nn.Module, dict]:
    """Loss for the task with class weights from training counts, plus a description for the report.

    Binary: ``BCEWithLogitsLoss(pos_weight = negatives / positives)``, so both classes contribute
    equally in total. Multi-class: ``CrossEntropyLoss(weight_c = N / (K * n_c))`` (the "balanced"
    weighting of scikit-learn).
    """
    if (counts == 0).any():
        raise ValueError(f"every class needs training images; counts are {counts.tolist()}")
    if task == "binary":
        pos_weight = float(counts[0] / counts[1]) if weighted else 1.0
        return nn.BCEWithLogitsLoss(pos_weight=torch.tensor([pos_weight])), {"loss": "BCEWithLogitsLoss", "pos_weight": pos_weight}
    weights = counts.sum() / (len(counts) * counts) if weighted else np.ones(len(counts))
    return (
        nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32)),
        {"loss": "CrossEntropyLoss", "class_weights": [float(w) for w in weights]},
    )
