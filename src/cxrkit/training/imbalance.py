"""Class-imbalance handling: loss weights computed from training-split counts, and oversampling of
images with rare findings for multi-label tasks."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def class_counts(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Number of training images per class index (multi-label (N, K) labels: positives per finding)."""
    if labels.ndim == 2:
        return labels.sum(axis=0).astype(np.int64)
    return np.bincount(labels, minlength=n_classes)


def make_loss(task: str, counts: np.ndarray, weighted: bool = True, n_images: int | None = None) -> tuple[nn.Module, dict]:
    """Loss for the task with class weights from training counts, plus a description for the report.

    Binary: ``BCEWithLogitsLoss(pos_weight = negatives / positives)``, so both classes contribute
    equally in total. Multi-class: ``CrossEntropyLoss(weight_c = N / (K * n_c))`` (the "balanced"
    weighting of scikit-learn). Multi-label: one sigmoid per finding, ``BCEWithLogitsLoss`` with
    ``pos_weight_k = (N - n_k) / n_k`` from the ``n_images`` training images ("weighted BCE"), or
    plain BCE when not ``weighted``.
    """
    if (counts == 0).any():
        what = "finding needs positive" if task == "multilabel" else "class needs"
        raise ValueError(f"every {what} training images; counts are {counts.tolist()}")
    if task == "multilabel":
        if n_images is None:
            raise ValueError("a multi-label loss needs the number of training images")
        pw = (n_images - counts) / counts if weighted else np.ones(len(counts))
        return (
            nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pw, dtype=torch.float32)),
            {"loss": "BCEWithLogitsLoss (multi-label, weighted)" if weighted else "BCEWithLogitsLoss (multi-label, plain)",
             "pos_weights": [float(w) for w in pw]},
        )
    if task == "binary":
        pos_weight = float(counts[0] / counts[1]) if weighted else 1.0
        return nn.BCEWithLogitsLoss(pos_weight=torch.tensor([pos_weight])), {"loss": "BCEWithLogitsLoss", "pos_weight": pos_weight}
    weights = counts.sum() / (len(counts) * counts) if weighted else np.ones(len(counts))
    return (
        nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32)),
        {"loss": "CrossEntropyLoss", "class_weights": [float(w) for w in weights]},
    )


def repeat_factors(labels: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """How often each image is shown per epoch under repeat-factor sampling (Gupta et al., LVIS, CVPR 2019).

    A finding present in a share ``f_k`` of the training images gets ``r_k = max(1, sqrt(threshold / f_k))``;
    an image is repeated by the largest ``r_k`` of its findings (1 for images without any). Findings
    rarer than ``threshold`` are so seen more often, without duplicating the common ones.
    """
    f = labels.mean(axis=0)
    r = np.maximum(1.0, np.sqrt(threshold / np.maximum(f, 1e-12)))
    return np.where(labels.astype(bool), r[None, :], 1.0).max(axis=1)


def oversampled_order(factors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One epoch's shuffled positions, each repeated ``floor(r)`` times plus once more with probability ``r - floor(r)``."""
    whole = np.floor(factors).astype(np.int64)
    reps = whole + (rng.random(len(factors)) < factors - whole)
    return rng.permutation(np.repeat(np.arange(len(factors)), reps))
