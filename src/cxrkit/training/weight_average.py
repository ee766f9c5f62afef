"""An exponential moving average of the weights (``--ema-epochs``), without a trace of the starting weights.

``torch.optim.swa_utils.AveragedModel`` keeps the average; the update here is debiased (as Adam debiases
its moments): after n steps the average is exactly sum_i d^(n-i) w_i / sum_i d^(n-i) over the steps seen,
so a short run is not pulled back towards its initial weights, and a long run gets the plain EMA.
Batch-norm statistics are averaged with the weights, so the averaged network is consistent with itself.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim.swa_utils import AveragedModel

# The average spans at most this share of the run: over 3 of 20 epochs it covers the low-rate tail of the cosine
# schedule (as benchmarked); over 3 of 3 epochs it would hold the first, high-rate steps.
MAX_SHARE_OF_RUN = 0.15


def effective_ema_epochs(ema_epochs: float, epochs: int) -> float:
    """The averaging window in epochs: ``ema_epochs``, but at most 15% of the run."""
    return min(ema_epochs, MAX_SHARE_OF_RUN * epochs)


def ema_decay(ema_epochs: float, steps_per_epoch: int) -> float:
    """The per-step decay whose time constant is ``ema_epochs`` epochs of optimiser steps."""
    return 1 - 1 / max(1.0, ema_epochs * steps_per_epoch)


def debiased_ema(decay: float) -> Callable[[list, list, torch.Tensor], None]:
    """``multi_avg_fn`` for :class:`AveragedModel`: the weighted average of every step seen, weights decaying by ``decay``."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = int(n_averaged)  # steps in the average so far (AveragedModel copies the first one itself)
        weight = (1 - decay) / (1 - decay ** (n + 1)) if decay < 1 else 1 / (n + 1)
        for a, c in zip(averaged, current, strict=True):
            if a.is_floating_point():
                a.lerp_(c.to(a.dtype), weight)
            else:  # counters such as num_batches_tracked: the current value
                a.copy_(c)

    return update


def weight_average(model: torch.nn.Module, ema_epochs: float, steps_per_epoch: int) -> AveragedModel:
    """A debiased moving average of ``model``'s weights and buffers over about ``ema_epochs`` epochs (already capped)."""
    return AveragedModel(model, multi_avg_fn=debiased_ema(ema_decay(ema_epochs, steps_per_epoch)), use_buffers=True)
