"""Pretrained weights: ImageNet sources per model (shipped offline or downloaded) and loading a state dict
into a model, adapting a 3-channel stem to grayscale and skipping a mismatched head."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cxrkit.models.torch_files import load_weights_only, refusal_reason


@dataclass
class LoadReport:
    """What happened to each tensor of a loaded state dict."""

    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from a ``.safetensors`` file or a torch file, never unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"{path} is not a readable safetensors file ({' '.join(str(exc).split())[:120]})") from None
    try:
        obj = load_weights_only(path)
    except Exception as exc:  # the unpickler refuses code objects; say so plainly
        raise ValueError(f"{path} is not a plain tensor state dict: {refusal_reason(exc)}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module.").removeprefix("model."): v for k, v in obj.items()}


def load_pretrained(model: nn.Module, path: str | Path, head: str | None = None) -> LoadReport:
    """Copy compatible weights from the file ``path`` into ``model``; see :func:`load_state`."""
    return load_state(model, read_state_dict(path), str(path), head)


def load_state(
    model: nn.Module, source: dict[str, torch.Tensor], origin: str = "the state dict", head: str | None = None,
    drop_head: bool = False,
) -> LoadReport:
    """Copy compatible tensors from ``source`` into ``model`` and report what was loaded.

    A first convolution trained on 3-channel (RGB) input is collapsed to one channel by summing over
    its input channels, which gives the same response to a grey image as the RGB network gave to
    that image repeated in three channels (the convention of timm's ``adapt_input_conv``). Tensors
    whose shape still differs (a classifier head for another number of classes) are skipped and left
    at their fresh initialisation. Raises ``ValueError`` if nothing matches, or if a tensor outside the
    classifier head (the parameters under ``head``) has another shape: that file was made for another
    architecture or width, and loading half of it would silently train a different network. ``drop_head``
    leaves the head at its initialisation even where its shape fits (a head trained for other classes).
    """
    target = model.state_dict()
    source = match_names(source, target)
    if drop_head and head:
        source = {k: v for k, v in source.items() if not k.startswith(head + ".")}
    report = LoadReport()
    new_state = {}
    for name, tensor in source.items():
        if name not in target:
            report.skipped.append(name)
            continue
        want = target[name].shape
        if tensor.shape == want:
            new_state[name] = tensor
            report.loaded.append(name)
        elif tensor.ndim == 4 and want[1] == 1 and tensor.shape[1] == 3 and tensor.shape[0] == want[0] and tensor.shape[2:] == want[2:]:
            new_state[name] = tensor.sum(dim=1, keepdim=True)
            report.adapted.append(name)
        else:
            report.skipped.append(name)
    in_body = [n for n in report.skipped if n in target and not (head and n.startswith(head + "."))]
    if in_body:
        shown = "; ".join(f"{n} {tuple(source[n].shape)} vs {tuple(target[n].shape)}" for n in in_body[:3])
        raise ValueError(
            f"{len(in_body)} tensor(s) in {origin} have other shapes than this model's ({shown}"
            f"{'; ...' if len(in_body) > 3 else ''}); the weights are for another architecture or width"
        )
    if not new_state:
        raise ValueError(
            f"no tensor in {origin} matches the model's layer names and shapes; "
            "is it a state dict for this architecture?"
        )
    report.missing = [k for k in target if k not in new_state]
    body = [k for k in target if not (head and k.startswith(head + ".")) and not k.endswith("num_batches_tracked")]
    got = [k for k in body if k in new_state]
    if body and len(got) < MIN_BACKBONE_SHARE * len(body):
        absent = [k for k in body if k not in new_state]
        raise ValueError(
            f"only {len(got)} of the model's {len(body)} backbone tensors were found in {origin} "
            f"(first missing: {', '.join(absent[:3])}); it was made for another architecture or names its layers differently, "
            "and training on with the rest at random would not be the pretrained network"
        )
    model.load_state_dict(new_state, strict=False)
    return report


# Below this share of the backbone's tensors loaded, a weights file is refused rather than half-used.
MIN_BACKBONE_SHARE = 0.9
_PREFIXES = ("module.", "model.", "densenet121.", "densenet.", "backbone.", "net.", "encoder.")
_DENSE_ANY = re.compile(r"^(.*denselayer\d+)\.(?:layers\.)?(norm|relu|conv)\.?([12])\.(weight|bias|running_mean|running_var|num_batches_tracked)$")


def match_names(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename tensors of torchvision / TorchXRayVision DenseNet-121 and ResNet state dicts (and wrapped ones:
    ``module.``, ``model.`` ...) to the names of this model, where the renamed name exists in it."""
    out = {}
    for k, v in source.items():
        name = k
        for _ in range(3):
            if name in target:
                break
            stripped = next((name[len(p):] for p in _PREFIXES if name.startswith(p)), None)
            if stripped is None:
                break
            name = stripped
        if name not in target:
            m = _DENSE_ANY.match(name)
            if m:  # torchvision "denselayer1.norm1" / old "denselayer1.norm.1" -> MONAI "denselayer1.layers.norm1"
                cand = f"{m.group(1)}.layers.{m.group(2)}{m.group(3)}.{m.group(4)}"
                name = cand if cand in target else name
        out[name if name in target else k] = v
    return out


# ImageNet weights for the MONAI backbones (the torchvision / lukemelas releases MONAI itself loads).
# MONAI's own ``pretrained=True`` would skip the 3-channel stem silently when in_channels=1, so the
# file is fetched here and goes through :func:`load_state`, which adapts the stem.
IMAGENET_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "densenet121": "https://download.pytorch.org/models/densenet121-a639ec97.pth",
    "efficientnet-b0": "https://github.com/lukemelas/EfficientNet-PyTorch/releases/download/1.0/efficientnet-b0-355c32eb.pth",
}
_DENSE_KEY = re.compile(r"^(.*denselayer\d+)(\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _rename_for_monai(name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if name == "densenet121":  # torchvision "denselayer1.norm.1" is MONAI's "denselayer1.layers.norm1"
        out = {}
        for k, v in state.items():
            m = _DENSE_KEY.match(k)
            out[m.group(1) + ".layers" + m.group(2) + m.group(3) if m else k] = v
        return out
    return state


class PretrainedUnavailable(ValueError):
    """ImageNet weights could not be obtained (usually: no internet); the message says how to pass a file."""


def imagenet_state_dict(name: str, download: Callable[..., dict] | None = None) -> dict[str, torch.Tensor]:
    """ImageNet weights for model ``name``: shipped with a package (efficientnet-lite0) or downloaded once
    into the torch hub cache (MONAI backbones). Raises :class:`PretrainedUnavailable` when offline."""
    if name.startswith("efficientnet-lite"):
        from cxrkit.models.efficientnet_lite import lite_imagenet_state_dict

        return lite_imagenet_state_dict(name.removeprefix("efficientnet-"))
    if name not in IMAGENET_URLS:
        raise ValueError(f"no ImageNet weights are known for {name!r}; models with them: efficientnet-lite0/1/2, {', '.join(IMAGENET_URLS)}")
    url = IMAGENET_URLS[name]
    if download is None:
        from torch.hub import load_state_dict_from_url as download
    try:
        state = download(url, map_location="cpu", progress=True, weights_only=True)
    except Exception as exc:  # URLError, HTTPError, socket timeouts, SSL errors: all mean "could not fetch"
        filename = url.rsplit("/", 1)[-1]
        raise PretrainedUnavailable(
            f"could not download ImageNet weights for {name} from {url} ({type(exc).__name__}: {exc}). "
            f"Without internet, fetch {filename} on another machine and pass it with --pretrained /path/to/{filename} "
            "(or copy it into ~/.cache/torch/hub/checkpoints/); efficientnet-lite0 has ImageNet weights that work offline"
        ) from exc
    return _rename_for_monai(name, state)


def initialise(model: nn.Module, name: str, pretrained: str | None, keep_head: bool = True) -> dict | None:
    """Load the starting weights a config asks for and return a summary for meta.json (None: random init).

    ``pretrained``: ``None`` means the model's default (ImageNet where the weights ship offline,
    i.e. efficientnet-lite0; random otherwise), ``"none"`` random initialisation, ``"imagenet"`` the
    ImageNet weights (downloaded for MONAI backbones), anything else a local file, whose classifier head is
    copied where its shape fits unless ``keep_head`` is False. The summary's ``head`` says which happened.
    """
    from cxrkit.models.registry import get_spec

    spec = get_spec(name)
    choice = pretrained if pretrained is not None else ("imagenet" if spec.imagenet == "offline" else "none")
    if choice == "none":
        return None
    if choice == "imagenet":
        rep, source = load_state(model, imagenet_state_dict(name), f"ImageNet weights for {name}", spec.head), "imagenet"
    else:
        rep, source = load_state(model, read_state_dict(choice), choice, spec.head, drop_head=not keep_head), choice
    head_loaded = bool(spec.head) and any(n.startswith(spec.head + ".") for n in rep.loaded)
    return {"source": source, "loaded": len(rep.loaded), "adapted": rep.adapted, "skipped": rep.skipped, "missing": rep.missing,
            "head": "loaded" if head_loaded else "initial"}
