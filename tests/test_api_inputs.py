"""Bad inputs to the Python API (cxrkit.load, Run.predict, Run.predict_files, cxrkit.train, cxrkit.evaluate) that once gave
a plausible-looking answer or a raw traceback: each is now a one-line ValueError (RunError for run folders)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import cxrkit
from cxrkit.run import RunError


def _copy_run(tiny_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoint", "plots", "report.html"))
    return run


def _edit_weights(run: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(run / "model.safetensors"))
    save_file(edit(state), str(run / "model.safetensors"))


@pytest.mark.parametrize("dtype", ["int32", "bool"])
def test_weights_of_integers_are_refused(dtype, tiny_run, tmp_path):
    import torch

    run = _copy_run(tiny_run, tmp_path)
    # int weights were cast to float by load_state_dict: mostly zeros, P = 0.5 for every image, decided "healthy"
    _edit_weights(run, lambda s: {k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v for k, v in s.items()})
    with pytest.raises(RunError, match=rf"tensor\(s\) of another kind of number \(first .*: torch.{dtype} vs torch.float32\)"):
        cxrkit.load(run)
