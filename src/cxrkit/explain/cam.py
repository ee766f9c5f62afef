"""Heat maps of where a run's model looks: Grad-CAM, Grad-CAM++ and occlusion sensitivity (MONAI ``monai.visualize``).

``heatmaps(run, images)`` takes uint8 images (N, S, S) decoded at the run's size (what
:meth:`cxrkit.run.Run.predict_arrays` takes) and returns float maps (N, S, S) in [0, 1], 1 where the
evidence for the explained class is strongest.

References: Selvaraju et al. 2017, Grad-CAM (doi:10.1109/ICCV.2017.74); Chattopadhay et al. 2018,
Grad-CAM++ (doi:10.1109/WACV.2018.00097); Zeiler & Fergus 2014, occlusion sensitivity.
"""

from __future__ import annotations

import copy
import threading
import warnings
import weakref

import numpy as np
import torch
from torch import nn

from cxrkit.explain import AUTO, METHODS
from cxrkit.models.registry import get_spec
from cxrkit.run import Run

SUPPORTED_TASKS = ("binary", "multiclass")


class ExplainError(ValueError):
    """Raised when a heat map cannot be made for this run, these images or this method."""


class _ClassScores(nn.Module):
    """The run's model with one score per class: a binary model's single logit z becomes [-z, z], so the
    negative class can be explained too and class indices match ``run.classes``."""

    def __init__(self, model: nn.Module, binary: bool) -> None:
        super().__init__()
        self.net, self.binary = model, binary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-class scores (B, K)."""
        z = self.net(x).float()
        return torch.cat([-z, z], dim=1) if self.binary else z


class _Explainer:
    """A private copy of the run's model with MONAI's hooks on it, so the run's own model stays hook-free and
    concurrent callers (the HTTP server) take turns instead of mixing each other's gradients."""

    def __init__(self, run: Run) -> None:
        # Heat maps are computed on the CPU whatever device the run predicts on (a few images at a time).
        self.scores = _ClassScores(copy.deepcopy(run.model).cpu(), run.task == "binary").eval()
        # Grad-CAM's layer is picked (a forward pass) when Grad-CAM is first asked for: occlusion, the default, needs none, and
        # a model without convolutional blocks (mlp) has none.
        self.layers, self.size, self.layer = get_spec(run.meta["model"]).cam_layers, run.preprocessing.image_size, None
        self.lock = threading.Lock()
        self._cams: dict[str, object] = {}

    def cam(self, method: str) -> object:
        """The MONAI CAM object for ``method``, built once."""
        if method not in self._cams:
            from monai.visualize import GradCAM, GradCAMpp

            if self.layer is None:
                self.layer = _pick_layer(self.scores.net, self.layers, self.size)

            cls = GradCAM if method == "gradcam" else GradCAMpp
            # MONAI's default post-processing min-max scales *and flips* the map; we normalise ourselves.
            self._cams[method] = cls(self.scores, target_layers=f"net.{self.layer}", postprocessing=lambda m: m)
        return self._cams[method]


MIN_MAP_SIDE = 7  # the classic Grad-CAM resolution (a 224-px ResNet's last block)


def _pick_layer(model: nn.Module, candidates: tuple[str, ...], size: int) -> str:
    """The deepest of ``candidates`` whose output map is at least MIN_MAP_SIDE pixels wide at this image size (else the
    shallowest)."""
    modules = dict(model.named_modules())
    sides: dict[str, int] = {}
    handles = [modules[name].register_forward_hook(lambda _m, _i, o, name=name: sides.__setitem__(name, o.shape[-1]))
               for name in candidates]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, size, size))
    finally:
        for h in handles:
            h.remove()
    return next((name for name in candidates if sides[name] >= MIN_MAP_SIDE), candidates[-1])


_EXPLAINERS: weakref.WeakKeyDictionary[nn.Module, _Explainer] = weakref.WeakKeyDictionary()


def _explainer(run: Run) -> _Explainer:
    e = _EXPLAINERS.get(run.model)
    if e is None:
        e = _EXPLAINERS[run.model] = _Explainer(run)
    return e


def _scale_each(maps: torch.Tensor) -> np.ndarray:
    """(N, 1, S, S) non-negative maps -> (N, S, S) divided by each map's maximum (all-zero maps stay zero)."""
    m = maps.detach().float().clamp_min(0)[:, 0]
    peak = m.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return (m / peak).clamp(0, 1).numpy().astype(np.float32)


def resolve_method(run: Run, method: str) -> str:
    """``method``, with ``auto`` replaced by occlusion, for every model (Grad-CAM when asked for by name)."""
    if method == AUTO:
        # On models that read only a corner marker, Grad-CAM never put its peak on it: cnn and pasa (8 x 8 maps, 64 px),
        # efficientnet-lite0 at 64 px (2 x 2) and at 224 px (7 x 7, the classic size: 0 of 60 images), and the report called
        # the shortcut model's attention "in the lungs"; occlusion found the marker and the report warned (BENCHMARKS.md).
        return "occlusion"
    if method not in METHODS:
        raise ExplainError(f"unknown heat-map method {method!r}; choose one of {', '.join((AUTO, *METHODS))}")
    return method


def _check(run: Run, images: np.ndarray, class_index: int | None, method: str) -> np.ndarray:
    """The images, checked for ``method`` (already resolved: an unknown one is refused by :func:`resolve_method`)."""
    if run.task not in SUPPORTED_TASKS:
        raise ExplainError(f"heat maps support {' and '.join(SUPPORTED_TASKS)} runs; this run's task is {run.task!r}")
    images = np.asarray(images)
    size = run.preprocessing.image_size
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (size, size):
        raise ExplainError(f"images must be uint8 (N, {size}, {size}) decoded at the run's size; got {images.dtype} {images.shape}")
    if class_index is not None and not 0 <= class_index < len(run.classes):
        raise ExplainError(f"class_index {class_index} out of range for classes {run.classes}")
    if method != "occlusion" and not get_spec(run.meta["model"]).cam_layers:
        raise ExplainError(f"model {run.meta['model']} has no convolutional layer for Grad-CAM; use method 'occlusion'")
    return images


def heatmaps(run: Run, images: np.ndarray, class_index: int | None = None, method: str = AUTO) -> np.ndarray:
    """Heat maps (N, S, S) in [0, 1] for uint8 images (N, S, S) decoded at the run's size.

    ``class_index`` indexes ``run.classes``; None explains the positive class of a binary run and each
    image's predicted class otherwise. ``method``: ``auto`` (the model's default: :func:`resolve_method`), ``gradcam`` and ``gradcam++`` (gradients of the class
    score at the model's last convolutional block, upsampled) or ``occlusion`` (drop of the class
    log-odds when a patch around each pixel is replaced by the image mean; model-agnostic, about 260 forward passes per image).
    """
    method = resolve_method(run, method)
    images = _check(run, images, class_index, method)
    out = np.zeros(images.shape, dtype=np.float32)
    if len(images) == 0:
        return out
    ex = _explainer(run)
    # Gradients must flow even when the caller (a server, a report) runs under inference mode.
    with ex.lock, torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
        # MONAI's hooks and patch indexing warn on every call about PyTorch internals; nothing a user can act on.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
        x = run.preprocessing(images).contiguous(memory_format=torch.channels_last)
        if class_index is not None:
            targets = np.full(len(images), class_index)
        elif run.task == "binary":
            targets = np.ones(len(images), dtype=int)
        else:
            with torch.no_grad():
                targets = ex.scores(x).argmax(1).numpy()
        for c in np.unique(targets):
            sel = np.flatnonzero(targets == c)
            for start in range(0, len(sel), 32):
                part = sel[start : start + 32]
                if method == "occlusion":
                    out[part] = _occlusion(ex.scores, x[part], int(c))
                elif method == "gradcam++":
                    # MONAI's GradCAMpp broadcasts the (B,) class scores against the map's last axis: right only for B == 1.
                    out[part] = np.concatenate([_scale_each(ex.cam(method)(x[i : i + 1], class_idx=int(c))) for i in part])
                else:
                    out[part] = _scale_each(ex.cam(method)(x[part], class_idx=int(c)))
    return _outside_the_letterbox_bars(out, images) if run.preprocessing.aspect == "pad" else out  # squash: no bars


def _outside_the_letterbox_bars(maps: np.ndarray, images: np.ndarray) -> np.ndarray:
    """``maps`` with the heat on the letterbox bars removed and each map scaled to its maximum again: a coarse Grad-CAM map
    spread 17% of its heat over the black bars of a 128 x 96 image, which the report counted as "borders"."""
    from cxrkit.explain.attention import content_box

    for m, image in zip(maps, images):
        top, bottom, left, right = content_box(image)
        outside = np.ones(m.shape, dtype=bool)
        outside[top:bottom, left:right] = False
        if outside.any():
            m[outside] = 0
            peak = m.max()
            if peak > 0:
                m /= peak
    return maps


def _margins(scores: torch.Tensor) -> torch.Tensor:
    """Per-class log-odds, z_c - logsumexp of the other classes' scores: log(p_c / (1 - p_c)) without the
    saturation of probabilities (a confident model's P = 1.0 in float32 would hide every occlusion)."""
    k = scores.shape[1]
    others = scores[:, None, :].expand(-1, k, -1).masked_fill(torch.eye(k, dtype=torch.bool), float("-inf"))
    return scores - torch.logsumexp(others, dim=2)


OCCLUSION_PATCH = 1 / 6  # the occluded square's side, as a share of the image side (at least 8 pixels)
# Neighbouring squares overlap by this share of their side: 9 x 9 squares at any size (a stride of 7 pixels at 64 px). 0.3 gave
# the maps 0.6 gave (peak on the evidence, heat on it, the report's warning) at a third of the cost; with no overlap a 224-px
# lesion's maps lost their peak on 1 image in 6 (BENCHMARKS.md, heat maps).
OCCLUSION_OVERLAP = 0.3
# Pixels scored per forward pass (64 occluded copies at 64 px, 5 at 224 px). Fewer, smaller passes are faster on a CPU: 512
# copies a pass took 2.3 times as long at 224 px as 4 to 8, and 2.1 times as long at 64 px as 64.
OCCLUSION_PIXELS = 64 * 64 * 64


def _occlusion(scores: nn.Module, x: torch.Tensor, c: int) -> np.ndarray:
    """Drop in the class's log-odds when a square around each pixel is replaced by the image mean, scaled to [0, 1].

    Each pixel's value is the mean log-odds over the squares that cover it (MONAI's ``OcclusionSensitivity`` with
    ``mode="mean_img"`` and the same overlap gives the same maps to 1e-6); done here for every image of the batch at once,
    which was 2.2 times faster than MONAI's one image at a time (overlap 0.6, 64 px); occlusion is the report's default for every model.
    """
    b, _, size, _ = x.shape
    m = max(8, int(size * OCCLUSION_PATCH))
    stride = max(1, int(m * (1 - OCCLUSION_OVERLAP)))  # rounded down, as MONAI's sliding windows are
    starts = list(range(0, size - m + 1, stride))
    if starts[-1] != size - m:  # the last square ends on the image's edge
        starts.append(size - m)
    squares = [(i, j) for i in starts for j in starts]
    fill = x.mean(dim=(1, 2, 3), keepdim=True)[:, :, :1, :1]  # each image's own mean
    total, covered = torch.zeros(b, size, size), torch.zeros(size, size)
    with torch.no_grad():
        base = _margins(scores(x))[:, c]
        per = max(1, OCCLUSION_PIXELS // (size * size) // b)
        for k in range(0, len(squares), per):
            part = squares[k : k + per]
            copies = x.unsqueeze(1).repeat(1, len(part), 1, 1, 1)  # (B, squares, 1, S, S)
            for t, (i, j) in enumerate(part):
                copies[:, t, :, i : i + m, j : j + m] = fill
            out = _margins(scores(copies.reshape(-1, *x.shape[1:])))[:, c].reshape(b, len(part))
            for t, (i, j) in enumerate(part):
                total[:, i : i + m, j : j + m] += out[:, t, None, None]
                covered[i : i + m, j : j + m] += 1
    drop = (base[:, None, None] - total / covered).clamp_min(0)
    return _scale_each(drop[:, None])
