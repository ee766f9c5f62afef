"""--device auto|cpu|cuda for train, evaluate, predict and serve: runs on CPU here, the CUDA path where a GPU exists."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrkit.cli import main
from cxrkit.models.device import resolve_device
from cxrkit.run import Run, RunError
from cxrkit.training.distributed import setup_distributed

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to PyTorch")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible")


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="sees no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        resolve_device("tpu")
    # torch.device objects were passed through: "cuda" without a GPU was torch's AssertionError, "meta" failed at the first prediction
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="sees no CUDA GPU"):
        resolve_device(torch.device("cuda"))
    with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N .* got device\\(type='meta'\\)"):
        resolve_device(torch.device("meta"))
    assert setup_distributed("cpu").device == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:0") == torch.device("cuda:0")
    assert setup_distributed("cpu").device == torch.device("cpu")  # cpu stays cpu on a GPU machine
    with pytest.raises(ValueError, match="1 CUDA device"):
        resolve_device("cuda:3")
    assert resolve_device(torch.device("cuda", 0)) == torch.device("cuda:0")
    with pytest.raises(ValueError, match="1 CUDA device"):
        resolve_device(torch.device("cuda", 3))


def test_cpu_device_on_every_inference_command(tiny_run, binary_data, tmp_path, capsys):
    image = sorted((binary_data / "test" / "tb").glob("*.png"))[0]
    assert main(["predict", str(tiny_run), str(image), "--device", "cpu", "--engine", "torch"]) == 0
    assert image.name in capsys.readouterr().out
    run = tmp_path / "run"
    import shutil

    shutil.copytree(tiny_run, run)
    assert main(["evaluate", str(run), "--device", "cpu", "--explain", "none"]) == 0
    from cxrkit.serve.app import create_app

    assert create_app(tiny_run, engine="torch", api_key="", device="cpu").state.service.run.device == torch.device("cpu")
    with pytest.raises(SystemExit):
        main(["serve", str(tiny_run), "--device"])  # the option takes a value


@no_cuda
def test_cuda_without_a_gpu_is_a_one_line_error(tiny_run, binary_data, capsys):
    image = sorted((binary_data / "test" / "tb").glob("*.png"))[0]
    assert main(["predict", str(tiny_run), str(image), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --device cuda: PyTorch sees no CUDA GPU") and len(err.strip().splitlines()) == 1
    assert main(["train", str(binary_data), "--device", "cuda", "--out", "unused"]) == 2


@cuda
def test_cuda_predictions_match_cpu(tiny_run, binary_data):
    images = np.stack([Run.load(tiny_run).preprocessing.load(p) for p in sorted((binary_data / "test" / "tb").glob("*.png"))[:8]])
    on_cpu = Run.load(tiny_run, engine="torch", device="cpu").predict_arrays(images)
    on_gpu = Run.load(tiny_run, engine="auto", device="cuda")
    assert on_gpu.device.type == "cuda" and on_gpu.engine == "torch"
    np.testing.assert_allclose(on_gpu.predict_arrays(images), on_cpu, atol=1e-4)
    with pytest.raises(RunError, match="runs on the CPU"):
        Run.load(tiny_run, engine="onnx", device="cuda")
