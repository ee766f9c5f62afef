"""ONNX export (parity, metadata, engines) and resumable, atomic batch prediction to CSV."""

import csv
import json

import numpy as np
import pytest

from cxrkit.cli import main
from cxrkit.run import Run, RunError

from .conftest import record_weights

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def test_export_matches_pytorch_and_carries_metadata(tiny_run, capsys):
    assert main(["export", str(tiny_run), "--format", "onnx"]) == 0
    assert "matches PyTorch" in capsys.readouterr().out
    from cxrkit.models.onnx_runtime import read_metadata

    meta = read_metadata(tiny_run / "model.onnx")
    run_meta = json.loads((tiny_run / "meta.json").read_text())
    assert meta["classes"] == ["healthy", "tb"] and meta["image_size"] == 32
    assert meta["mean"] == run_meta["preprocessing"]["mean"] and meta["std"] == run_meta["preprocessing"]["std"]
    assert meta["threshold"] == run_meta["threshold"]["value"] and meta["threshold_rule"] == "youden"
    assert meta["intensity"] == "none" and "calibration" in meta

    torch_run, ort_run = Run.load(tiny_run, engine="torch"), Run.load(tiny_run)
    assert torch_run.onnx is None and ort_run.onnx is not None and "onnxruntime" in ort_run.engine
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (37, 32, 32), dtype=np.uint8)  # odd batch: the batch axis must be dynamic
    diff = np.abs(torch_run.predict_arrays(images, batch_size=16) - ort_run.predict_arrays(images, batch_size=16))
    assert diff.max() <= 1e-4
    np.testing.assert_array_equal(torch_run.decide(torch_run.predict_arrays(images)), ort_run.decide(ort_run.predict_arrays(images)))


def test_parity_failure_is_loud_and_writes_nothing(tiny_run, tmp_path, monkeypatch):
    from cxrkit.export import onnx as onnx_export

    monkeypatch.setattr(onnx_export, "parity", lambda run, path, images: 0.5)  # as if the graph had drifted
    target = tmp_path / "m.onnx"
    with pytest.raises(onnx_export.ExportError, match="does not match PyTorch"):
        onnx_export.export_onnx(tiny_run, target)
    assert not target.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("options, message", [({"quantize": "int4"}, "quantize must be 'int8' or None"),
                                              ({"quantize": "INT8 "}, "quantize must be"),
                                              ({"tolerance": -1.0}, "tolerance must be a positive number"),
                                              ({"tolerance": float("nan")}, "tolerance must be"),
                                              ({"tolerance": "1e-4"}, "tolerance must be")])
def test_bad_export_options_are_refused_before_anything_is_written(tiny_run, tmp_path, options, message):
    from cxrkit.config import ConfigError
    from cxrkit.export.onnx import export_onnx

    target = tmp_path / "m.onnx"
    with pytest.raises(ConfigError, match=message):
        export_onnx(tiny_run, target, **options)
    assert not list(tmp_path.iterdir())  # before: an unknown quantize raised only after model.onnx was written


@pytest.mark.parametrize("target, message", [("meta.json", "does not end in .onnx"), ("model.safetensors", "does not end in .onnx"),
                                             ("plots", "is a folder"), ("missing/m.onnx", "does not exist")])
def test_export_out_that_must_not_be_replaced_is_refused_first(target, message, tiny_run, tmp_path, capsys):
    # --out RUN/meta.json (or the weights) was replaced by the ONNX graph, destroying the run, with "predict and serve now
    # use it"; a folder or a missing folder failed only after the export, naming the temporary file.
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoint", "model.onnx", "model.int8.onnx"))
    (run / "plots").mkdir(exist_ok=True)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".cxrkit.lock"}
    assert main(["export", str(run), "--out", str(run / target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {run / target}") or err.startswith(f"error: {run / 'missing'} does not exist"), err
    assert message in err and "\n" not in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".cxrkit.lock"} == before


def test_export_elsewhere_says_predict_does_not_use_it(tiny_run, tmp_path, capsys):
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "copy.onnx")]) == 0
    out = capsys.readouterr().out
    assert f"not used by predict and serve, which read {tiny_run / 'model.onnx'}" in out and "now use it" not in out


def test_stale_onnx_is_ignored_by_auto_and_refused_when_forced(tiny_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    assert main(["export", str(copy)]) == 0
    weights = copy / "model.safetensors"
    from safetensors.torch import load_file, save_file

    state = load_file(str(weights))
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, str(weights))  # "retrained"
    record_weights(copy)  # as the retraining's meta.json would
    assert Run.load(copy).onnx is None
    with pytest.raises(RunError, match="other weights"):
        Run.load(copy, engine="onnx")
    with pytest.raises(RunError, match="does not exist"):
        Run.load(copy, engine="onnx-int8")


def test_an_onnx_file_changed_or_damaged_after_export_is_not_used(tiny_run, tmp_path):
    import shutil

    from onnx import numpy_helper

    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    assert main(["export", str(copy)]) == 0
    assert set(json.loads((copy / "meta.json").read_text())["onnx_sha256"]) == {"model.onnx"}
    assert Run.load(copy).onnx is not None
    # Weights halved with the metadata left as exported (an optimiser, an edit): it was used, and healthy images came back tb.
    model = onnx.load(str(copy / "model.onnx"))
    init = next(i for i in model.graph.initializer if numpy_helper.to_array(i).ndim == 4)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 0.5, init.name))
    onnx.save(model, str(copy / "model.onnx"))
    assert Run.load(copy).onnx is None  # auto: PyTorch answers
    with pytest.raises(RunError, match="model.onnx is not the file `cxrkit export` wrote"):
        Run.load(copy, engine="onnx")
    # Damaged bytes were an "unexpected DecodeError ... a bug in cxrkit" even with --engine auto; an empty file "other weights".
    meta = json.loads((copy / "meta.json").read_text())
    meta.pop("onnx_sha256")  # as a run exported before the hash
    (copy / "meta.json").write_text(json.dumps(meta))
    (copy / "model.onnx").write_bytes(b"not a graph" * 50)
    assert Run.load(copy).onnx is None
    with pytest.raises(RunError, match="model.onnx is not a readable ONNX file"):
        Run.load(copy, engine="onnx")
    (copy / "model.onnx").write_bytes(b"")
    with pytest.raises(RunError, match="model.onnx is empty; export again"):
        Run.load(copy, engine="onnx")


def test_int8_export_reports_its_auc_cost(tiny_run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    assert main(["export", str(copy), "--quantize", "int8"]) == 0
    from cxrkit.models.onnx_runtime import read_metadata

    q = read_metadata(copy / "model.int8.onnx")["quantization"]
    assert q["split"] == "val" and q["n"] > 0 and abs(q["auc_change"] - (q["auc_int8"] - q["auc_fp32"])) < 1e-12
    assert "validation ROC-AUC" in capsys.readouterr().out
    assert Run.load(copy, engine="onnx-int8").onnx.path.name == "model.int8.onnx"


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_csv_resumes_to_the_same_result(tiny_run, binary_data, tmp_path, capsys):
    folder = tmp_path / "incoming"
    folder.mkdir()
    for p in sorted((binary_data / "test").rglob("*.png"))[:24]:
        (folder / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    from .test_dicom import ramp, write_dicom

    write_dicom(folder / "zz_scan.dcm", ramp(48))  # DICOM files are listed and read like the PNGs
    full = tmp_path / "full.csv"
    assert main(["predict", str(tiny_run), str(folder), "--out", str(full), "--engine", "torch", "--batch-size", "8"]) == 0
    rows = _read(full)
    assert len(rows) == 26 and [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    assert rows[-1]["path"].endswith("zz_scan.dcm") and rows[-1]["error"] == "" and rows[-1]["prediction"] in ("healthy", "tb")
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 1 and bad[0]["path"].endswith("broken.png") and bad[0]["prob_tb"] == "" and bad[0]["prediction"] == ""
    good = [r for r in rows if not r["error"]]
    assert all(abs(float(r["prob_healthy"]) + float(r["prob_tb"]) - 1) < 1e-5 and r["prediction"] in ("healthy", "tb") for r in good)

    # An interrupted job: a checkpoint holding the first 9 rows (a failed row is retried on resume).
    partial = tmp_path / "partial.csv"
    with open(partial, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows[:9])
    capsys.readouterr()
    assert main(["predict", str(tiny_run), str(folder), "--out", str(partial), "--engine", "torch", "--batch-size", "8"]) == 0
    assert "8 already in" in capsys.readouterr().out  # broken.png sorts first: its row is retried, not skipped
    resumed = _read(partial)
    assert [r["path"] for r in resumed] == [r["path"] for r in rows]
    for a, b in zip(resumed, rows):
        assert a["prediction"] == b["prediction"] and a["error"] == b["error"]
        if not a["error"]:
            assert abs(float(a["prob_tb"]) - float(b["prob_tb"])) <= 1e-5
    assert not list(tmp_path.glob("*.tmp-*")), "atomic writes leave no temporary files"


def test_predict_refuses_an_output_of_another_model(tiny_run, binary_data, tmp_path):
    out = tmp_path / "other.csv"
    out.write_text("path,prob_a,prob_b,prediction,error\n")
    assert main(["predict", str(tiny_run), str(binary_data / "test" / "tb"), "--out", str(out)]) == 2
    assert out.read_text() == "path,prob_a,prob_b,prediction,error\n"


def test_parallel_decoding_gives_the_same_probabilities(tiny_run, binary_data):
    run = Run.load(tiny_run, engine="torch")
    paths = sorted((binary_data / "test").rglob("*.png"))[:20]
    serial, e0 = run.predict_files(paths, batch_size=6, workers=0)
    threaded, e1 = run.predict_files(paths, batch_size=6, workers=3)
    assert not e0 and not e1
    np.testing.assert_array_equal(serial, threaded)


def test_an_interrupted_int8_export_leaves_no_temporary_file_and_a_recorded_model_onnx(tiny_run, tmp_path, monkeypatch, capsys):
    import errno
    import shutil

    import cxrkit.export.onnx as onnx_export

    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy, ignore=shutil.ignore_patterns("checkpoint", "*.onnx"))
    monkeypatch.setattr(onnx_export, "roc_auc", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))  # Ctrl-C while measuring
    assert main(["export", str(copy), "--quantize", "int8"]) == 130
    assert sorted(p.name for p in copy.glob("model*.onnx*")) == ["model.onnx"]  # model.int8.onnx.tmp-PID was left behind
    # the model.onnx in place is the one its record names (it was written, the record not yet)
    assert Run.load(copy, engine="onnx").engine == "onnxruntime (model.onnx)"
    assert set(json.loads((copy / "meta.json").read_text())["onnx_sha256"]) == {"model.onnx"}
    monkeypatch.undo()
    capsys.readouterr()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx_export, "_export_graph", full)
    assert main(["export", str(copy), "--out", str(tmp_path / "elsewhere.onnx")]) == 2
    # was "error: No space left on device", naming no file
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'elsewhere.onnx'}: cannot be written (No space left on device)"
