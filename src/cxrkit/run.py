"""A trained run on disk: its model, preprocessing and decision threshold, ready to predict.

``Run.load("runs/tb1").predict_files(["x.png"])`` is the Python API under ``cxrkit predict``.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from cxrkit.data.decode import ImageDecodeError
from cxrkit.data.preprocess import Preprocessing
from cxrkit.models.registry import build_model

MODEL_FILE = "model.safetensors"
META_FILE = "meta.json"
SHIFT_FILE = "shift_reference.json"
ENGINES = ("auto", "torch", "onnx", "onnx-int8")
CALIBRATION_FILE = "calibration.json"


class RunError(ValueError):
    """Raised when a run folder is missing or incomplete."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file via a temporary file and rename, so a crash never leaves half a file."""
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_csv(path: Path, rows: list[dict], fieldnames: list[str]) -> None:
    """Write dict rows as CSV via a temporary file and rename, so readers never see half a file."""
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fieldnames)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def save_weights(model: nn.Module, path: Path) -> None:
    """Save a model's state dict as safetensors, atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    save_file(state, str(tmp))
    os.replace(tmp, path)


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Turn model outputs into per-class probabilities, (B, K); a binary model gives [P(neg), P(pos)], a
    multi-label model one independent sigmoid probability per finding."""
    logits = logits.float()
    if task == "multilabel":
        return torch.sigmoid(logits)
    if task == "binary":
        p = torch.sigmoid(logits[:, 0])
        return torch.stack([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


@dataclass
class Run:
    """A loaded run: metadata, model in eval mode and its preprocessing."""

    path: Path
    meta: dict
    model: nn.Module
    preprocessing: Preprocessing
    # ONNX Runtime model used instead of ``model`` for predictions (None: PyTorch); see :meth:`load`.
    onnx: Any = None
    calibration_data: dict | None = None

    @classmethod
    def load(cls, path: str | Path, engine: str = "auto") -> Run:
        """Load a run folder written by ``cxrkit train``; weights are read with safetensors (no pickle).

        ``engine``: ``auto`` predicts with ONNX Runtime when ``cxrkit export`` wrote model.onnx for
        these weights and with PyTorch otherwise; ``torch``, ``onnx`` and ``onnx-int8`` force one.
        The PyTorch model is loaded in every case (Grad-CAM needs its gradients).
        """
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / META_FILE).is_file() or not (path / MODEL_FILE).is_file():
            raise RunError(f"{path} is not a cxrkit run (needs {META_FILE} and {MODEL_FILE}); train one with `cxrkit train`")
        meta = json.loads((path / META_FILE).read_text())
        options = meta.get("model_options", {"image_size": meta["preprocessing"]["image_size"]})
        model = build_model(meta["model"], meta["num_outputs"], **options)
        model.load_state_dict(load_file(str(path / MODEL_FILE)))
        # channels_last changes only the memory layout (same fp32 arithmetic): 1.4-3x faster CPU inference
        # measured on the Kermany runs (benchmarks in the README).
        model = model.to(memory_format=torch.channels_last).eval()
        cal_file = path / CALIBRATION_FILE
        calibration = json.loads(cal_file.read_text()) if cal_file.is_file() else None
        run = cls(path, meta, model, Preprocessing(**meta["preprocessing"]), calibration_data=calibration)
        run.onnx = run._load_onnx(engine)
        return run

    def _load_onnx(self, engine: str):
        """The ONNX Runtime model the engine asks for, or None for PyTorch."""
        from cxrkit.models.onnx_runtime import INT8_FILE, ONNX_FILE, OnnxModel, file_sha256, read_metadata

        if engine not in ENGINES:
            raise RunError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        if engine == "torch":
            return None
        file = self.path / (INT8_FILE if engine == "onnx-int8" else ONNX_FILE)
        if not file.is_file():
            if engine == "auto":
                return None
            raise RunError(f"{file} does not exist; write it with `cxrkit export {self.path} --format onnx"
                           f"{' --quantize int8' if engine == 'onnx-int8' else ''}`")
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            if engine == "auto":
                return None
            raise RunError("the onnx engine needs onnxruntime: pip install onnxruntime") from exc
        if read_metadata(file).get("weights_sha256") != file_sha256(self.path / MODEL_FILE):
            if engine == "auto":
                return None  # the weights changed after export: the ONNX file is stale, PyTorch is right
            raise RunError(f"{file} was exported from other weights than {MODEL_FILE}; export again")
        return OnnxModel(file)

    @property
    def engine(self) -> str:
        """Which engine predicts: ``torch`` or the ONNX file's name."""
        return "torch" if self.onnx is None else f"onnxruntime ({self.onnx.path.name})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a normalised batch (B, 1, S, S), by ONNX Runtime when loaded, else PyTorch."""
        if self.onnx is not None:
            return self.onnx(x)
        return self.model(x.contiguous(memory_format=torch.channels_last))

    @property
    def calibration(self) -> dict | None:
        """The probability calibration fitted on validation data (``cxrkit calibrate``), as stored in
        calibration.json, or None when the run's probabilities are the model's own."""
        return self.calibration_data

    @property
    def classes(self) -> list[str]:
        """Class names; for a binary task ``[negative, positive]``."""
        return list(self.meta["classes"])

    @property
    def task(self) -> str:
        """``binary``, ``multiclass`` or ``multilabel``."""
        return self.meta["task"]

    @property
    def threshold(self) -> float | None:
        """Decision threshold on P(positive) chosen on validation data (binary tasks only)."""
        t = self.meta.get("threshold")
        return None if t is None else float(t["value"])

    @property
    def thresholds(self) -> np.ndarray | None:
        """Per-finding decision thresholds of a multi-label run, chosen on validation data (class order)."""
        t = self.meta.get("thresholds")
        return None if t is None else np.array([float(t[c]["value"]) for c in self.classes])

    @property
    def tta(self) -> bool:
        """Whether predictions average test-time augmented views (chosen at training time)."""
        return bool(self.meta.get("tta", False))

    @torch.inference_mode()
    def predict_arrays(self, images: np.ndarray, batch_size: int = 64, tta: bool | None = None, calibrated: bool = True) -> np.ndarray:
        """Probabilities (N, K) for uint8 images (N, S, S) already decoded at the run's size.

        ``tta`` (default: the run's setting) averages the probabilities of the views in
        :data:`cxrkit.data.augment.TTA_VIEWS`. The run's calibration, when it has one, is applied
        unless ``calibrated=False`` (the model's own probabilities, which calibration is fitted on).
        """
        from cxrkit.data.augment import tta_views

        use_tta = self.tta if tta is None else tta
        out = []
        for i in range(0, len(images), batch_size):
            unit = self.preprocessing.to_unit(np.asarray(images[i : i + batch_size]))
            views = tta_views(unit) if use_tta else [unit]
            p = torch.stack([
                probabilities(self.forward(self.preprocessing.normalize(v)), self.task)
                for v in views
            ]).mean(0)
            out.append(p.numpy())
        k = len(self.classes)
        probs = np.concatenate(out) if out else np.zeros((0, k))
        return self.apply_calibration(probs) if calibrated else probs

    def apply_calibration(self, probs: np.ndarray) -> np.ndarray:
        """The run's calibration (when it has one) applied to the model's own probabilities."""
        if self.calibration_data is None or not len(probs):
            return probs
        from cxrkit.evaluation.calibration import Calibration

        return Calibration.from_dict(self.calibration_data).apply(probs)

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Predicted class indices: P(positive) >= threshold for binary, the most probable class for
        multi-class; for multi-label an (N, K) 0/1 matrix, finding k present when P_k >= its threshold."""
        if self.task == "multilabel":
            return (probs >= self.thresholds[None, :]).astype(int)
        if self.task == "binary":
            return (probs[:, 1] >= self.threshold).astype(int)
        return probs.argmax(axis=1)

    def decision_labels(self, probs: np.ndarray) -> list[str]:
        """The decision for each row as text: the class name, or the findings present joined by ``|``
        ("" when none is) for a multi-label run."""
        d = self.decide(probs)
        if self.task == "multilabel":
            return ["|".join(c for c, v in zip(self.classes, row) if v) for row in d]
        return [self.classes[i] for i in d]

    def shift_reference(self) -> dict | None:
        """Statistics of the training images saved at training time (None for runs made before they existed)."""
        path = self.path / SHIFT_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def iter_predict(
        self, paths: list[Path], batch_size: int = 64, workers: int = 4
    ) -> Iterator[tuple[list[int], np.ndarray, np.ndarray, dict[int, str]]]:
        """Decode and classify files batch by batch: yields (indices decoded, their probabilities, their uint8 images, {index: error}).

        ``workers`` threads decode the next batch while the model runs on this one (Pillow, NumPy and
        pydicom release the GIL for most of the work; threads, not processes, because PyTorch in
        forked workers can deadlock). ``workers=0`` decodes in the calling thread.
        """

        def decode(j: int) -> tuple[int, np.ndarray | None, str | None]:
            try:
                return j, self.preprocessing.load(paths[j]), None
            except ImageDecodeError as exc:
                return j, None, str(exc)

        starts = range(0, len(paths), batch_size)
        if workers <= 0:
            submit = lambda s: [decode(j) for j in range(s, min(s + batch_size, len(paths)))]
            pool = None
        else:
            pool = ThreadPoolExecutor(workers, thread_name_prefix="cxrkit-decode")
            submit = lambda s: [pool.submit(decode, j) for j in range(s, min(s + batch_size, len(paths)))]
        try:
            ahead = submit(0) if len(paths) else []
            for k, _ in enumerate(starts):
                current = ahead
                ahead = submit(starts[k + 1]) if k + 1 < len(starts) else []
                results = current if pool is None else [f.result() for f in current]
                errors = {j: err for j, _, err in results if err is not None}
                good = [(j, img) for j, img, _ in results if img is not None]
                where = [j for j, _ in good]
                arr = np.stack([img for _, img in good]) if good else np.zeros((0, self.preprocessing.image_size, self.preprocessing.image_size), np.uint8)
                probs = self.predict_arrays(arr, batch_size) if good else np.zeros((0, len(self.classes)))
                yield where, probs, arr, errors
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def predict_files(
        self, paths: list[Path], batch_size: int = 64, progress: bool = False, on_batch: Callable[[np.ndarray], None] | None = None,
        workers: int = 4,
    ) -> tuple[np.ndarray, dict[int, str]]:
        """Decode and classify files; returns probabilities (NaN rows for failures) and {index: error}.

        ``on_batch`` receives each decoded uint8 batch (the shift check collects statistics there).
        """
        probs = np.full((len(paths), len(self.classes)), np.nan)
        errors: dict[int, str] = {}
        with tqdm(total=len(paths), desc="predicting", unit="img", disable=not progress or None) as bar:
            for where, p, arr, errs in self.iter_predict(paths, batch_size, workers):
                probs[where] = p
                errors.update(errs)
                if on_batch is not None and len(arr):
                    on_batch(arr)
                bar.update(len(where) + len(errs))
        return probs, errors
