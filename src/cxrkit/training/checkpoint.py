"""Per-epoch training checkpoints, written atomically, so ``cxrkit train --resume`` continues a run to
the same result it would have reached uninterrupted.

A checkpoint is a folder ``<run>/checkpoint/`` with
- ``tensors.safetensors``: the current weights (``model.*``), the best weights so far (``best.*``), the
  moving average of the weights when the run keeps one (``ema.*``) and the torch random states
  (``rng.torch``, ``rng.augment``);
- ``optimizer.pt``: optimizer and scheduler state dicts (plain tensors and numbers; read back with
  ``torch.load(weights_only=True)``, which refuses arbitrary pickled objects);
- ``state.json``: epoch, history, early-stopping state, the NumPy generator state, elapsed time.
It is written to a temporary folder and swapped in by renames, so a crash at any moment leaves either
the previous or the new checkpoint whole.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from cxrkit.models.torch_files import load_weights_only, refusal_reason
from cxrkit.record.files import CHECKPOINT_DIR


def save_checkpoint(
    out: Path, model: torch.nn.Module, best_state: dict[str, torch.Tensor] | None, optimizer: torch.optim.Optimizer,
    scheduler: object | None, rng: np.random.Generator, aug_gen: torch.Generator, state: dict, ema: torch.nn.Module | None = None,
) -> Path:
    """Write the checkpoint of the epoch just finished (``state`` holds the JSON-able training state)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    final = out / CHECKPOINT_DIR
    tmp = out / f"{CHECKPOINT_DIR}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        if best_state is not None:
            tensors.update({f"best.{k}": v.detach().cpu().contiguous().clone() for k, v in best_state.items()})
        if ema is not None:
            tensors.update({f"ema.{k}": v.detach().cpu().contiguous().clone() for k, v in ema.state_dict().items()})
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.augment"] = aug_gen.get_state()
        save_file(tensors, str(tmp / "tensors.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler is not None else None},
                   tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "numpy_rng": rng.bit_generator.state}))
    # A full disk or quota (torch.save reports it as a RuntimeError): no half checkpoint left, the previous one stays whole.
    except (OSError, RuntimeError, SafetensorError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        why = getattr(exc, "strerror", None) or " ".join(str(exc).split())[:200]
        kept = "the previous checkpoint is kept" if final.exists() else "no earlier checkpoint exists, so --resume starts the run afresh"
        raise OSError(getattr(exc, "errno", None), f"cannot be written ({why}); {kept}", str(final)) from None
    old = out / f"{CHECKPOINT_DIR}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(out: Path) -> Path | None:
    """The run's latest complete checkpoint folder (the previous one if a swap was cut short), or None."""
    for name in (CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.old"):
        p = out / name
        if (p / "state.json").is_file() and (p / "tensors.safetensors").is_file() and (p / "optimizer.pt").is_file():
            return p
    return None


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: object | None, rng: np.random.Generator,
    aug_gen: torch.Generator, ema: torch.nn.Module | None = None,
) -> tuple[dict, dict[str, torch.Tensor] | None]:
    """Restore model, optimizer, scheduler, weight average and random states in place; returns (state, best weights)."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path / "tensors.safetensors"))
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
        if ema is not None:
            ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        try:
            opt = load_weights_only(path / "optimizer.pt")
        except Exception as exc:
            raise ValueError(f"optimizer.pt: {refusal_reason(exc)}") from None
        optimizer.load_state_dict(opt["optimizer"])
        if scheduler is not None and opt["scheduler"] is not None:
            scheduler.load_state_dict(opt["scheduler"])
        torch.set_rng_state(tensors["rng.torch"])
        aug_gen.set_state(tensors["rng.augment"])
        state = json.loads((path / "state.json").read_text())
        rng.bit_generator.state = state.pop("numpy_rng")
    except Exception as exc:  # a tampered or damaged checkpoint (refused pickle, wrong tensors, bad JSON): never half-resume
        raise ValueError(f"the checkpoint in {path} cannot be resumed ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
                         f"delete {path} to start again, or train into another --out") from None
    return state, best
