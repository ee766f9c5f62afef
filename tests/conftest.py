"""Shared fixtures: tiny synthetic datasets written to temporary folders, and an isolated cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cxrkit.data.synthetic import make_synthetic_dataset

if os.environ.get("PYTEST_XDIST_WORKER"):
    # The suite runs as two worker processes (pyproject addopts) on CI's two cores: one PyTorch thread each, or the two
    # would fight over the cores and run slower together than one alone.
    import torch

    torch.set_num_threads(1)

# The project's real datasets sit beside the repository; CXRKIT_SHARED_DATA points elsewhere.
SHARED_DATA = Path(os.environ.get("CXRKIT_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRKIT_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def binary_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seed-challenge layout: train/ and test/ with healthy/ and tb/, 60 images per class at 48 px."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("tb"), n_per_class=60, size=48, seed=1,
                                  splits={"train": 0.75, "test": 0.25}, signal=1.0)


@pytest.fixture(scope="session")
def tiny_run(binary_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32-px cnn trained for 2 epochs, shared by the export, predict and serve tests (a real graph, not a good model)."""
    from cxrkit.config import TrainConfig
    from cxrkit.data.augment import AugmentConfig
    from cxrkit.training import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    # precision 32: the same model on every CI machine. With "auto", a CPU with native bf16 trained in bf16, and on one thread
    # (an xdist worker) its validation AUC was 0.55 against 0.69 in float32, too little ranking for the calibration tests.
    cfg = TrainConfig(data=str(binary_data), out=str(out), model="cnn", image_size=32, epochs=2, patience=2, batch_size=16,
                      lr=3e-3, cache_dir=str(tmp_path_factory.mktemp("tiny-cache")), augment=AugmentConfig(), precision="32")
    train(cfg)
    return out


def record_weights(run: Path) -> None:
    """Write model.safetensors' SHA-256 into meta.json, as a training that wrote these weights would: for tests of the
    checks behind that hash (damaged, integer or NaN weights in a run whose record is otherwise consistent)."""
    import json

    from cxrkit.record import file_sha256

    meta = json.loads((run / "meta.json").read_text())
    meta["weights_sha256"] = file_sha256(run / "model.safetensors")
    (run / "meta.json").write_text(json.dumps(meta))


def record_calibration(run: Path) -> None:
    """Write calibration.json's SHA-256 into meta.json, as `cxrkit calibrate` would: for tests of the checks behind that
    hash (a damaged or hand-written calibration in a run whose record otherwise names it)."""
    import json

    from cxrkit.record import file_sha256

    meta = json.loads((run / "meta.json").read_text())
    meta["calibration_sha256"] = file_sha256(run / "calibration.json")
    (run / "meta.json").write_text(json.dumps(meta))


def record_decision(run: Path) -> None:
    """Seal meta.json's decision rule as cxrkit's own writes do: for tests that set a threshold or band by hand to stand for
    one cxrkit chose (a hand edit that is not sealed is refused)."""
    import json

    from cxrkit.record.meta import RunMeta

    meta = json.loads((run / "meta.json").read_text())
    meta.pop("decision_sha256", None)
    # read as a run from before the seal (schema 2), which has none to check, to compute the seal it should carry
    meta["decision_sha256"] = RunMeta.from_dict({**meta, "schema_version": 2}).decision_digest()
    (run / "meta.json").write_text(json.dumps(meta))
