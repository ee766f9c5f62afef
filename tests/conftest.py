"""Shared fixtures: tiny synthetic datasets written to temporary folders, and an isolated cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cxrkit.data.synthetic import make_synthetic_dataset

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
