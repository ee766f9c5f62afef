"""Named models: ``build_model("cnn", num_outputs=1)``. Every model takes (B, 1, H, W) input."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from cxrkit.models.baselines import DenseBaseline, RegularisedCNN, SimpleCNN


def _resnet(depth: int) -> Callable[[int], nn.Module]:
    def build(n: int) -> nn.Module:
        from monai.networks.nets import resnet18, resnet50

        fn = {18: resnet18, 50: resnet50}[depth]
        return fn(spatial_dims=2, n_input_channels=1, num_classes=n)

    return build


def _densenet121(n: int) -> nn.Module:
    from monai.networks.nets import DenseNet121

    return DenseNet121(spatial_dims=2, in_channels=1, out_channels=n)


def _efficientnet_b0(n: int) -> nn.Module:
    from monai.networks.nets import EfficientNetBN

    return EfficientNetBN("efficientnet-b0", pretrained=False, progress=False, spatial_dims=2, in_channels=1, num_classes=n)


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: how to build it and what it is."""

    name: str
    build: Callable[[int], nn.Module]
    description: str


MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec("mlp", lambda n: DenseBaseline(n), "dense baseline on a 32x32 thumbnail"),
        ModelSpec("simple_cnn", lambda n: SimpleCNN(n), "3-block tutorial CNN, no regularisation"),
        ModelSpec("cnn", lambda n: RegularisedCNN(n), "regularised CNN: batch norm, dropout, global average pooling"),
        ModelSpec("resnet18", _resnet(18), "MONAI ResNet-18, 1-channel input"),
        ModelSpec("resnet50", _resnet(50), "MONAI ResNet-50, 1-channel input"),
        ModelSpec("densenet121", _densenet121, "MONAI DenseNet-121 (the CheXNet architecture), 1-channel input"),
        ModelSpec("efficientnet-b0", _efficientnet_b0, "MONAI EfficientNet-B0, 1-channel input"),
    )
}


def model_names() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return list(MODELS)


def build_model(name: str, num_outputs: int) -> nn.Module:
    """Build a registered model with ``num_outputs`` logits (1 for a binary task)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name].build(num_outputs)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Return (trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
