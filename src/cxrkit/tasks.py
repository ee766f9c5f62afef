"""The three tasks, one object each: how outputs become probabilities, losses, decisions and the AUC
that early stopping watches.

- binary: one logit, sigmoid; the positive class is decided at a validation-chosen threshold.
- multiclass: one logit per class, softmax; the most probable class is decided.
- multilabel: one logit per finding, independent sigmoids; each finding at its own threshold.

Code that differs by task asks :func:`get_task` instead of comparing task names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrkit.metrics.classification import binary_metrics, multiclass_metrics, multilabel_metrics, rank_auc


@dataclass(frozen=True)
class Task:
    """Behaviour shared by all tasks; subclasses override what differs."""

    name: str = "multiclass"
    one_label_per_image: bool = True  # calibration, operating points and heat maps per decided class need it
    calibration_method: str = "temperature"  # what ``cxrkit calibrate --method auto`` fits

    def metrics(self, y: np.ndarray, probs: np.ndarray, classes: list[str], threshold: float | None = None,
                thresholds: np.ndarray | None = None, seed: int = 0, patients: list[str] | None = None) -> dict:
        """The task's metrics with confidence intervals at the run's decision rule; ``patients`` (one ID per image) makes the
        intervals count patients where one has several images."""
        return multiclass_metrics(y, probs, classes, seed=seed, patients=patients)

    def num_outputs(self, n_classes: int) -> int:
        """Model outputs for ``n_classes`` classes or findings."""
        return n_classes

    def probabilities(self, logits):
        """Model outputs (B, outputs) -> probabilities (B, K), a torch tensor."""
        import torch

        return torch.softmax(logits.float(), dim=1)

    def loss(self, criterion, logits, y):
        """The training loss of a batch."""
        return criterion(logits, y)

    def decide(self, probs: np.ndarray, threshold: float | None = None, thresholds: np.ndarray | None = None) -> np.ndarray:
        """Decided class index per row (multi-label: an (N, K) 0/1 matrix)."""
        return probs.argmax(axis=1)

    def decision_labels(self, probs: np.ndarray, classes: list[str], threshold: float | None = None,
                        thresholds: np.ndarray | None = None) -> list[str]:
        """The decision per row in words: a class name (multi-label: findings joined by ``|``)."""
        return [classes[i] for i in self.decide(probs, threshold, thresholds)]

    def monitor_auc(self, y: np.ndarray, probs: np.ndarray) -> float:
        """Validation AUC for early stopping: macro one-vs-rest."""
        aucs = [rank_auc(y == c, probs[:, c]) for c in range(probs.shape[1])]
        return float(np.nanmean(aucs))


@dataclass(frozen=True)
class BinaryTask(Task):
    """Disease against normal: the second class is the positive one."""

    name: str = "binary"
    # Class weighting shifts a binary model's probabilities, which one temperature cannot undo (README, calibration).
    calibration_method: str = "platt"

    def metrics(self, y: np.ndarray, probs: np.ndarray, classes: list[str], threshold: float | None = None,
                thresholds: np.ndarray | None = None, seed: int = 0, patients: list[str] | None = None) -> dict:
        m = binary_metrics(y, probs[:, 1], threshold, seed=seed, patients=patients)
        m["classes"] = list(classes)
        return m

    def num_outputs(self, n_classes: int) -> int:
        return 1

    def probabilities(self, logits):
        import torch

        p = torch.sigmoid(logits.float()[:, 0])
        return torch.stack([1 - p, p], dim=1)

    def loss(self, criterion, logits, y):
        return criterion(logits[:, 0], y.float())

    def decide(self, probs: np.ndarray, threshold: float | None = None, thresholds: np.ndarray | None = None) -> np.ndarray:
        if threshold is None:
            raise ValueError("a binary decision needs the run's threshold")
        return (probs[:, 1] >= threshold).astype(int)

    def monitor_auc(self, y: np.ndarray, probs: np.ndarray) -> float:
        return rank_auc(y, probs[:, 1])


@dataclass(frozen=True)
class MultilabelTask(Task):
    """Several findings per image (NIH ChestX-ray14 style)."""

    name: str = "multilabel"
    one_label_per_image: bool = False
    calibration_method: str = "platt"  # one map per finding (metrics.calibration.fit_multilabel_calibration)

    def metrics(self, y: np.ndarray, probs: np.ndarray, classes: list[str], threshold: float | None = None,
                thresholds: np.ndarray | None = None, seed: int = 0, patients: list[str] | None = None) -> dict:
        return multilabel_metrics(y, probs, classes, thresholds, seed=seed, patients=patients)

    def probabilities(self, logits):
        import torch

        return torch.sigmoid(logits.float())

    def loss(self, criterion, logits, y):
        return criterion(logits, y.float())

    def decide(self, probs: np.ndarray, threshold: float | None = None, thresholds: np.ndarray | None = None) -> np.ndarray:
        if thresholds is None:
            raise ValueError("a multi-label decision needs the run's per-finding thresholds")
        return (probs >= thresholds[None, :]).astype(int)

    def decision_labels(self, probs: np.ndarray, classes: list[str], threshold: float | None = None,
                        thresholds: np.ndarray | None = None) -> list[str]:
        return ["|".join(c for c, v in zip(classes, row) if v) for row in self.decide(probs, threshold, thresholds)]

    def monitor_auc(self, y: np.ndarray, probs: np.ndarray) -> float:
        aucs = [rank_auc(y[:, c], probs[:, c]) for c in range(probs.shape[1])]
        return float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")


TASKS = {"binary": BinaryTask(), "multiclass": Task(), "multilabel": MultilabelTask()}


def get_task(name: str) -> Task:
    """The task object for ``binary``, ``multiclass`` or ``multilabel``."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {name!r}") from None
