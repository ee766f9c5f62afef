"""Export a run's model to ONNX, with its metadata, and prove it computes what PyTorch computes.

The graph is the network alone (normalised images in, logits out; the batch axis is dynamic), so
:class:`cxrkit.run.Run` can run it through ONNX Runtime in place of PyTorch with everything else
unchanged. The metadata (``metadata_props["cxrkit"]``, JSON) holds what a standalone consumer
needs: classes, image size, aspect, intensity mode, mean/std, threshold and rule, calibration.

Exporter choice: the TorchScript-based exporter (``dynamo=False``). torch 2.9+ defaults to the
``torch.export`` exporter, which needs the onnxscript package and traces through dynamo; the
TorchScript one has no extra dependency, handles every model in the registry (including MONAI's
and EfficientNet-Lite's), and the parity check below catches any graph it gets wrong.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from cxrkit.config import ConfigError
from cxrkit.data.spec import is_finite_number
from cxrkit.models.onnx_runtime import INT8_FILE, METADATA_KEY, ONNX_FILE, OnnxModel
from cxrkit.record import file_sha256
from cxrkit.record.lock import run_lock
from cxrkit.run import Run, probabilities

OPSET = 17
PARITY_TOLERANCE = 1e-4


class ExportError(ValueError):
    """Raised when an exported model does not reproduce the PyTorch model's probabilities."""


def sample_inputs(run: Run, n: int = 16, seed: int = 0) -> np.ndarray:
    """uint8 images (n, S, S) at the run's size for the parity check: synthetic radiographs and noise."""
    from cxrkit.data.synthetic import synthetic_cxr

    rng = np.random.default_rng(seed)
    s = run.preprocessing.image_size
    half = n // 2
    cxr = [synthetic_cxr(rng, s, pattern=i % 2) for i in range(half)]
    noise = [rng.integers(0, 256, (s, s), dtype=np.uint8) for _ in range(n - half)]
    return np.stack(cxr + noise)


def onnx_metadata(run: Run) -> dict:
    """What a consumer of the ONNX file needs to feed it and read its output."""
    p = run.preprocessing
    t = run.meta.get("threshold") or {}
    return {
        "format": "cxrkit-onnx-1",
        "input": "float32 (batch, 1, image_size, image_size): uint8 image / 255, then (x - mean) / std",
        "output": "logits (batch, K): binary K=1, P(positive) = sigmoid; multi-class softmax",
        "classes": run.classes, "task": run.task, "positive_class": run.meta.get("positive_class"),
        "image_size": p.image_size, "aspect": p.aspect, "intensity": p.intensity, "crop_border": p.crop_border,
        "mean": p.mean, "std": p.std, "tta": run.tta, "tta_flips": run.tta_flips,
        "threshold": t.get("value"), "threshold_rule": t.get("rule"), "threshold_chosen_on": t.get("chosen_on"),
        "calibration": getattr(run, "calibration", None),
        "model": run.meta["model"], "run": run.path.name, "cxrkit_version": run.meta.get("cxrkit_version"),
        "weights_sha256": run.weights_sha256(),
    }


def _write_metadata(path: Path, meta: dict) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    onnx.save(model, str(path))


def _export_graph(run: Run, path: Path) -> None:
    s = run.preprocessing.image_size
    model = run.model.to(memory_format=torch.contiguous_format).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice of the TorchScript exporter (chosen on purpose, see above)
        torch.onnx.export(model, (torch.zeros(2, 1, s, s),), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    run.model.to(memory_format=torch.channels_last)


def parity(run: Run, path: Path, images: np.ndarray) -> float:
    """Max absolute difference of probabilities between PyTorch and ONNX Runtime, over batch 1 and the whole batch."""
    ort_model = OnnxModel(path)
    x = run.preprocessing(images)
    with torch.inference_mode():
        ref = probabilities(run.model(x.contiguous(memory_format=torch.channels_last)), run.task).numpy()
    got = probabilities(ort_model(x), run.task).numpy()
    one = probabilities(ort_model(x[:1]), run.task).numpy()
    return float(max(np.abs(ref - got).max(), np.abs(ref[:1] - one).max()))


def roc_auc(y: np.ndarray, probs: np.ndarray, task: str) -> float | None:
    """ROC-AUC (binary) or macro one-vs-rest ROC-AUC (multi-class); None when a class is missing."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < probs.shape[1]:
        return None
    return float(roc_auc_score(y, probs[:, 1]) if task == "binary" else roc_auc_score(y, probs, multi_class="ovr"))


def _quantize(run: Run, src: Path, dst: Path) -> dict:
    """Dynamic int8 quantisation of the weights; the cost is measured on the validation split when the data is at hand."""
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    tmp = dst.with_name(dst.name + f".tmp-{os.getpid()}")
    pre = dst.with_name(dst.name + f".pre-{os.getpid()}")
    try:  # both removed however it ends: Ctrl-C during the AUC measurement left the quantised graph under its temporary name
        # Shape inference and graph fusion first, as ONNX Runtime recommends before quantising.
        quant_pre_process(str(src), str(pre))
        quantize_dynamic(str(pre), str(tmp), weight_type=QuantType.QInt8)
        pre.unlink(missing_ok=True)
        report = {"method": "dynamic int8 (onnxruntime.quantization.quantize_dynamic, QInt8 weights)"}
        try:
            from cxrkit.run import load_run_dataset

            ds, _ = load_run_dataset(run, progress=False)
            idx = ds.index("val")
            images, y = np.asarray(ds.images[idx]), ds.labels[idx]
        except Exception as exc:  # the training data may be gone or elsewhere; quantising still works
            report["note"] = f"validation data not available, AUC cost not measured ({exc})"
        else:
            fp32 = run.predict_arrays(images)
            onnx_before = run.onnx
            run.onnx = OnnxModel(tmp)
            try:
                int8 = run.predict_arrays(images)
            finally:
                run.onnx = onnx_before
            a32, a8 = roc_auc(y, fp32, run.task), roc_auc(y, int8, run.task)
            report.update(split="val", n=int(len(y)), auc_fp32=a32, auc_int8=a8,
                          auc_change=None if a32 is None or a8 is None else a8 - a32,
                          max_abs_prob_diff=float(np.abs(fp32 - int8).max()))
        meta = {**onnx_metadata(run), "quantization": report}
        _write_metadata(tmp, meta)
        os.replace(tmp, dst)
        return report
    finally:
        pre.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


def _check_out(out: Path) -> None:
    """Refuse an ``out`` the export cannot or must not replace, before any work: it is renamed over whatever is there."""
    # A run's own files (meta.json, model.safetensors...) were replaced by the ONNX graph, which destroyed the run, and
    # a folder or a missing one failed only after the export, naming the temporary file.
    if out.is_dir():
        raise ValueError(f"{out} is a folder; give the ONNX file to write, e.g. {out / ONNX_FILE}")
    if out.suffix.lower() != ".onnx":
        raise ValueError(f"{out} does not end in .onnx; export writes an ONNX file and never replaces another kind of file "
                         f"(predict and serve use RUN/{ONNX_FILE}, the default)")
    if not out.parent.is_dir():
        raise ValueError(f"{out.parent} does not exist (the folder of {out}); create it first or give another file")


def export_onnx(run_dir: str | Path, out: str | Path | None = None, quantize: str | None = None,
                tolerance: float = PARITY_TOLERANCE) -> dict:
    """Write model.onnx (and with ``quantize="int8"`` model.int8.onnx) into the run; raise :class:`ExportError` on a parity failure.

    Returns ``{"path", "max_abs_diff", "samples", "used_by_run", "quantized"?}``. The file is written under a
    temporary name and renamed only after the parity check passes, so a failed export leaves no
    file that :meth:`Run.load` would pick up.
    """
    if quantize not in (None, "int8"):  # checked first: a bad value must not leave a new model.onnx behind its error
        raise ConfigError(f"quantize must be 'int8' or None, got {quantize!r}")
    if not is_finite_number(tolerance) or tolerance <= 0:
        raise ConfigError(f"tolerance must be a positive number (a probability difference, e.g. 1e-4), got {tolerance!r}")
    if out is not None:
        _check_out(Path(out))
    # Locked like evaluate: the ONNX files are written into the run, and a training into this folder at the same time
    # would replace the weights they were exported from (it is refused, an evaluation is waited for).
    with run_lock(run_dir, "export"):
        run = Run.load(run_dir, engine="torch")
        out = Path(out) if out else run.path / ONNX_FILE
        tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
        try:
            _export_graph(run, tmp)
            _write_metadata(tmp, onnx_metadata(run))
            images = sample_inputs(run)
            diff = parity(run, tmp, images)
            if not diff <= tolerance:
                raise ExportError(f"ONNX export does not match PyTorch: max abs probability difference {diff:.2e} > {tolerance:.0e} "
                                  f"on {len(images)} sample images; the ONNX file was not written")
            os.replace(tmp, out)
        except OSError as exc:  # a full disk said "No space left on device" and no more: which file
            if exc.filename:
                raise
            raise OSError(exc.errno, f"cannot be written ({exc.strerror or exc})", str(out)) from None
        finally:
            tmp.unlink(missing_ok=True)
        # Only RUN/model.onnx is what predict and serve pick up; a copy elsewhere is for other ONNX consumers.
        result = {"path": str(out), "max_abs_diff": diff, "samples": len(images), "used_by_run": out.resolve() == (run.path / ONNX_FILE).resolve()}

        def record(name: str, path: Path) -> None:
            if result["used_by_run"]:  # the files predict and serve will load: meta.json names them by hash
                run.record.onnx_sha256 = {**(run.record.onnx_sha256 or {}), name: file_sha256(path)}
                run.save_record()

        # Recorded as soon as it is in place: stopped during the quantisation, the run held a model.onnx its record did not name.
        record(ONNX_FILE, out)
        if quantize == "int8":
            result["quantized"] = {"path": str(out.with_name(INT8_FILE)), **_quantize(run, out, out.with_name(INT8_FILE))}
            record(INT8_FILE, out.with_name(INT8_FILE))
        return result
