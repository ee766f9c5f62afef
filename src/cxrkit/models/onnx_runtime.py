"""A run's exported ONNX model executed by ONNX Runtime, as a drop-in for the PyTorch model's forward pass.

The ONNX graph is the network alone: normalised images (B, 1, S, S) in, logits out. Everything
around it (decoding, normalisation, test-time views, probabilities, calibration, threshold) stays in
:class:`cxrkit.run.Run`, so both engines share one path and cannot drift apart.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
METADATA_KEY = "cxrkit"


def read_metadata(path: Path | bytes) -> dict:
    """The cxrkit metadata stored in an exported ONNX file, or in its bytes (empty when there is none)."""
    import onnx

    model = onnx.load_model_from_string(path) if isinstance(path, bytes) else onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    return json.loads(props[METADATA_KEY]) if METADATA_KEY in props else {}


class OnnxModel:
    """Callable like the PyTorch model: a float tensor (B, 1, S, S) in, a logits tensor (B, K) out."""

    def __init__(self, path: str | Path, threads: int | None = None, data: bytes | None = None) -> None:
        """``data``: the file's bytes when the caller already read (and checked) them, so the session runs what was checked."""
        import onnxruntime as ort

        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Same thread count as PyTorch, so the two engines are compared (and share the cores) fairly.
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        # No busy-waiting between runs: spinning threads would take the cores that decode the next images.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(data if data is not None else str(self.path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a normalised batch; a session run is thread-safe in ONNX Runtime."""
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: arr})[0])
