"""The typed training configuration: CLI -> :class:`TrainConfig` -> ``config.yaml`` in the run -> read back."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from cxrkit.data.augment import AugmentConfig, default_augment
from cxrkit.data.intensity import INTENSITY_MODES
from cxrkit.data.spec import ASPECTS, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE

if TYPE_CHECKING:
    import torch

# auto: histogram equalisation when brightness and contrast alone tell the training classes apart (cxrkit.audit.exposure), else none.
INTENSITY_CHOICES = ("auto", *INTENSITY_MODES)

TASK_CHOICES = ("auto", "binary", "multiclass", "multilabel")
SCHEDULES = ("cosine", "plateau", "constant")
KEEP_CHOICES = ("auto", "best", "last")
PRECISIONS = ("auto", "32", "bf16")
FREEZE_CHOICES = ("none", "backbone")


class ConfigError(ValueError):
    """A training configuration that cannot be used; the message names the key, and its command-line flag when it has one.

    A message that starts with config keys (``epochs must be ...``, ``val_fraction and test_fraction ...``,
    ``augment.erase_edges: ...``) gets each key's flag added from :data:`CLI_FLAGS` (``epochs (--epochs) must be ...``),
    so the messages themselves are written once, in config-file terms. ``flags=False`` leaves the text as it is.
    """

    def __init__(self, message: str, flags: bool = True) -> None:
        super().__init__(with_cli_flags(message) if flags else message)


# Keys that no `cxrkit train` option sets, and options whose name is not the key's with dashes.
_NO_FLAG = {"data", "augment", "group_duplicates", "channels_last"}
_RENAMED_FLAGS = {"class_weights": "--no-class-weights", "augment.rotate_degrees": "--rotate"}


def _cli_flags() -> dict[str, str]:
    """Config key -> the `cxrkit train` option that sets it (``batch_size`` -> ``--batch-size``)."""
    keys = [f.name for f in fields(TrainConfig)] + [f"augment.{f.name}" for f in fields(AugmentConfig)]
    return {k: _RENAMED_FLAGS.get(k, "--" + k.removeprefix("augment.").replace("_", "-")) for k in keys if k not in _NO_FLAG}


def with_cli_flags(message: str) -> str:
    """``message`` with the command-line flag after each config key it starts with; keys already followed by one are left."""
    flags = CLI_FLAGS
    names = "|".join(re.escape(k) for k in sorted(flags, key=len, reverse=True))
    lead = re.match(rf"((?:{names})(?: and (?:{names}))*)(?=$|[\s:=,.])", message)
    if not lead or message[lead.end():].startswith(" (--"):
        return message
    subject = re.sub(rf"\b({names})\b", lambda m: f"{m.group(1)} ({flags[m.group(1)]})", lead.group(1))
    return subject + message[lead.end():]


@dataclass
class TrainConfig:
    """Everything that decides how a model is trained; saved in every run as ``config.yaml``."""

    data: str
    out: str = "runs/run"
    labels: str | None = None
    label_column: str | None = None
    task: str = "auto"
    resplit: bool = False
    # ImageNet-pretrained EfficientNet-Lite0 (weights ship with a pip package, no download): it beat the from-scratch
    # cnn on external AUC in 8 of 9 paired leave-one-site-out runs (benchmarks/sites.py, BENCHMARKS.md).
    model: str = "efficientnet-lite0"
    width: int | None = None
    dropout: float | None = None
    image_size: int = 224
    aspect: str = "pad"
    # auto: none, unless an exposure probe on the training images finds that brightness and contrast alone tell the
    # classes apart; then histeq (the only setting that kept a planted exposure shortcut out, tests/test_robust_default.py).
    # On the TB sites the probe stays under its bar (0.48-0.64), so the benchmarked default (none) is what they train with.
    intensity: str = "auto"
    crop_border: bool = False
    positive: str | None = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    group_pattern: str | None = None
    # When cxrkit cuts the splits itself, identical and near-identical images go to one split (grouped like a patient).
    group_duplicates: bool = True
    allow_leakage: bool = False
    seed: int = 0
    # The seed of the train/validation/test split (None: ``seed``). Fixing it while ``seed`` varies keeps the split and
    # changes only the training randomness: seed-to-seed spread on one split, or ensemble members on one split.
    split_seed: int | None = None
    epochs: int = 20  # the length the defaults were benchmarked at
    patience: int | None = None  # None: train the whole schedule (no early stopping)
    # Which epoch's weights the run keeps: the best on validation, the last, or auto: the last when the whole schedule
    # runs (no patience, no time limit reached), the best with early stopping or when --max-minutes cuts it short.
    # On a ~75-image validation split the "best" epoch can be an early, half-trained one: keeping the last raised the
    # other-site AUC and lowered its seed spread (BENCHMARKS.md, round 6).
    keep: str = "auto"
    max_minutes: float | None = None
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    class_weights: bool = True
    oversample: bool = False
    # Several sources: show every site as often as the largest in each epoch. None (default): on when the data have
    # several sites (and --oversample is off). Leave-one-site-out: external AUC 0.785 vs 0.748 unbalanced, 8 of 9 paired
    # runs better, seed SD 0.020 vs 0.042 (BENCHMARKS.md, round 4).
    site_balanced: bool | None = None
    threshold_rule: str = "youden"
    allow_point_estimate: bool = False  # a guaranteed threshold rule that is impossible falls back to the point rule
    referral: str | None = None  # e.g. "npv:0.98,ppv:0.90": rule-out and rule-in thresholds, "refer" in between
    precision: str = "auto"
    channels_last: bool = True
    workers: int = 0
    pretrained: str | None = None
    freeze: str = "none"
    head_epochs: int = 0
    backbone_lr_scale: float = 1.0
    # Validate, keep and save a moving average of the weights over about this many epochs (None: the raw weights).
    # 3 epochs: external AUC 0.772 vs 0.767 for the raw weights, seed SD 0.021 vs 0.034 (benchmarks/sites.py, BENCHMARKS.md).
    ema_epochs: float | None = 3.0
    # MixStyle: probability per batch and early layer of mixing feature statistics between images (0: off).
    mixstyle: float = 0.0
    # Mixup (Zhang et al. 2018): train on convex blends of two images and of their losses, with the weight drawn from
    # Beta(mixup, mixup) per batch (0: off).
    mixup: float = 0.0
    # Test-time augmentation: the mean of 5 mild views for the threshold, evaluation and prediction. External AUC
    # 0.780 vs 0.772, better in 7 of 9 paired leave-one-site-out runs (14 of 18 with the round-2 model), for 5x the
    # inference time (13 -> 63 ms per 128-px image on one thread); BENCHMARKS.md, round 4.
    tta: bool = True
    cache_dir: str | None = None
    augment: AugmentConfig = field(default_factory=default_augment)

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = _validated(AugmentConfig, _over_default(self.augment), "augment.")
        if not isinstance(self.augment, AugmentConfig):  # None or a list: "must be called with a dataclass type or instance"
            raise ConfigError(f"augment must be an AugmentConfig or a dict of its strengths, got {self.augment!r}")
        _check_types(self)
        _check_types(self.augment, "augment.")
        from cxrkit.metrics.thresholds import parse_rule
        from cxrkit.models.registry import MODELS

        if self.model not in MODELS:
            raise ConfigError(f"model: unknown model {self.model!r}; choose one of {', '.join(MODELS)} (see `cxrkit models`)")
        try:
            parse_rule(self.threshold_rule)
        except ValueError as exc:
            raise ConfigError(f"threshold_rule: {exc}") from None
        if self.group_pattern == "":  # no pattern, as the code reads it; stored as null, not as '' in config.yaml
            self.group_pattern = None
        if self.group_pattern is not None:
            try:  # re.error is no ValueError: a bad pattern was a traceback once the dataset was read
                re.compile(self.group_pattern)
            except re.error as exc:
                raise ConfigError(f"group_pattern: {self.group_pattern!r} is not a regular expression ({exc})") from None
        if self.referral is not None:
            from cxrkit.metrics.referral import parse_referral

            try:
                parse_referral(self.referral)
            except ValueError as exc:
                raise ConfigError(f"referral: {exc}") from None
        checks = [
            (MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE, f"image_size must be from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}"),
            (bool(str(self.data).strip()), "data must name a dataset folder, .zip, .npz or label table's image folder"),
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.batch_size >= 2, "batch_size must be at least 2 (batch norm needs two images)"),
            (0 < self.lr <= 1e6, "lr must be a positive number up to 1e6 (1e-3 is usual; larger ones overflow, and large ones diverge)"),
            (bool(str(self.out).strip()), "out must name the run folder (an empty one would write the run into the current folder)"),
            (self.keep in KEEP_CHOICES, f"keep must be one of {', '.join(KEEP_CHOICES)}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
            (self.aspect in ASPECTS, f"aspect must be one of {', '.join(ASPECTS)}"),
            (self.intensity in INTENSITY_CHOICES, f"intensity must be one of {', '.join(INTENSITY_CHOICES)}"),
            (self.workers >= 0, "workers must be >= 0"),
            (self.task in TASK_CHOICES, f"task must be one of {', '.join(TASK_CHOICES)}"),
            (self.freeze in FREEZE_CHOICES, f"freeze must be one of {', '.join(FREEZE_CHOICES)}"),
            (self.head_epochs >= 0, "head_epochs must be >= 0"),
            (self.head_epochs < self.epochs or self.head_epochs == 0, "head_epochs must be fewer than epochs"),
            (not (self.head_epochs and self.freeze == "backbone"),
             "head_epochs and freeze exclude each other: two-stage fine-tuning (head_epochs > 0) trains the backbone that freeze=backbone keeps fixed"),
            (self.max_minutes is None or self.max_minutes > 0, "max_minutes must be positive"),
            (0 < self.backbone_lr_scale < math.inf, "backbone_lr_scale must be a positive finite number"),
            (self.ema_epochs is None or 0 < self.ema_epochs < math.inf, "ema_epochs must be positive (or null: no weight averaging)"),
            (0 <= self.mixstyle <= 1, "mixstyle must be a probability from 0 to 1"),
            (not self.mixstyle or bool(MODELS[self.model].mixstyle_layers),
             f"mixstyle is not available for {self.model}; models with it: "
             + ", ".join(n for n, m in MODELS.items() if m.mixstyle_layers)),
            (0 <= self.mixup <= 10, "mixup must be the Beta distribution's alpha, from 0 (off) to 10 (0.2-0.4 is usual)"),
            (self.width is None or self.width >= 1, "width must be at least 1"),
            (self.dropout is None or 0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1,
             "val_fraction and test_fraction must each be in [0, 1) and leave images for training"),
            (self.patience is None or self.patience >= 1, "patience must be at least 1 (or left out: no early stopping)"),
            (0 <= self.weight_decay < math.inf, "weight_decay must be a finite number >= 0"),
            (0 <= self.seed < 2**32 and (self.split_seed is None or 0 <= self.split_seed < 2**32),
             "seed and split_seed must be whole numbers from 0 to 2^32 - 1 (numpy and scikit-learn refuse others)"),
            (all(0 <= v < math.inf for k, v in asdict(self.augment).items() if k != "hflip"),
             "augment strengths must be finite numbers >= 0 (not NaN)"),
            # Each strength is the half-width of a range around "unchanged": beyond these the range holds a zero or negative
            # zoom (scale), an inverted image (contrast), an all-black or all-white one (brightness), or an image moved off
            # the frame (translate); all trained without a word.
            (self.augment.scale < 1, "augment.scale must be below 1: zoom is drawn from 1 - scale to 1 + scale (0.1 is usual)"),
            (self.augment.contrast <= 1, "augment.contrast must be at most 1: contrast is scaled by 1 - c to 1 + c, and below 0 the image inverts"),
            (self.augment.brightness <= 1, "augment.brightness must be at most 1 (the whole intensity range; 0.1-0.2 is usual)"),
            (self.augment.translate < 1, "augment.translate must be below 1 (a share of the image; 0.05 is usual)"),
            (self.augment.rotate_degrees <= 180, "augment.rotate_degrees must be at most 180"),
            (self.augment.erase_edges <= 1, "augment.erase_edges is a probability from 0 to 1"),
            (self.augment.random_conv <= 1, "augment.random_conv is a probability from 0 to 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    def resolved_keep(self) -> str:
        """``best`` or ``last`` as configured: ``auto`` is ``last`` without early stopping, ``best`` with it (a run the
        time limit cuts short keeps the best epoch too; ``meta.json`` records what was kept)."""
        if self.keep != "auto":
            return self.keep
        return "best" if self.patience is not None else "last"

    def resolved_precision(self, device: torch.device | str | None = None) -> str:
        """``bf16`` when asked, or when ``auto`` and the device computes bfloat16 natively; otherwise ``32``.

        ``device`` is where training runs (the CPU when omitted). On a CUDA device ``auto`` follows the GPU
        (``torch.cuda.is_bf16_supported``: Ampere and newer), not the host CPU; an explicit ``bf16`` on a GPU without
        bfloat16 is refused here rather than by autocast in the middle of the first step. Other devices (MPS) train in
        float32 under ``auto``. Kept by a leave-one-site-out benchmark on a CPU (3 sites x 3 seeds, BENCHMARKS.md
        round 10): mean external AUC 0.805 with bf16 against 0.793 in float32. Not for speed alone: bf16 trains the cnn
        1.7x faster at 224 px, but efficientnet-lite0 only 1.15x at 224 px and slower at 128 px (benchmarks/cpu_speed.py)."""
        import torch

        kind = torch.device(device).type if device is not None else "cpu"
        if kind == "cuda":
            native = _cuda_bf16(torch.device(device))
            if self.precision == "bf16" and not native:
                raise ValueError(f"--precision bf16: {torch.cuda.get_device_name(torch.device(device))} has no bfloat16 support; use --precision 32 (or auto)")
        elif kind == "cpu":
            native = cpu_bf16()
        else:
            native = False
        if self.precision != "auto":
            return self.precision
        return "bf16" if native else "32"

    @property
    def data_split_seed(self) -> int:
        """The seed that draws the train/validation/test split."""
        return self.seed if self.split_seed is None else self.split_seed

    def dataset_options(self) -> dict:
        """Where labels and splits come from: the keyword arguments of :func:`cxrkit.data.dataset.load_dataset` beyond the image options."""
        return {"labels": self.labels, "label_column": self.label_column, "task": self.task, "resplit": self.resplit}

    def model_options(self) -> dict:
        """The options passed to :func:`cxrkit.models.build_model` besides name and outputs."""
        return {"image_size": self.image_size, "width": self.width, "dropout": self.dropout}

    def to_dict(self) -> dict:
        """Plain-dict form (nested augment config included)."""
        return asdict(self)

    def save(self, path: str | Path) -> None:
        """Write the config as YAML."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, d: Any) -> TrainConfig:
        """Build a config from a dict (YAML, JSON or keyword arguments): unknown keys are refused, values are
        converted where the meaning is unambiguous ("1e-3" -> 0.001, "false" -> False, 128.0 -> 128) and
        anything else is a :class:`ConfigError` naming the key."""
        if not isinstance(d, dict):
            raise ConfigError(f"a configuration must be a mapping of keys to values, got {type(d).__name__}")
        d = dict(d)
        if isinstance(d.get("augment"), dict):
            d["augment"] = _validated(AugmentConfig, _over_default(d["augment"]), "augment.")
        return _validated(cls, d)

    @classmethod
    def load_saved(cls, path: str | Path) -> TrainConfig:
        """A run's own config.yaml: as :meth:`load`, with options added since the run was made set as they were then."""
        cfg = cls.load(path)
        raw = yaml.safe_load(Path(path).read_text()) or {}
        for key, then in _BEFORE_IT_EXISTED.items():
            if isinstance(raw, dict) and key not in raw:
                setattr(cfg, key, then)
        given = raw.get("augment") if isinstance(raw, dict) else None
        if isinstance(given, dict):  # a strength added since (gamma, blur, ...) was off then: the dataclass's value, not the preset's
            cfg.augment = replace(cfg.augment, **{f.name: f.default for f in fields(AugmentConfig) if f.name not in given})
        if cfg.cache_dir and not Path(cfg.cache_dir).is_absolute():
            cfg.cache_dir = training_cache_dir(cfg.cache_dir, cfg.out, Path(path).parent)
        if cfg.labels and not Path(cfg.labels).is_absolute():
            # As typed, relative to where the training ran: read from the current folder, evaluate scored another table there
            cfg.labels = training_cache_dir(cfg.labels, cfg.out, Path(path).parent) or cfg.labels
        return cfg

    @classmethod
    def load(cls, path: str | Path, data: str | None = None) -> TrainConfig:
        """Read a YAML config (``cxrkit train --config``, ``best_config.yaml``, a run's config.yaml); ``data``, when given,
        stands in for a missing ``data:`` key (the DATA argument of ``cxrkit train DATA --config FILE``)."""
        path = Path(path)
        try:
            d = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
        except FileNotFoundError:
            raise ConfigError(f"{path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} cannot be read: {exc}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
        if d is None:
            raise ConfigError(f"{path} is empty; it needs at least `data: PATH`")
        if data is not None and isinstance(d, dict) and "data" not in d:
            d = {**d, "data": data}
        try:
            return cls.from_dict(d)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}", flags=False) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing a key given twice in one mapping: PyYAML keeps the last one silently, so
    ``epochs: 1`` near the top and ``epochs: 50`` further down trained 50 epochs without a word."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: its keys may be overridden, as YAML means
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            twice = key in seen
        except TypeError:  # an unhashable key: construct_mapping says so below
            continue
        if twice:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


# Config key -> `cxrkit train` option, for ConfigError messages (tests/test_newcomer_cli.py checks it against the parser).
CLI_FLAGS = _cli_flags()

# What a run saved before an option existed did, for options whose default has changed since.
_BEFORE_IT_EXISTED = {
    "group_duplicates": False,  # splits cut without grouping copies; evaluation must cut them the same way
    "ema_epochs": None,  # no weight averaging: the saved weights are the raw ones
    "site_balanced": False,  # several sources in their natural shares
    "tta": False,  # one view per image
    "keep": "best",  # the best validation epoch was kept (a resumed run must keep the same way)
}


def _refuse_booleans(cls: type, d: dict, prefix: str) -> None:
    """A true/false where a number or text belongs is an error: pydantic would read ``lr: yes`` as 1.0."""
    from typing import get_type_hints

    hints = get_type_hints(cls)
    for k, v in d.items():
        if isinstance(v, bool) and "bool" not in str(hints.get(k, "bool")):
            raise ConfigError(f"{prefix}{k}: expected a number or text, got {str(v).lower()} "
                              "(YAML reads yes/no/on/off as true/false)")


def _over_default(augment: dict) -> dict:
    """An ``augment:`` section over the default preset: the keys it leaves out keep the default's strengths. They took the
    dataclass's (the old mild preset's), so ``augment: {rotate_degrees: 5}`` turned flips, gamma, blur and noise off unsaid."""
    return {**asdict(default_augment()), **augment}


def _validated(cls: type, d: dict, prefix: str = "") -> Any:
    """``cls(**d)`` with pydantic's type checks and conversions; unknown keys and bad values are one-line ConfigErrors."""
    from pydantic import TypeAdapter, ValidationError

    known = {f.name for f in fields(cls)}
    unknown = sorted(str(k) for k in d if k not in known)
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(prefix + k for k in unknown)} (known: {', '.join(sorted(known))})")
    if cls is TrainConfig and "data" not in d:
        raise ConfigError("data is missing: the dataset folder (or .zip, .npz) to train on")
    _refuse_booleans(cls, d, prefix)
    if cls is TrainConfig and isinstance(d.get("augment"), dict):
        _refuse_booleans(AugmentConfig, d["augment"], "augment.")
    try:
        return TypeAdapter(cls).validate_python(d)
    except ValidationError as exc:
        e = exc.errors()[0]
        if not e["loc"] and isinstance(e.get("ctx", {}).get("error"), ConfigError):  # a check across fields: its own message
            raise ConfigError(str(e["ctx"]["error"])) from None
        key = prefix + ".".join(str(x) for x in e["loc"])
        got = e.get("input")
        msg = e["msg"][0].lower() + e["msg"][1:]
        raise ConfigError(f"{key}: {msg} (given: {got!r})") from None


_SCALARS = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}
# Left to their own checks: '' is read as no pattern (and stored as null); data and out say what they must name.
_BLANK_MEANS_NONE = {"group_pattern", "data", "out"}


def _check_types(obj: Any, prefix: str = "") -> None:
    """Refuse a value of the wrong type given in Python (``image_size=128.5``, ``hflip="false"``)."""
    hints = {"int": int, "float": float, "bool": bool, "str": str, "int | None": int, "float | None": float, "str | None": str}
    for f in fields(obj):
        want = hints.get(f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""))
        v = getattr(obj, f.name)
        if want is None or (v is None and "None" in str(f.type)):
            continue
        if want in (int, float) and isinstance(v, (np.integer, np.floating)) and not isinstance(v, np.bool_):
            # np.int64(128) from a notebook's array is a number: stored as Python's, so config.yaml can write it
            if want is int and isinstance(v, np.floating) or not np.isfinite(v):
                raise ConfigError(f"{prefix}{f.name} must be {'a whole number' if want is int else 'a finite number'}, got {v!r}")
            v = want(v)
            object.__setattr__(obj, f.name, v)
        ok = isinstance(v, _SCALARS[want]) and (want is bool or not isinstance(v, bool))
        if not ok:
            raise ConfigError(f"{prefix}{f.name} must be {'a number' if want is float else want.__name__}, got {v!r}")
        if want is str and not v.strip() and f.name not in _BLANK_MEANS_NONE:
            # data=" " or positive="" were accepted, to fail (or be ignored) later
            raise ConfigError(f"{prefix}{f.name} must not be blank" + ("; leave it out (None) for none" if "None" in str(f.type) else ""))


def cpu_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's check: AVX512-BF16 or AMX)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _cuda_bf16(device: torch.device) -> bool:
    """Whether a CUDA device computes bfloat16 natively (compute capability 8.0 and newer)."""
    import torch

    with torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def training_cache_dir(cache_dir: str, out: str | None, run_path: Path) -> str | None:
    """A relative ``cache_dir`` of a run's config, where the training found it: relative to the folder the training ran in,
    which is the run folder less its relative ``out`` (``runs/demo`` at ``/work/runs/demo``: ``/work``). None (the default
    cache) when that cannot be told: relative to wherever a later command ran, evaluate built a second cache of the images there."""
    parts = Path(out).parts if out and not Path(out).is_absolute() else ()
    here = Path(run_path).resolve().parts
    if parts and ".." not in parts and len(here) > len(parts) and here[-len(parts):] == parts:
        return str(Path(*here[: -len(parts)]) / cache_dir)
    return None
