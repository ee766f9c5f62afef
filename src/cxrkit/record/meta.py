"""meta.json as a typed, validated record: what a run needs to turn an image into a decision.

:class:`RunMeta` holds the fields prediction depends on (task, classes, preprocessing, thresholds,
completeness), each checked on load so a hand-edited or truncated file gives a one-line error instead of
a NaN or a wrong decision; provenance (data, training, audit, evaluations) is kept as written.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cxrkit.data.spec import ImageSpec, is_finite_number
from cxrkit.record.files import META_FILE, RunRecordError, atomic_write_json, json_safe, read_json

SCHEMA_VERSION = 3
TASKS = ("binary", "multiclass", "multilabel")
# The digests every finished run of record schema 3 carries. Before schema 3 a missing digest meant "written before
# it: nothing to check", so deleting one (the decision seal after editing the threshold) switched its check off.
SEALS_FROM_SCHEMA_3 = ("weights_sha256", "calibration_sha256", "shift_reference_sha256", "splits_sha256", "decision_sha256")



def image_spec_from_dict(d: Any, where: str = "preprocessing") -> ImageSpec:
    """Build and validate from meta.json's ``preprocessing`` object."""
    if not isinstance(d, dict):
        raise RunRecordError(f"{where} must be an object, got {type(d).__name__}")
    names = {f.name for f in fields(ImageSpec)}
    missing = [n for n in ("image_size", "aspect", "mean", "std") if n not in d]
    if missing:
        raise RunRecordError(f"{where} lacks {', '.join(missing)}")
    unknown = sorted(str(k) for k in d if k not in names)
    if unknown:  # a step this version cannot repeat was dropped without a word: every image prepared otherwise than in training
        raise RunRecordError(f"{where}.{unknown[0]} is not a preprocessing step this cxrkit knows ({', '.join(sorted(names))}): the "
                             "run was written by another version, or meta.json was edited; predict with the cxrkit that trained it")
    spec = ImageSpec(**{k: v for k, v in d.items() if k in names})
    bad = spec.problems()
    if bad:
        raise RunRecordError(f"{where}.{bad[0]}")
    return spec


def _check_threshold(t: Any, where: str) -> None:
    if not isinstance(t, dict) or not is_finite_number(t.get("value")) or not 0 <= t["value"] <= 1:
        value = t.get("value") if isinstance(t, dict) else t
        raise RunRecordError(f"{where} must be a finite number in [0, 1], got {value!r}")


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(ch in "0123456789abcdef" for ch in value)


@dataclass
class RunMeta:
    """The validated content of meta.json.

    ``complete`` is False from the moment training writes the model until the decision threshold has been
    chosen on validation data; an incomplete run can be resumed or inspected but not used to decide.
    """

    model: str
    task: str
    classes: list[str]
    num_outputs: int
    preprocessing: ImageSpec
    positive_class: str | None = None
    model_options: dict = field(default_factory=dict)
    tta: bool = False
    # Mirror images of the views too; only for a model trained with flips. Absent in older runs: their thresholds
    # were chosen on the five views, so they keep them.
    tta_flips: bool = False
    threshold: dict | None = None
    thresholds: dict | None = None
    referral: dict | None = None  # binary runs: {"lower", "upper", "spec", ...}; between the two the decision is "refer"
    complete: bool = False
    # SHA-256 of model.safetensors as written with this meta.json: weights from another training (a folder being
    # rewritten, a file copied over) are refused instead of used with this run's threshold and preprocessing.
    # Absent in runs written before it: nothing to check.
    weights_sha256: str | None = None
    # Likewise for calibration.json: its SHA-256, or "none" for a run without one (a calibration.json beside it is then
    # refused). A reader that loads while `cxrkit calibrate` swaps the two files cannot pair a threshold chosen on one
    # probability scale with a calibration to another. Absent in runs written before it: nothing to check.
    calibration_sha256: str | None = None
    # Likewise for shift_reference.json, the training images' statistics behind every out-of-distribution warning: one
    # copied from another run would judge images against the wrong training set without a word. Absent (None) in runs
    # written before it: nothing to check.
    shift_reference_sha256: str | None = None
    # Likewise for splits.csv, which says which images are the test split: rows moved from train to test had the model
    # scored on images it was trained on, reported as test figures. Absent (None) in runs written before it.
    splits_sha256: str | None = None
    # {file name: SHA-256} of the ONNX files `cxrkit export` wrote into the run: a graph changed since (an optimiser, an
    # edit, damage) kept its metadata, so it passed as this model's export. Absent for runs exported before it.
    onnx_sha256: dict | None = None
    # SHA-256 of the decision rule as cxrkit last wrote it (threshold, per-finding thresholds, referral band): a threshold
    # edited by hand from 0.188 to 0.9 was used by every command, and still described as "chosen on validation". Absent in
    # runs written before it: nothing to check.
    decision_sha256: str | None = None
    schema_version: int = SCHEMA_VERSION
    cxrkit_version: str | None = None
    created: str | None = None
    # Provenance, kept as written: the data it was trained on, the training figures, the audit, evaluations.
    data: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    audit: dict = field(default_factory=dict)
    evaluations: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    # ---- validation ---------------------------------------------------------------------------------
    def validate(self) -> RunMeta:
        """Check the fields prediction depends on; raise :class:`RunRecordError` with the first problem."""
        if not isinstance(self.model, str) or not self.model:
            raise RunRecordError(f"model must be a model name, got {self.model!r}")
        if self.task not in TASKS:
            raise RunRecordError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        c = self.classes
        if not isinstance(c, list) or not all(isinstance(x, str) and x for x in c) or len(set(c)) != len(c):
            raise RunRecordError(f"classes must be a list of distinct non-empty names, got {c!r}")
        if len(c) < 2 or (self.task == "binary" and len(c) != 2):
            raise RunRecordError(f"a {self.task} run needs {'exactly 2' if self.task == 'binary' else 'at least 2'} classes, got {len(c)}")
        expected = 1 if self.task == "binary" else len(c)
        if self.num_outputs != expected:
            raise RunRecordError(f"num_outputs must be {expected} for a {self.task} run with {len(c)} classes, got {self.num_outputs!r}")
        if self.task == "binary" and self.positive_class is not None and self.positive_class != c[1]:
            raise RunRecordError(f"positive_class {self.positive_class!r} must be the second class ({c[1]!r})")
        if isinstance(self.schema_version, bool) or not isinstance(self.schema_version, int) or self.schema_version < 1:
            raise RunRecordError(f"schema_version must be a whole number, got {self.schema_version!r}")
        if self.schema_version > SCHEMA_VERSION:  # its fields may mean what this version cannot know: it loaded without a word
            raise RunRecordError(f"the run was written by a newer cxrkit (record schema {self.schema_version}; this one reads up to "
                                 f"{SCHEMA_VERSION}): upgrade cxrkit (pip install -U cxrkit)")
        if not isinstance(self.tta, bool):
            raise RunRecordError(f"tta must be true or false, got {self.tta!r}")
        if not isinstance(self.tta_flips, bool):
            raise RunRecordError(f"tta_flips must be true or false, got {self.tta_flips!r}")
        if not isinstance(self.model_options, dict):
            raise RunRecordError("model_options must be an object")
        # Provenance is kept as written, but its shape is what the report, evaluate and the model card read it by: a list
        # or a string here was an "unexpected TypeError" in them, blamed on cxrkit.
        for name in ("data", "training", "audit"):
            if not isinstance(getattr(self, name), dict):
                raise RunRecordError(f"{name} must be an object, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.evaluations, list) or not all(isinstance(e, dict) for e in self.evaluations):
            raise RunRecordError(f"evaluations must be a list of objects, got {self.evaluations!r}")
        for key in ("root", "root_from_run"):
            if not isinstance(self.data.get(key), (str, type(None))):
                raise RunRecordError(f"data.{key} must be the data folder's path, got {self.data[key]!r}")
        if self.weights_sha256 is not None and not _is_sha256(self.weights_sha256):
            raise RunRecordError(f"weights_sha256 must be the 64 hex digits of model.safetensors' SHA-256, got {self.weights_sha256!r}")
        if self.calibration_sha256 not in (None, "none") and not _is_sha256(self.calibration_sha256):
            raise RunRecordError("calibration_sha256 must be \"none\" or the 64 hex digits of calibration.json's SHA-256, "
                                 f"got {self.calibration_sha256!r}")
        if self.shift_reference_sha256 is not None and not _is_sha256(self.shift_reference_sha256):
            raise RunRecordError("shift_reference_sha256 must be the 64 hex digits of shift_reference.json's SHA-256, "
                                 f"got {self.shift_reference_sha256!r}")
        if self.splits_sha256 is not None and not _is_sha256(self.splits_sha256):
            raise RunRecordError(f"splits_sha256 must be the 64 hex digits of splits.csv's SHA-256, got {self.splits_sha256!r}")
        if self.onnx_sha256 is not None and not (isinstance(self.onnx_sha256, dict) and all(
                isinstance(k, str) and _is_sha256(v) for k, v in self.onnx_sha256.items())):
            raise RunRecordError(f"onnx_sha256 must map ONNX file names to the 64 hex digits of their SHA-256, got {self.onnx_sha256!r}")
        if not isinstance(self.complete, bool):  # "false" is truthy: an unfinished run would have decided
            raise RunRecordError(f"complete must be true or false, got {self.complete!r}")
        if self.task != "multilabel" and self.thresholds:  # read as per-finding thresholds: a TypeError at the first prediction
            raise RunRecordError(f"thresholds (one per finding) belong to multi-label runs; a {self.task} run has null, got {self.thresholds!r}")
        if self.complete:
            self._validate_decision()
        if self.referral is not None:
            r = self.referral
            if self.task != "binary":
                raise RunRecordError("referral: a referral band applies to binary runs only")
            if not isinstance(r, dict) or not all(is_finite_number(r.get(k)) for k in ("lower", "upper")) \
                    or not 0 <= r["lower"] <= r["upper"] <= 1 + 1e-6:
                raise RunRecordError(f"referral must hold finite thresholds 0 <= lower <= upper <= 1, got {r!r}")
        missing = [name for name in SEALS_FROM_SCHEMA_3 if getattr(self, name) is None] if self.complete and self.schema_version >= 3 else []
        if missing:
            raise RunRecordError(f"{missing[0]} is missing; cxrkit writes it into every finished run of record schema "
                                 f"{self.schema_version}, so meta.json was edited by hand. Restore the file, or train the run again")
        if self.decision_sha256 is not None and self.decision_sha256 != self.decision_digest():
            r, t = self.referral, self.threshold_value
            parts = ([f"threshold {t}"] if t is not None else ["per-finding thresholds"] if self.thresholds else []) + (
                [f"referral band {r.get('lower')}-{r.get('upper')}"] if isinstance(r, dict) else [])
            raise RunRecordError(f"its decision rule ({', '.join(parts) or 'no threshold'}) is not the one cxrkit chose and recorded "
                                 "(decision_sha256): meta.json was edited by hand. Restore the file; `cxrkit calibrate` chooses a "
                                 "threshold on validation again, `cxrkit referral` a referral band")
        return self

    def decision_digest(self) -> str:
        """SHA-256 of the decision rule: threshold, per-finding thresholds and referral band, as JSON with sorted keys."""
        rule = {"threshold": self.threshold, "thresholds": self.thresholds, "referral": self.referral}
        return hashlib.sha256(json.dumps(json_safe(rule), sort_keys=True).encode()).hexdigest()

    def _validate_decision(self) -> None:
        if self.task == "binary":
            _check_threshold(self.threshold, "threshold.value")
        elif self.task == "multilabel":
            t = self.thresholds
            if not isinstance(t, dict) or set(t) != set(self.classes):
                raise RunRecordError(f"thresholds must give one threshold per finding ({', '.join(self.classes)})")
            for name in self.classes:
                _check_threshold(t[name], f"thresholds.{name}.value")

    def require_complete(self, run_dir: Path | str) -> None:
        """Refuse to decide with a run whose training did not finish (no threshold chosen yet)."""
        if not self.complete:
            raise RunRecordError(
                f"{run_dir} is incomplete: training did not finish (no decision threshold was chosen on validation data); "
                "resume it with `cxrkit train ... --resume` or train again"
            )

    # ---- thresholds -----------------------------------------------------------------------------------
    @property
    def threshold_value(self) -> float | None:
        """The binary decision threshold, or None."""
        t = self.threshold
        return None if not t or t.get("value") is None else float(t["value"])

    @property
    def threshold_rule(self) -> str | None:
        """The rule the threshold(s) were chosen by (``youden``, ``sensitivity:0.9``, ...)."""
        return (self.threshold or {}).get("rule")

    def set_threshold(self, choice: dict) -> None:
        """Record the binary threshold chosen on validation data; the run becomes complete."""
        _check_threshold(choice, "threshold.value")
        self.threshold = choice
        self.complete = True

    def set_thresholds(self, per_finding: dict[str, dict], rule: str) -> None:
        """Record a multi-label run's per-finding thresholds; the run becomes complete."""
        self.thresholds = per_finding
        self.threshold = {"rule": rule, "value": None, "per_finding": True}
        self.complete = True
        self._validate_decision()

    # ---- data location --------------------------------------------------------------------------------
    def data_root(self, run_dir: Path | str) -> Path | None:
        """Where the training data is now: the path stored relative to the run folder (so a run moved with
        its data still finds it), else the absolute path stored at training time; None when neither exists."""
        run_dir = Path(run_dir)
        rel = self.data.get("root_from_run")
        candidates = ([run_dir / rel] if rel else []) + ([Path(self.data["root"])] if self.data.get("root") else [])
        for c in candidates:
            if c.exists():
                return c.resolve()
        return None

    def set_data_root(self, root: Path | str, run_dir: Path | str) -> None:
        """Store the data location both absolute and relative to the run folder."""
        root = Path(root).resolve()
        self.data["root"] = str(root)
        self.data["root_from_run"] = os.path.relpath(root, Path(run_dir).resolve())

    # ---- I/O --------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """meta.json's JSON object."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        d["preprocessing"] = self.preprocessing.to_dict()
        if not self.evaluations:
            del d["evaluations"]
        if self.referral is None:
            del d["referral"]  # absent until a split is evaluated: a glance at meta.json shows the test split untouched
        return {**d, **self.extra}

    @classmethod
    def from_dict(cls, d: Any) -> RunMeta:
        """Build from meta.json's object (older runs included) and validate."""
        if not isinstance(d, dict):
            raise RunRecordError(f"{META_FILE} must hold a JSON object, got {type(d).__name__}")
        missing = [k for k in ("model", "task", "classes", "num_outputs", "preprocessing") if k not in d]
        if missing:
            raise RunRecordError(f"{META_FILE} lacks {', '.join(missing)}")
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["preprocessing"] = image_spec_from_dict(d["preprocessing"])
        if "complete" not in d:  # runs written before the flag: complete once a threshold was stored
            kwargs["complete"] = d.get("task") == "multiclass" or bool(d.get("thresholds") or (d.get("threshold") or {}).get("value") is not None)
        opts = dict(d.get("model_options") or {})
        if opts.get("image_size") not in (None, kwargs["preprocessing"].image_size):
            raise RunRecordError(f"model_options.image_size {opts['image_size']!r} differs from preprocessing.image_size "
                                 f"{kwargs['preprocessing'].image_size!r}")
        opts.pop("image_size", None)  # stored once, in preprocessing
        kwargs["model_options"] = opts
        meta = cls(**kwargs, extra={k: v for k, v in d.items() if k not in known})
        return meta.validate()

    def model_kwargs(self) -> dict:
        """Keyword arguments of :func:`cxrkit.models.build_model` besides the name and outputs."""
        return {**self.model_options, "image_size": self.preprocessing.image_size}


def read_meta(run_dir: Path | str) -> RunMeta:
    """Load and validate ``run_dir/meta.json``; every problem is a one-line :class:`RunRecordError`."""
    path = Path(run_dir) / META_FILE
    try:
        return RunMeta.from_dict(read_json(path, "not a cxrkit run folder?"))
    except RunRecordError as exc:
        msg = str(exc)
        raise RunRecordError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    except TypeError as exc:  # a field of the wrong shape reached a constructor
        raise RunRecordError(f"{path}: {exc}") from None


def write_meta(run_dir: Path | str, meta: RunMeta) -> None:
    """Validate and write ``run_dir/meta.json`` atomically."""
    meta.decision_sha256 = meta.decision_digest()  # validated as read; sealed again as written (a rule cxrkit changed gets its new digest)
    meta.validate()
    # A run written before schema 3 is upgraded once it carries every digest; one that lacks a file's digest keeps its
    # schema (and the "nothing to check" that goes with it) rather than being refused at its next read.
    complete_seals = all(getattr(meta, name) is not None for name in SEALS_FROM_SCHEMA_3)
    if complete_seals or not meta.complete:
        meta.schema_version = SCHEMA_VERSION
    atomic_write_json(Path(run_dir) / META_FILE, meta.to_dict())


def now() -> str:
    """Local time as stored in run records."""
    return time.strftime("%Y-%m-%dT%H:%M:%S")
