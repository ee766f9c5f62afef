"""Which torch device a command runs its model on: ``auto`` (a CUDA GPU when PyTorch sees one), ``cpu`` or ``cuda[:N]``."""

from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str | torch.device) -> torch.device:
    """The torch device for ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; a ValueError saying why when CUDA is asked for and absent."""
    if isinstance(name, torch.device):
        # Passed through unchecked, torch.device("cuda") on a CPU-only build was an AssertionError from torch, and "meta" (no
        # data) loaded and then failed at the first prediction.
        if name.type == "mps":
            if not torch.backends.mps.is_available():
                raise ValueError("device mps: PyTorch sees no Apple GPU (MPS); use cpu")
            return name
        if name.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N (or an available torch.device of those, or mps), got {name!r}")
        if name.type == "cpu":
            return name
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    kind, _, index = text.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        raise ValueError(f"--device {name}: PyTorch sees no CUDA GPU (torch {torch.__version__}, {build}); "
                         "use --device cpu, or install a CUDA build of PyTorch (docs/scale.md, GPUs)")
    if index and int(index) >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: there are {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(text)
