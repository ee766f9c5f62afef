"""--precision auto follows the device that trains, not the host CPU; bf16 on a GPU without it is refused early."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

import cxrkit.config as config
from cxrkit.config import TrainConfig
from cxrkit.training.distributed import Distributed


@pytest.fixture
def machine(monkeypatch):
    """A host whose CPU and GPU bfloat16 support the test sets (no GPU is touched)."""
    flags = {"cpu": False, "gpu": False}
    asked = []

    def gpu_bf16(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return flags["gpu"]

    monkeypatch.setattr(config, "cpu_bf16", lambda: flags["cpu"])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", gpu_bf16)
    monkeypatch.setattr(torch.cuda, "device", lambda device: nullcontext())
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    flags["asked"] = asked
    return flags


@pytest.mark.parametrize(("cpu", "gpu", "device", "expected"), [
    (True, False, None, "bf16"),  # no device given: the CPU trains
    (False, True, None, "32"),
    (True, False, "cpu", "bf16"),
    (False, False, "cpu", "32"),
    (True, False, "cuda", "32"),  # a bf16 CPU beside a V100: the GPU decides
    (False, True, "cuda:0", "bf16"),  # an A100 beside a CPU without bf16
    (True, True, "mps", "32"),  # unmeasured elsewhere: float32
])
def test_auto_follows_the_training_device(machine, cpu, gpu, device, expected):
    machine["cpu"], machine["gpu"] = cpu, gpu
    assert TrainConfig(data="x").resolved_precision(device) == expected
    if device is not None and device.startswith("cuda"):
        assert machine["asked"] == [False]  # emulated bf16 (slow, and not what was benchmarked) does not count


@pytest.mark.parametrize("device", [None, "cpu", "cuda", "mps"])
def test_an_explicit_float32_is_kept_everywhere(machine, device):
    machine["cpu"] = machine["gpu"] = True
    assert TrainConfig(data="x", precision="32").resolved_precision(device) == "32"


def test_explicit_bf16_on_a_cpu_without_it_is_kept(machine):
    # emulated on such a CPU: slower, but the same arithmetic as on a CPU with bf16, so a benchmark can insist on it
    assert TrainConfig(data="x", precision="bf16").resolved_precision("cpu") == "bf16"


def test_explicit_bf16_on_a_gpu_without_it_is_refused_in_one_line(machine):
    with pytest.raises(ValueError, match=r"^--precision bf16: Tesla V100-SXM2-16GB has no bfloat16 support; use --precision 32") as err:
        TrainConfig(data="x", precision="bf16").resolved_precision("cuda")
    assert "\n" not in str(err.value)
    machine["gpu"] = True
    assert TrainConfig(data="x", precision="bf16").resolved_precision("cuda") == "bf16"


def test_train_refuses_before_reading_the_data(machine, monkeypatch, tmp_path):
    import cxrkit.training.trainer as trainer

    monkeypatch.setattr(trainer, "setup_distributed", lambda device: Distributed(0, 1, torch.device("cuda", 0)))
    loaded = []
    monkeypatch.setattr(trainer, "_build", lambda *a, **k: loaded.append(a))
    cfg = TrainConfig(data=str(tmp_path / "no-such-folder"), out=str(tmp_path / "run"), precision="bf16")
    with pytest.raises(ValueError, match="has no bfloat16 support"):
        trainer.train(cfg, progress=False)
    assert loaded == [] and not (tmp_path / "run").exists()


def test_bf16_on_a_cpu_without_it_warns_that_it_is_emulated(machine, monkeypatch, binary_data, tmp_path, capsys):
    import cxrkit.training.trainer as trainer

    class Built(Exception):
        pass

    def stop(*a, **k):
        raise Built

    monkeypatch.setattr(trainer, "_restore", stop)  # the model is built and the precision known: enough
    base = {"data": str(binary_data), "model": "simple_cnn", "image_size": 32, "epochs": 1, "cache_dir": str(tmp_path / "cache")}
    for precision, cpu, warned in (("bf16", False, True), ("bf16", True, False), ("32", False, False), ("auto", False, False)):
        machine["cpu"] = cpu
        with pytest.raises(Built):
            trainer.train(TrainConfig(**base, out=str(tmp_path / f"run-{precision}-{cpu}"), precision=precision), progress=True)
        out = capsys.readouterr().out
        assert ("emulated, about 10x slower" in out) is warned, (precision, cpu)
