"""`cxrkit demo` replaces only what an earlier demo wrote: a user's own files in its --out are never deleted."""

from __future__ import annotations

import pytest

from cxrkit.cli import _check_demo_folder, main
from cxrkit.data.synthetic import is_demo_dataset, make_synthetic_dataset


def _demo_data(root):
    return make_synthetic_dataset(root, n_per_class=20, size=32, splits={"train": 0.8, "test": 0.2})


def test_the_demo_dataset_is_recognised_and_anything_else_is_not(tmp_path):
    data = _demo_data(tmp_path / "data")
    assert is_demo_dataset(data)
    (data / "train" / "tb" / "patient_17.png").write_bytes(b"x")
    assert not is_demo_dataset(data)
    other = make_synthetic_dataset(tmp_path / "flat", n_per_class=20, size=32)  # no split folders: not what the demo writes
    assert not is_demo_dataset(other)
    assert not is_demo_dataset(tmp_path / "missing")


def test_a_users_data_folder_in_out_is_never_deleted(tmp_path, capsys):
    own = tmp_path / "out" / "data" / "tb"
    own.mkdir(parents=True)
    (own / "scan1.png").write_bytes(b"mine")
    for extra in ([], ["--overwrite"]):
        assert main(["demo", "--out", str(tmp_path / "out"), "--epochs", "1", *extra]) == 2
        assert "did not write" in capsys.readouterr().err
        assert (own / "scan1.png").read_bytes() == b"mine"


def test_other_files_or_another_run_in_out_need_overwrite(tmp_path):
    out = tmp_path / "project"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="already holds files"):
        _check_demo_folder(out, out / "data", overwrite=False)
    _check_demo_folder(out, out / "data", overwrite=True)

    run = tmp_path / "run"
    _demo_data(run / "data")
    (run / "config.yaml").write_text("data: /hospital/tb_images\nmodel: cnn\n")
    with pytest.raises(FileExistsError, match="already holds a run"):
        _check_demo_folder(run, run / "data", overwrite=False)


def test_an_earlier_demo_is_replaced_without_asking(tmp_path):
    out = tmp_path / "demo"
    data = _demo_data(out / "data")
    (out / "cache").mkdir()
    _check_demo_folder(out, data, overwrite=False)  # stopped before training: data and cache only
    (out / "config.yaml").write_text(f"data: {data}\nmodel: cnn\n")
    (out / "meta.json").write_text("{}")
    _check_demo_folder(out, data, overwrite=False)
    (out / "config.yaml").write_text("data: demo/data\nmodel: cnn\n")  # written relative to another working folder
    _check_demo_folder(out, data, overwrite=False)
