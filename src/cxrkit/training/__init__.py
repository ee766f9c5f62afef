"""Training: fit a registered model on a dataset and write a run folder."""

from cxrkit.training.trainer import train

__all__ = ["train"]
