"""Load a state dict from disk into a model, adapting a 3-channel stem and skipping a mismatched head."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn


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
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler refuses code objects; say so plainly
        raise ValueError(f"{path} is not a plain tensor state dict (weights_only=True refused it): {exc}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module.").removeprefix("model."): v for k, v in obj.items()}


def load_pretrained(model: nn.Module, path: str | Path) -> LoadReport:
    """Copy compatible weights from ``path`` into ``model`` and report what was loaded.

    A first convolution trained on 3-channel (RGB) input is collapsed to one channel by summing over
    its input channels, which gives the same response to a grey image as the RGB network gave to
    that image repeated in three channels (the convention of timm's ``adapt_input_conv``). Tensors
    whose shape still differs (a classifier head for another number of classes) are skipped and left
    at their fresh initialisation. Raises ``ValueError`` if nothing matches.
    """
    source = read_state_dict(path)
    target = model.state_dict()
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
    if not new_state:
        raise ValueError(
            f"no tensor in {path} matches the model's layer names and shapes; "
            "is it a state dict for this architecture?"
        )
    report.missing = [k for k in target if k not in new_state]
    model.load_state_dict(new_state, strict=False)
    return report
