"""A trained run on disk, loaded: its validated record, model, preprocessing and decision rule, ready to predict.

``cxrkit.load("runs/tb1").predict("x.png")`` is the Python API; ``Run.predict_files`` is what ``cxrkit
predict`` runs. The folder's format belongs to :mod:`cxrkit.record`; this module adds the model.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from cxrkit.config import ConfigError, TrainConfig
from cxrkit.data.decode import ImageDecodeError
from cxrkit.data.preprocess import Preprocessing
from cxrkit.models.registry import MODELS, build_model
from cxrkit.record import (
    CALIBRATION_FILE,
    CONFIG_FILE,
    HISTORY_FILE,
    META_FILE,
    MODEL_FILE,
    SHIFT_FILE,
    RunMeta,
    RunRecordError,
    read_meta,
    write_meta,
)
from cxrkit.record.files import CHECKPOINT_DIR, ENGINES, parse_json, replacing
from cxrkit.tasks import Task, get_task

REFER = "refer"  # the decision inside a referral band: a reader decides


class RunError(RunRecordError):
    """Raised when a run folder is missing, incomplete or inconsistent (a one-line message)."""


# The safetensors header's metadata keys: the class names, in output order, that the weights were trained for, and the
# inputs they were trained on (preprocessing, test-time views).
WEIGHTS_CLASSES_KEY = "cxrkit_classes"
WEIGHTS_INPUTS_KEY = "cxrkit_inputs"


def weights_inputs(preprocessing: Any, tta: bool, tta_flips: bool) -> dict:
    """What the weights expect of their inputs, as recorded in their header: the preprocessing and the test-time views."""
    return {"preprocessing": preprocessing.to_dict(), "tta": bool(tta), "tta_flips": bool(tta_flips)}


def save_weights(model: nn.Module, path: Path, classes: list[str] | None = None, inputs: dict | None = None) -> None:
    """Save a model's state dict as safetensors, atomically (a failed write keeps the previous file; see :func:`replacing`),
    with ``classes`` (its outputs' names, in order) and ``inputs`` (:func:`weights_inputs`) in the file's header."""
    import json

    from safetensors import SafetensorError
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {}
    if classes is not None:
        metadata[WEIGHTS_CLASSES_KEY] = json.dumps(list(classes))
    if inputs is not None:
        metadata[WEIGHTS_INPUTS_KEY] = json.dumps(inputs, sort_keys=True)
    metadata = metadata or None
    with replacing(Path(path)) as tmp:
        try:
            save_file(state, str(tmp), metadata=metadata)
        except SafetensorError as exc:  # its I/O errors (a full disk) are not OSErrors
            raise OSError(errno.EIO, " ".join(str(exc).split())) from None
        _canonical_header(Path(tmp))


def _canonical_header(path: Path) -> None:
    """Rewrite a safetensors file's JSON header with sorted keys: the writer keeps the metadata in a hash map, so two runs
    with identical tensors wrote files whose bytes (and SHA-256, the run's weights id) differed."""
    import json

    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        if len(text) > n:  # never longer than the writer's compact header; if it were, the data would have to move
            return
        f.seek(8)
        f.write(text + b" " * (n - len(text)))  # the same length: the tensors' offsets (from the header's end) stay valid


def _read_calibration(path: Path, sha256: str | None) -> Any:
    """calibration.json's content (None when absent), read once and checked against meta.json's record of it."""
    import hashlib

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = None
    except OSError as exc:
        raise RunError(f"{path} cannot be read ({exc.strerror or exc})") from None
    if sha256 is not None:
        if data is not None and sha256 == "none":
            raise RunError(f"{path} is there but {path.parent / META_FILE} records no calibration: a `cxrkit calibrate` is writing it, "
                           f"or it was copied in; run the command again, or remove it with `cxrkit calibrate {path.parent} --remove`")
        if sha256 != "none" and (data is None or hashlib.sha256(data).hexdigest() != sha256):
            what = "is missing" if data is None else "is not the calibration it was written with"
            raise RunError(f"{path} {what} ({path.parent / META_FILE} records SHA-256 {sha256[:12]}…): a `cxrkit calibrate` may be "
                           f"updating the run; run the command again, or `cxrkit calibrate {path.parent} --remove` and calibrate again")
    if data is None:
        return None
    try:
        return parse_json(data, path)
    except RunRecordError as exc:
        raise RunError(str(exc)) from None


def _weights_header(data: bytes) -> tuple[list[str] | None, dict | None]:
    """The class names and the inputs recorded in a safetensors file's header (None where absent or unreadable)."""
    import json

    try:
        size = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError):
        return None, None
    try:
        classes = json.loads(meta[WEIGHTS_CLASSES_KEY]) if WEIGHTS_CLASSES_KEY in meta else None
    except (ValueError, TypeError):
        classes = None
    try:
        inputs = json.loads(meta[WEIGHTS_INPUTS_KEY]) if WEIGHTS_INPUTS_KEY in meta else None
    except (ValueError, TypeError):
        inputs = None
    return (classes if isinstance(classes, list) and all(isinstance(c, str) for c in classes) else None,
            inputs if isinstance(inputs, dict) else None)


def _input_differences(stored: dict, given: dict, prefix: str = "") -> list[str]:
    """``key: meta.json's value vs the weights'`` for every recorded input that differs."""
    out = []
    for key in sorted(set(stored) | set(given)):
        a, b = given.get(key), stored.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _input_differences(b, a, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {a!r} (the weights: {b!r})")
    return out


def load_weights(model: nn.Module, path: Path, sha256: str | None = None, classes: list[str] | None = None,
                 inputs: dict | None = None) -> Any:
    """Load safetensors weights into ``model`` (no pickle); a damaged file, one for another model, when ``sha256`` is given
    any other file than the one it names, and when ``classes`` or ``inputs`` are given weights whose header records other
    class names (or another order) or other inputs (:func:`weights_inputs`) are a :class:`RunError`. Returns the SHA-256
    hash object of the bytes loaded."""
    import hashlib

    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    try:
        data = Path(path).read_bytes()  # read once: the bytes checked are the bytes loaded, even while the file is replaced
    except OSError as exc:
        raise RunError(f"{path} cannot be read ({exc.strerror or exc})") from None
    loaded = hashlib.sha256(data)
    actual = loaded.hexdigest()
    if sha256 is not None and actual != sha256:
        raise RunError(f"{path} is not the weights file {Path(path).parent / META_FILE} was written with (SHA-256 "
                       f"{actual[:12]}…, recorded {sha256[:12]}…): a training is rewriting the run, or "
                       "the file was replaced; wait for the training to finish, or copy whole run folders, never the weights alone")
    stored, stored_inputs = _weights_header(data)
    if classes is not None and stored is not None and stored != list(classes):
        # The weights' hash binds them to meta.json, but not meta.json's class names: swapped by hand, every decision was flipped.
        raise RunError(f"{Path(path).parent / META_FILE} names the classes {list(classes)}, but {path} was trained for {stored} "
                       "(in that order): meta.json's classes were edited, or the weights come from another run; restore them")
    differ = _input_differences(stored_inputs, inputs) if inputs is not None and stored_inputs is not None else []
    if differ:
        # Nor its preprocessing: a std edited from 0.20 to 0.5 turned every healthy test image into a tb call.
        raise RunError(f"{Path(path).parent / META_FILE} has {'; '.join(differ)}: meta.json was edited, or the weights come from "
                       "another run; restore them")
    try:
        state = load_bytes(data)
    except (SafetensorError, OSError, ValueError) as exc:
        raise RunError(f"{path} is not a readable safetensors file ({str(exc).splitlines()[0][:120]})") from None
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    # load_state_dict casts silently: int or bool weights where the model has floats become 0s and 1s, a constant answer.
    kind = [k for k in own if k in state and state[k].is_floating_point() != own[k].is_floating_point()]
    if missing or unexpected or wrong or kind:
        parts = []
        if kind:
            parts.append(f"{len(kind)} tensor(s) of another kind of number (first {kind[0]}: {state[kind[0]].dtype} "
                         f"vs {own[kind[0]].dtype})")
        if wrong:
            parts.append(f"{len(wrong)} tensor(s) of another shape (first {wrong[0]}: {tuple(state[wrong[0]].shape)} "
                         f"vs {tuple(own[wrong[0]].shape)}; do the classes or image size in meta.json match?)")
        if missing:
            parts.append(f"{len(missing)} missing (first {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first {unexpected[0]})")
        raise RunError(f"{path} does not hold weights for this run's model: " + "; ".join(parts))
    # NaN weights give NaN probabilities, and NaN >= threshold is False: every image would be called negative.
    from cxrkit.models.torch_files import nonfinite_tensors

    bad = nonfinite_tensors(state)
    if bad:
        raise RunError(f"{path} holds NaN or infinite values in {len(bad)} tensor(s) (first {bad[0]}): the file is "
                       "damaged or the training diverged; retrain or restore the file")
    model.load_state_dict(state)
    return loaded


def _missing_files(path: Path) -> str:
    """Why a folder without meta.json or model.safetensors is no usable run: not a run at all, or one whose training has
    not finished (meta.json is written at the end; a folder copied while training ran has weights and history only)."""
    for name in (META_FILE, MODEL_FILE):  # a folder or a link loop of that name: "lacks it ... it holds it" said nothing
        if os.path.lexists(path / name) and not (path / name).is_file():
            kind = "a folder" if (path / name).is_dir() else "a link to nothing (or a loop)" if (path / name).is_symlink() else "not a file"
            return f"{path / name} is {kind}, not the run's {name}; restore the file from a copy of the run"
    missing = " and ".join(n for n in (META_FILE, MODEL_FILE) if not (path / n).is_file())
    started = [n for n in (MODEL_FILE, CONFIG_FILE, HISTORY_FILE, CHECKPOINT_DIR) if (path / n).is_file() or (path / n).is_dir()]
    if not started:
        return f"{path} is not a cxrkit run (needs {META_FILE} and {MODEL_FILE}); train one with `cxrkit train`"
    try:
        epochs = len((path / HISTORY_FILE).read_text().splitlines()) - 1
    except OSError:
        epochs = 0
    return (f"{path} lacks {missing}: its training has not finished (it holds {', '.join(started)}"
            + (f"; {epochs} epoch(s) in {HISTORY_FILE}" if epochs > 0 else "") + "), or the folder was copied while it ran; "
            f"wait for it, or finish it with `cxrkit train DATA --out {path} --resume`")


def _check_config_agrees(path: Path, record: RunMeta) -> None:
    """Refuse a run whose config.yaml and meta.json disagree on a setting both hold: the folder was edited or mixes two
    runs' files, and predicting would silently use meta.json's (another image size, another model) over what was trained."""
    import yaml

    try:
        raw = yaml.safe_load((path / CONFIG_FILE).read_text())
        cfg = TrainConfig.from_dict(raw)
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ConfigError):
        # Unreadable: nothing to compare with. Prediction never reads config.yaml; the commands that do (evaluate,
        # calibrate, train --resume) say what is wrong with it.
        return
    pre, options = record.preprocessing, record.model_options
    pairs = [  # (key in config.yaml, its value, key in meta.json, its value); keys a run's config.yaml lacks (older runs) are skipped
        ("image_size", cfg.image_size, "preprocessing.image_size", pre.image_size),
        ("aspect", cfg.aspect, "preprocessing.aspect", pre.aspect),
        ("crop_border", cfg.crop_border, "preprocessing.crop_border", pre.crop_border),
        ("model", cfg.model, "model", record.model),
        ("width", cfg.width, "model_options.width", options.get("width")),
        ("dropout", cfg.dropout, "model_options.dropout", options.get("dropout")),
        ("tta", cfg.tta, "tta", record.tta),
    ]
    if cfg.task != "auto":  # auto was resolved from the data into meta.json's task
        pairs.append(("task", cfg.task, "task", record.task))
    if cfg.intensity != "auto":  # auto was resolved by the exposure probe into meta.json's preprocessing
        pairs.append(("intensity", cfg.intensity, "preprocessing.intensity", pre.intensity))
    for key, given, meta_key, stored in pairs:
        if key in raw and given != stored:
            raise RunError(f"{path / META_FILE} has {meta_key} {stored!r} but {path / CONFIG_FILE} has {key} {given!r}: the run folder "
                           "was edited or mixes files of two runs; restore the run's own files (or train it again)")


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Turn model outputs into per-class probabilities, (B, K); a binary model gives [P(neg), P(pos)], a
    multi-label model one independent sigmoid probability per finding."""
    return get_task(task).probabilities(logits)


# What predict, evaluate and serve say about a run without the training images' statistics.
NO_SHIFT_REFERENCE = (f"{SHIFT_FILE} (the training images' statistics), so no out-of-distribution check was made: "
                      "images unlike the training set are not flagged")


@dataclass(frozen=True)
class Prediction:
    """One image's result: probabilities per class, the decision in words and the out-of-distribution check."""

    probabilities: dict[str, float]
    decision: str
    ood_warning: bool | None = False  # None: not checked (the run has no shift_reference.json)
    ood_findings: tuple[str, ...] = ()
    calibrated: bool = False
    source: str = ""
    task: str = ""  # the run's task ("" when built by hand: a two-class result counts as binary)

    @property
    def probability(self) -> float | None:
        """P(positive class) for a binary run, else None."""
        # Two findings of a multi-label run are two independent probabilities, not P(neg) and P(pos).
        if self.task not in ("", "binary"):
            return None
        return list(self.probabilities.values())[1] if len(self.probabilities) == 2 else None


def _describe(item: Any) -> str:
    if isinstance(item, (str, Path)):
        return str(item)
    if isinstance(item, np.ndarray):
        return f"array {item.shape} {item.dtype}"
    return type(item).__name__


def _check_batch_size(batch_size: Any) -> None:
    # A negative batch size made range() empty: N images in, zero probabilities out, no error.
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")


def decode_input(item: Any, pre: Preprocessing, scale: float | None = None) -> np.ndarray:
    """One input of :meth:`Run.predict` (path, bytes, Pillow image or NumPy array) -> the run's uint8 model input.

    Every kind goes through the same steps as a file read by ``cxrkit predict``: full-resolution grayscale,
    border crop, intensity normalisation, resizing. Anything that cannot be an image is a ``ValueError``.
    """
    from PIL import Image

    from cxrkit.data.arrays import array_to_grayscale, pil_to_grayscale
    from cxrkit.data.decode import check_usable, prepare_grayscale

    spec = (pre.image_size, pre.aspect, pre.intensity, pre.crop_border)
    if scale is not None and isinstance(item, (str, Path, bytes, bytearray, memoryview, Image.Image)):
        # Ignored, it gave a 16-bit or float image the stretch from its minimum to its maximum, not the white asked for:
        # another probability than the same pixels as an array with this scale.
        what = "a PIL image is read as its mode says" if isinstance(item, Image.Image) else "a file is read as its format says"
        raise ValueError(f"scale={scale!r} applies to NumPy float arrays; {what} (16-bit and float images stretched from their "
                         "minimum to their maximum): leave scale out, or pass its pixels as a float array")
    if isinstance(item, (str, Path)):
        return pre.load(Path(item))
    if isinstance(item, (bytes, bytearray, memoryview)):
        return pre.load(bytes(item))
    if isinstance(item, np.ndarray):
        return prepare_grayscale(check_usable(array_to_grayscale(item, scale)), *spec)
    if isinstance(item, Image.Image):
        return prepare_grayscale(check_usable(pil_to_grayscale(item)), *spec)
    if isinstance(item, torch.Tensor):
        raise ValueError("pass a NumPy array (tensor.numpy()), with scale= for float values")
    raise ValueError(f"cannot predict on a {type(item).__name__}: give a file path, bytes, a PIL image or a NumPy array")


def path_list(paths: Any) -> list:
    """``paths`` (a list, tuple or generator of file paths) as a list; one path, or an item that is not a path, is a ValueError."""
    if isinstance(paths, (str, bytes, os.PathLike)):  # a string is a list of one-letter "files"
        raise ValueError(f"paths must be a list of files, got one: {paths!r}; use [path], or Run.predict for one image")
    try:
        paths = list(paths)
    except TypeError:
        raise ValueError(f"paths must be a list of file paths, got {_describe(paths)}") from None
    bad = [i for i, p in enumerate(paths) if not isinstance(p, (str, os.PathLike))]
    if bad:
        raise ValueError(f"paths must be file paths; item {bad[0]} is {_describe(paths[bad[0]])} (Run.predict takes arrays, "
                         "bytes and PIL images)")
    return paths


@dataclass
class Run:
    """A loaded run: its validated record, model in eval mode and its preprocessing."""

    path: Path
    record: RunMeta
    model: nn.Module
    preprocessing: Preprocessing
    # ONNX Runtime model used instead of ``model`` for predictions (None: PyTorch); see :meth:`load`.
    onnx: Any = None
    calibration_data: dict | None = None
    # Where the PyTorch model runs (ONNX Runtime runs on the CPU); see :meth:`load`.
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _task: Task = field(init=False, repr=False)
    _model_id: tuple[str, str] | None = field(default=None, init=False, repr=False)  # (decision, id)
    _shift_cache: tuple | None = field(default=None, init=False, repr=False)  # (the shift reference or None,) once read
    # SHA-256 of the weight bytes loaded (a hashlib object, copied to extend): what the run names as its weights, even if
    # model.safetensors is rewritten after the load (None for a Run built by hand: the file is hashed).
    _weights_hash: Any = field(default=None, init=False, repr=False)
    # calibration_data parsed and validated, with the dict it was parsed from: every prediction applies it, and a changed
    # calibration_data (replaced or edited) is parsed again. One tuple, so a thread never sees one half of another's.
    _calibration: tuple[dict, Any] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._task = get_task(self.record.task)

    @classmethod
    def load(cls, path: str | Path, engine: str = "auto", allow_incomplete: bool = False, device: str | torch.device = "cpu") -> Run:
        """Load and validate a run folder written by ``cxrkit train``; weights are read with safetensors (no pickle).

        ``engine``: ``auto`` predicts with ONNX Runtime when ``cxrkit export`` wrote model.onnx for
        these weights and with PyTorch otherwise; ``torch``, ``onnx`` and ``onnx-int8`` force one.
        The PyTorch model is loaded in every case (Grad-CAM needs its gradients). A run whose training
        did not finish (no decision threshold yet) is refused unless ``allow_incomplete``, and so is one whose meta.json
        and config.yaml disagree on a setting both hold (image size, model, task...).
        ``device`` (``cpu``, ``auto``, ``cuda``, ``cuda:N``) places the PyTorch model; on a GPU ``auto`` engine
        means PyTorch (the ONNX Runtime installed with cxrkit runs on the CPU).
        """
        from cxrkit.models.device import resolve_device

        try:
            dev = resolve_device(device)
        except ValueError as exc:
            raise RunError(str(exc)) from None
        if dev.type != "cpu" and engine in ("onnx", "onnx-int8"):
            raise RunError(f"--engine {engine} runs on the CPU; use --engine torch (or auto) with --device {device}")
        if not isinstance(path, (str, os.PathLike)):  # Path(None) is a TypeError from pathlib
            raise RunError(f"the run must be a folder path (str or Path), got {type(path).__name__}")
        path = Path(path)
        if not path.is_dir():
            raise RunError(f"{path} is not a directory; give the run folder `cxrkit train` wrote (it holds {META_FILE} and {MODEL_FILE})")
        if not (path / META_FILE).is_file() or not (path / MODEL_FILE).is_file():
            raise RunError(_missing_files(path))
        try:
            record = read_meta(path)
        except RunRecordError as exc:
            raise RunError(str(exc)) from None
        if not allow_incomplete:
            try:
                record.require_complete(path)
            except RunRecordError as exc:
                raise RunError(str(exc)) from None
        if record.model not in MODELS:
            raise RunError(f"{path / META_FILE}: unknown model {record.model!r}; known: {', '.join(MODELS)}")
        try:
            model = build_model(record.model, record.num_outputs, **record.model_kwargs())
        except (TypeError, ValueError) as exc:
            raise RunError(f"{path / META_FILE}: cannot build model {record.model!r} with {record.model_kwargs()}: {exc}") from None
        _check_config_agrees(path, record)  # first: when meta.json was edited, config.yaml names the setting in both files
        weights_hash = load_weights(model, path / MODEL_FILE, record.weights_sha256, record.classes,
                                    weights_inputs(record.preprocessing, record.tta, record.tta_flips))
        # channels_last changes only the memory layout (same fp32 arithmetic): 1.4-3x faster CPU inference
        # measured on the Kermany runs (benchmarks in the README).
        model = model.to(dev, memory_format=torch.channels_last).eval()
        cal_file = path / CALIBRATION_FILE
        calibration = _read_calibration(cal_file, record.calibration_sha256)
        if calibration is not None and not isinstance(calibration, dict):
            raise RunError(f"{cal_file} must hold a JSON object")
        run = cls(path, record, model, Preprocessing(**record.preprocessing.to_dict()), calibration_data=calibration, device=dev)
        run._weights_hash = weights_hash
        if calibration is not None:
            try:
                cal = run._parsed_calibration()
            except ValueError as exc:
                raise RunError(f"{cal_file}: {exc}; remove it with `cxrkit calibrate {path} --remove` (then fit it again)") from None
            if record.task == "multilabel":
                if not cal.per_finding or cal.params.get("findings", record.classes) != record.classes or len(cal.params["slope"]) != len(record.classes):
                    raise RunError(f"{cal_file}: a multi-label run needs one platt map per finding ({', '.join(record.classes)}), in that order")
            elif cal.per_finding:
                raise RunError(f"{cal_file}: a per-finding map belongs to multi-label runs, this run is {record.task}")
            elif cal.method != "temperature" and record.task != "binary":
                raise RunError(f"{cal_file}: {cal.method} calibration applies to binary runs, this run is {record.task}")
        run.onnx = run._load_onnx("torch" if dev.type != "cpu" else engine)
        if record.complete:
            run.shift_reference()  # a damaged one is said now, not as an error on every prediction of a server that started
        return run

    @property
    def meta(self) -> dict:
        """meta.json as a plain dict (a copy: change the run through :attr:`record` and :meth:`save_record`)."""
        return self.record.to_dict()

    def save_record(self) -> None:
        """Write the (changed) record back to meta.json, validated and atomically."""
        write_meta(self.path, self.record)

    def config(self) -> TrainConfig:
        """The training configuration stored with the run (config.yaml)."""
        try:
            cfg = TrainConfig.load_saved(self.path / CONFIG_FILE)
        except (ConfigError, OSError) as exc:
            said = str(exc)  # the config's own errors name the file already: it was said twice
            raise RunError(said if str(self.path / CONFIG_FILE) in said else f"{self.path / CONFIG_FILE}: {said}") from None
        if cfg.labels and not Path(cfg.labels).is_file():
            cfg.labels = str(self._label_table(cfg.labels))
        return cfg

    def _label_table(self, given: str) -> Path:
        """The run's label table when config.yaml's path no longer names it: meta.json's absolute path, or the same place
        under the data folder for a run moved together with its data."""
        table, root = self.record.data.get("table"), self.record.data.get("root")
        candidates = [Path(table)] if table else []
        now = self.record.data_root(self.path)
        if table and root and now is not None and Path(table).is_relative_to(root):
            candidates.append(now / Path(table).relative_to(root))
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise RunError(f"the label table of {self.path} ({table or given}) is not where it was; put it back, or give the data "
                           "and its table explicitly")
        return found

    def is_own_data(self, data: str | Path | None) -> bool:
        """Whether ``data`` is the data this run was trained on: its folder, or a sources file naming the same sites (an
        adapted run keeps a copy of its source's sources.yaml, and the source's own copy was read as another site's data)."""
        root = self.record.data_root(self.path)
        if data is None:
            return True
        if root is None:
            return False
        given = Path(data).resolve()
        if given == root:
            return True
        if given.is_file() and root.is_file() and given.suffix.lower() in (".yaml", ".yml") and root.suffix.lower() in (".yaml", ".yml"):
            from cxrkit.data.multisite import read_sources_file
            from cxrkit.data.sources import DatasetError

            try:
                return read_sources_file(given) == read_sources_file(root)
            except DatasetError:
                return False
        return False

    def data_root(self) -> Path:
        """Where the training data is now (works for a run moved together with its data)."""
        root = self.record.data_root(self.path)
        if root is None:
            raise RunError(f"the training data of {self.path} is not where it was ({self.record.data.get('root')}); "
                           "give the data folder explicitly")
        return root

    def weights_sha256(self) -> str:
        """SHA-256 of the weights this run loaded (meta.json's record, checked against them at load, when it has one)."""
        from cxrkit.record import file_sha256

        if self._weights_hash is not None:
            return self._weights_hash.hexdigest()
        return self.record.weights_sha256 or file_sha256(self.path / MODEL_FILE)

    def _load_onnx(self, engine: str):
        """The ONNX Runtime model the engine asks for, or None for PyTorch."""
        from cxrkit.models.onnx_runtime import INT8_FILE, ONNX_FILE, OnnxModel, read_metadata

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
        import hashlib

        recorded = (self.record.onnx_sha256 or {}).get(file.name)
        try:
            data = file.read_bytes()  # once: the file checked is the file run, even when an export replaces it meanwhile
            if not data:
                problem = f"{file} is empty"
            elif recorded is not None and hashlib.sha256(data).hexdigest() != recorded:
                problem = f"{file} is not the file `cxrkit export` wrote (SHA-256 differs from {META_FILE}'s record): changed or damaged since"
            elif read_metadata(data).get("weights_sha256") != self.weights_sha256():
                problem = f"{file} was exported from other weights than {MODEL_FILE}"  # the weights changed after export: stale
            else:
                return OnnxModel(file, data=data)
        except Exception as exc:  # noqa: BLE001  protobuf's DecodeError, ONNX Runtime's own errors: a damaged file
            problem = f"{file} is not a readable ONNX file ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"
        if engine == "auto":
            return None  # PyTorch computes what the export should have: its answers are right
        raise RunError(f"{problem}; export again: cxrkit export {self.path} --format onnx{' --quantize int8' if engine == 'onnx-int8' else ''}")

    @property
    def model_id(self) -> str:
        """12 hex digits that change when the weights, the decision threshold(s), the referral band or the calibration change."""
        import hashlib
        import json

        # Recomputed when the decision changes: set_threshold or new calibration data on a loaded run kept the old id, and a
        # resumed prediction CSV stamped rows of two decision rules with one.
        # The referral band too: a resumed prediction CSV kept rows decided without the band a `cxrkit referral` added since.
        band = self.record.referral
        decision = json.dumps({"threshold": self.record.threshold, "thresholds": self.record.thresholds, "calibration": self.calibration_data,
                               **({"referral": [band.get("lower"), band.get("upper")]} if band else {})}, sort_keys=True)
        if self._model_id is None or self._model_id[0] != decision:
            # From the bytes loaded: the file read again named the weights of a training that rewrote it since, so a
            # resumed prediction CSV took rows of two models for one.
            h = self._weights_hash.copy() if self._weights_hash is not None else hashlib.sha256()
            if self._weights_hash is None:
                with open(self.path / MODEL_FILE, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
            h.update(decision.encode())
            self._model_id = (decision, h.hexdigest()[:12])
        return self._model_id[1]

    @property
    def engine(self) -> str:
        """Which engine predicts: ``torch`` or the ONNX file's name."""
        return "torch" if self.onnx is None else f"onnxruntime ({self.onnx.path.name})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a normalised batch (B, 1, S, S), by ONNX Runtime when loaded, else PyTorch."""
        if self.onnx is not None:
            return self.onnx(x)
        return self.model(x.to(self.device).contiguous(memory_format=torch.channels_last))

    @property
    def calibration(self) -> dict | None:
        """The probability calibration fitted on validation data (``cxrkit calibrate``), as stored in
        calibration.json, or None when the run's probabilities are the model's own."""
        return self.calibration_data

    @property
    def classes(self) -> list[str]:
        """Class names; for a binary task ``[negative, positive]``."""
        return list(self.record.classes)

    @property
    def task(self) -> str:
        """``binary``, ``multiclass`` or ``multilabel``."""
        return self.record.task

    @property
    def task_object(self) -> Task:
        """The task's behaviour (probabilities, decisions, losses): :mod:`cxrkit.tasks`."""
        return self._task

    @property
    def threshold(self) -> float | None:
        """Decision threshold on P(positive) chosen on validation data (binary tasks only)."""
        return self.record.threshold_value

    @property
    def thresholds(self) -> np.ndarray | None:
        """Per-finding decision thresholds of a multi-label run, chosen on validation data (class order)."""
        t = self.record.thresholds
        return None if not t else np.array([float(t[c]["value"]) for c in self.classes])

    @property
    def tta(self) -> bool:
        """Whether predictions average test-time augmented views (chosen at training time)."""
        return self.record.tta

    @property
    def tta_flips(self) -> bool:
        """Whether the test-time views include their mirror images (a model trained with flips, since round 7)."""
        return self.record.tta_flips

    @torch.inference_mode()
    def predict_arrays(self, images: np.ndarray, batch_size: int = 64, tta: bool | None = None, calibrated: bool = True) -> np.ndarray:
        """Probabilities (N, K) for uint8 images (N, S, S) already decoded at the run's size.

        ``tta`` (default: the run's setting) averages the probabilities of the views in
        :data:`cxrkit.data.augment.TTA_VIEWS` (and their mirror images when :attr:`tta_flips`). The run's calibration, when it has one, is applied
        unless ``calibrated=False`` (the model's own probabilities, which calibration is fitted on).
        Anything else (another size, float values, colour) is refused: :meth:`predict` takes raw images.
        """
        from cxrkit.data.augment import tta_views

        _check_batch_size(batch_size)
        if tta is not None and not isinstance(tta, (bool, np.bool_)):
            raise ValueError(f"tta must be True, False or None (the run's setting), got {tta!r}")
        if not isinstance(calibrated, (bool, np.bool_)):  # calibrated="no" is truthy: the calibration was applied
            raise ValueError(f"calibrated must be True or False, got {calibrated!r}")
        size = self.preprocessing.image_size
        if getattr(images, "dtype", None) != np.uint8 or getattr(images, "ndim", 0) != 3 or tuple(images.shape[1:]) != (size, size):
            raise ValueError(
                f"predict_arrays takes uint8 images already decoded by this run, shape (N, {size}, {size}); got "
                f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}. Use Run.predict(image) for "
                "files, bytes, PIL images or arrays of any size (float arrays with scale=)"
            )

        use_tta = self.tta if tta is None else tta
        out = []
        for i in range(0, len(images), batch_size):
            unit = self.preprocessing.to_unit(np.asarray(images[i : i + batch_size]))
            views = tta_views(unit, flips=self.tta_flips) if use_tta else [unit]
            p = torch.stack([
                self._task.probabilities(self.forward(self.preprocessing.normalize(v)))
                for v in views
            ]).mean(0)
            out.append(p.cpu().numpy())
        k = len(self.classes)
        probs = np.concatenate(out) if out else np.zeros((0, k))
        return self.apply_calibration(probs) if calibrated else probs

    def apply_calibration(self, probs: np.ndarray) -> np.ndarray:
        """The run's calibration (when it has one) applied to the model's own probabilities."""
        # Checked like decide's: logits, a NaN row or another run's column count came back as plausible probabilities.
        probs = self._checked_probs(probs)
        if self.calibration_data is None or not len(probs):
            return probs
        return self._parsed_calibration().apply(probs)

    def _parsed_calibration(self) -> Any:
        """:attr:`calibration_data` as a validated :class:`cxrkit.metrics.calibration.Calibration`, parsed once per content."""
        cached = self._calibration
        if cached is None or cached[0] != self.calibration_data:
            import copy

            from cxrkit.metrics.calibration import Calibration

            # Parsed from a copy: the Calibration shares its params, which an edit of calibration_data must not reach.
            source = copy.deepcopy(self.calibration_data)
            cached = (source, Calibration.from_dict(copy.deepcopy(source)))
            self._calibration = cached
        return cached[1]

    def _checked_probs(self, probs: np.ndarray) -> np.ndarray:
        """Refuse what cannot be this run's probabilities: a NaN would silently decide "negative"."""
        probs = np.asarray(probs)
        k = len(self.classes)
        if probs.ndim != 2 or probs.shape[1] != k or not np.issubdtype(probs.dtype, np.number) or np.iscomplexobj(probs):
            raise ValueError(f"probabilities must be a numeric array of shape (N, {k}) (one column per class: "
                             f"{', '.join(self.classes)}); got {probs.dtype} {probs.shape}")
        if not np.isfinite(probs).all() or (probs < 0).any() or (probs > 1).any():
            raise ValueError("probabilities must be finite numbers from 0 to 1 (a NaN row is an image that was not "
                             "classified, or a model whose weights diverged: drop or retrain, never decide on it)")
        if self._task.one_label_per_image and len(probs):
            # One class per image: each row sums to 1. [0.9, 0.9] was decided "tb", [0, 0] "healthy".
            sums = probs.sum(axis=1)
            bad = np.flatnonzero(np.abs(sums - 1) > 1e-3)
            if len(bad):
                raise ValueError(f"each row must hold the probabilities of the {k} classes, summing to 1; row {bad[0]} sums to "
                                 f"{sums[bad[0]]:.4g} ({len(bad)} such rows): pass what predict_arrays returns, not scores or logits")
        return probs

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Predicted class indices: P(positive) >= threshold for binary, the most probable class for
        multi-class; for multi-label an (N, K) 0/1 matrix, finding k present when P_k >= its threshold."""
        return self._task.decide(self._checked_probs(probs), self.threshold, self.thresholds)

    def decision_labels(self, probs: np.ndarray) -> list[str]:
        """The decision for each row as text: the class name, or the findings present joined by ``|``
        ("" when none is) for a multi-label run; ``refer`` inside a binary run's referral band."""
        probs = self._checked_probs(probs)
        labels = self._task.decision_labels(probs, self.classes, self.threshold, self.thresholds)
        band = self.record.referral
        if band is not None and len(probs):
            refer = (probs[:, 1] >= band["lower"]) & (probs[:, 1] < band["upper"])
            labels = [REFER if r else label for r, label in zip(refer, labels)]
        return labels

    def shift_reference(self) -> dict | None:
        """Statistics of the training images saved at training time; None when the run has none (made before they
        existed, or the file was deleted), and predictions then say their out-of-distribution check was not made."""
        if self._shift_cache is not None:  # checked when the run was loaded; the file is bound to meta.json by its hash
            return self._shift_cache[0]
        path = self.path / SHIFT_FILE
        if not path.is_file():
            self._shift_cache = (None,)
            return None
        import hashlib

        from cxrkit.data.shift import reference_problem

        try:
            data = path.read_bytes()  # once: the bytes hashed are the bytes parsed
            ref = parse_json(data, path)
        except OSError as exc:
            raise RunError(f"{path} cannot be read: {exc.strerror or exc}; delete it to predict without the out-of-distribution check") from None
        except RunRecordError as exc:  # a RunError like every other problem of a run folder (Python code catches that)
            raise RunError(f"{exc}; delete it to predict without the out-of-distribution check") from None
        problem = reference_problem(ref)
        if problem:
            raise RunError(f"{path}: {problem}; the file is damaged (delete it to predict without the out-of-distribution check)")
        recorded = self.record.shift_reference_sha256
        if recorded is not None and hashlib.sha256(data).hexdigest() != recorded:
            raise RunError(f"{path} is not the file {self.path / META_FILE} was written with (SHA-256 {recorded[:12]}…): copied from another "
                           "run? Restore this run's own, or delete it to predict without the out-of-distribution check")
        self._shift_cache = (ref,)
        return ref

    def iter_predict(
        self, paths: list[Path], batch_size: int = 64, workers: int = 4
    ) -> Iterator[tuple[list[int], np.ndarray, np.ndarray, dict[int, str]]]:
        """Decode and classify files batch by batch: yields (indices decoded, their probabilities, their uint8 images, {index: error}).

        ``workers`` threads decode the next batch while the model runs on this one (Pillow, NumPy and
        pydicom release the GIL for most of the work; threads, not processes, because PyTorch in
        forked workers can deadlock). ``workers=0`` decodes in the calling thread.
        """
        # A negative batch size made range() empty: every file came back as a NaN row with no error.
        _check_batch_size(batch_size)
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)):
            raise ValueError(f"workers must be a whole number (0: decode in this thread), got {workers!r}")
        paths = path_list(paths)

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
        if on_batch is not None and not callable(on_batch):  # was a TypeError after the first batch had been classified
            raise ValueError(f"on_batch must be a function of a uint8 batch, or None; got {type(on_batch).__name__}")
        paths = path_list(paths)  # a generator has no len(), and one Path none either: both were a TypeError
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


    def predict(self, x: Any, scale: float | None = None, batch_size: int = 64) -> Prediction | list[Prediction]:
        """Classify one input or a list of them; see :func:`decode_input` for what an input may be.

        A float array needs ``scale``, the value that means white (1.0 for [0, 1] images, 255 for [0, 255]); a path, bytes or
        PIL image refuses it (it is decoded as its file says).
        Returns a :class:`Prediction` for one input and a list of them for a list. The out-of-distribution check
        compares each image's brightness, contrast and border with the training images (as ``cxrkit serve`` does).
        """
        _check_batch_size(batch_size)
        single = not isinstance(x, (list, tuple))
        items = [x] if single else list(x)
        if not items:
            return []
        images = []
        for i, item in enumerate(items):
            try:
                images.append(decode_input(item, self.preprocessing, scale))
            except ValueError as exc:
                # a path names itself: "file not found" alone did not say which of a notebook's files
                where = f"input {i} ({_describe(item)}): " if not single else f"{item}: " if isinstance(item, (str, Path)) else ""
                # Of its own kind when it is an image's problem: code can tell a blank image from a missing file.
                raise (type(exc) if isinstance(exc, ImageDecodeError) else ValueError)(f"{where}{exc}") from None
        arr = np.stack(images)
        probs = self.predict_arrays(arr, batch_size)
        labels = self.decision_labels(probs)
        findings: list[list[dict]] = [[] for _ in items]
        reference = self.shift_reference()
        if reference is not None:
            from cxrkit.data.shift import image_outliers, image_stats

            findings = image_outliers(reference, image_stats(arr))
        out = [
            Prediction({c: float(probs[i, j]) for j, c in enumerate(self.classes)}, labels[i], None if reference is None else bool(findings[i]),
                       tuple(f["message"] for f in findings[i]), self.calibration_data is not None, _describe(items[i]), self.task)
            for i in range(len(items))
        ]
        return out[0] if single else out

def load_run_dataset(
    run: Run, data: str | Path | None = None, progress: bool = True, class_map: dict[str, str] | None = None,
    raw_intensity: bool = False,
) -> tuple[Any, TrainConfig]:
    """The run's dataset (or another whose classes match, see ``class_map``), split exactly as in training.

    ``raw_intensity`` skips the run's per-image intensity normalisation (for changes that must come before it).
    """
    from cxrkit.data.dataset import load_dataset

    cfg = run.config()
    own = run.is_own_data(data)
    if own and class_map and any(k != v for k, v in class_map.items()):
        # A map on the run's own data relabelled its test split (healthy=tb,tb=healthy scored AUC 0.016 as the test result)
        raise ValueError("--class-map matches another dataset's class names to the model's; the run's own data already has the "
                         f"model's classes ({', '.join(run.classes)})")
    def load(group_pattern: str | None) -> Any:
        return load_dataset(
            data if data is not None else run.data_root(), run.preprocessing.image_size, run.preprocessing.aspect, None,
            cfg.val_fraction, cfg.test_fraction, cfg.data_split_seed, group_pattern, cfg.cache_dir,
            class_names=run.classes, progress=progress, class_map=class_map,
            intensity="none" if raw_intensity else run.preprocessing.intensity, crop_border=run.preprocessing.crop_border,
            **(cfg.dataset_options() if own else {"task": cfg.task}),
        )

    try:
        ds = load(cfg.group_pattern)
    except ValueError as exc:
        if own or not cfg.group_pattern or "finds no patient ID" not in str(exc):
            raise
        # Another site names its files otherwise: its images were refused outright, though only the patient count needs them.
        ds = load(None)
        ds.notes.append(f"the run's --group-pattern '{cfg.group_pattern}' finds no patient ID in these file names, so each image "
                        "counts as its own patient here")
    if own:
        # The run's splits.csv says where each image went in training: copies grouped with the audit's hashes (a layer
        # above this one), and splits cut by a rule that may since have changed (e.g. per-site cuts), stay as trained.
        from dataclasses import replace

        from cxrkit.record import file_sha256
        from cxrkit.record.files import SPLITS_FILE, read_splits

        recorded = run.record.splits_sha256
        if recorded is not None and file_sha256(run.path / SPLITS_FILE) != recorded:
            raise RunError(f"{run.path / SPLITS_FILE} is not the file {run.path / META_FILE} was written with (SHA-256 {recorded[:12]}…): "
                           "edited, or copied from another run? Its test split may hold training images; restore this run's own")
        given = read_splits(run.path)
        if given:
            ds = replace(ds, splits=np.array([given.get(rel, s) for rel, s in zip(ds.relpaths, ds.splits)]))
    return ds, cfg

