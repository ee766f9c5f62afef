"""MixStyle (Zhou et al., ICLR 2021): during training, mix the per-channel feature statistics (mean and
standard deviation over the image) of early layers between images of a batch.

Early-layer statistics carry "style": exposure, contrast, detector and processing. Mixing them between
images (from different hospitals, when the training data pools several) shows the later layers each
image's anatomy under other images' styles, so they learn to read the anatomy instead of the style.

It is attached with forward hooks and does nothing in evaluation mode: the trained weights, the saved
model, prediction and the ONNX export are exactly those of the plain network.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

EPS = 1e-6


class MixStyle:
    """Forward hooks that mix feature statistics with probability ``p`` per batch and layer."""

    def __init__(self, p: float = 0.5, alpha: float = 0.1, seed: int = 0) -> None:
        self.p = p
        self.alpha = alpha
        self.rng = np.random.default_rng(seed)  # its own generator: other random streams stay as without MixStyle
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def attach(self, model: nn.Module, layers: tuple[str, ...]) -> MixStyle:
        """Hook the outputs of ``layers`` (module names of ``model``)."""
        modules = dict(model.named_modules())
        missing = [name for name in layers if name not in modules]
        if missing:
            raise ValueError(f"MixStyle: the model has no layer {', '.join(missing)}")
        self.handles = [modules[name].register_forward_hook(self._hook) for name in layers]
        return self

    def detach(self) -> None:
        """Remove the hooks."""
        for h in self.handles:
            h.remove()
        self.handles = []

    def _hook(self, module: nn.Module, inputs: tuple, x: torch.Tensor) -> torch.Tensor | None:
        if not module.training or x.shape[0] < 2 or self.rng.random() > self.p:
            return None
        return self.mix(x)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with each image's channel statistics replaced by a random mixture of its own and another image's."""
        b, dtype = x.shape[0], x.dtype
        x = x.float()  # statistics in 32-bit, also under bf16 autocast
        mu = x.mean(dim=(2, 3), keepdim=True)
        sig = (x.var(dim=(2, 3), keepdim=True, correction=0) + EPS).sqrt()
        # Gradients flow through the normalised content, not through the statistics (as in the paper).
        mu, sig = mu.detach(), sig.detach()
        normed = (x - mu) / sig
        lam = torch.from_numpy(self.rng.beta(self.alpha, self.alpha, size=(b, 1, 1, 1))).float().to(x.device)
        perm = torch.from_numpy(self.rng.permutation(b)).to(x.device)
        mu_mix = mu * lam + mu[perm] * (1 - lam)
        sig_mix = sig * lam + sig[perm] * (1 - lam)
        return (normed * sig_mix + mu_mix).to(dtype)
