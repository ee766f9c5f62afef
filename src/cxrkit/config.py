"""The typed training configuration: CLI -> :class:`TrainConfig` -> ``config.yaml`` in the run -> read back."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from cxrkit.data.augment import AugmentConfig, default_augment
from cxrkit.data.intensity import INTENSITY_MODES


@dataclass
class TrainConfig:
    """Everything that decides how a model is trained; saved in every run as ``config.yaml``."""

    data: str
    out: str = "runs/run"
    labels: str | None = None
    label_column: str | None = None
    task: str = "auto"
    resplit: bool = False
    model: str = "cnn"
    width: int | None = None
    dropout: float | None = None
    image_size: int = 224
    aspect: str = "pad"
    intensity: str = "none"
    crop_border: bool = False
    positive: str | None = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    group_pattern: str | None = None
    allow_leakage: bool = False
    seed: int = 0
    epochs: int = 30
    patience: int = 6
    max_minutes: float | None = None
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    class_weights: bool = True
    oversample: bool = False
    site_balanced: bool = False
    threshold_rule: str = "youden"
    precision: str = "auto"
    channels_last: bool = True
    workers: int = 0
    pretrained: str | None = None
    freeze: str = "none"
    head_epochs: int = 0
    backbone_lr_scale: float = 1.0
    tta: bool = False
    cache_dir: str | None = None
    augment: AugmentConfig = field(default_factory=default_augment)

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**self.augment)
        checks = [
            (self.image_size >= 16, "image_size must be at least 16"),
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.batch_size >= 2, "batch_size must be at least 2 (batch norm needs two images)"),
            (self.lr > 0, "lr must be positive"),
            (self.schedule in ("cosine", "plateau", "constant"), "schedule must be cosine, plateau or constant"),
            (self.precision in ("auto", "32", "bf16"), "precision must be auto, 32 or bf16"),
            (self.aspect in ("pad", "squash"), "aspect must be pad or squash"),
            (self.intensity in INTENSITY_MODES, f"intensity must be one of {', '.join(INTENSITY_MODES)}"),
            (self.workers >= 0, "workers must be >= 0"),
            (self.task in ("auto", "binary", "multiclass", "multilabel"), "task must be auto, binary, multiclass or multilabel"),
            (self.freeze in ("none", "backbone"), "freeze must be none or backbone"),
            (self.head_epochs >= 0, "head_epochs must be >= 0"),
            (self.head_epochs < self.epochs or self.head_epochs == 0, "head_epochs must be fewer than epochs"),
            (not (self.head_epochs and self.freeze == "backbone"), "head_epochs (two-stage) and freeze=backbone exclude each other"),
            (self.max_minutes is None or self.max_minutes > 0, "max_minutes must be positive"),
            (self.backbone_lr_scale > 0, "backbone_lr_scale must be positive"),
            (self.width is None or self.width >= 1, "width must be at least 1"),
            (self.dropout is None or 0 <= self.dropout < 1, "dropout must be in [0, 1)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    def resolved_precision(self) -> str:
        """``bf16`` when asked, or when ``auto`` and the CPU has native bfloat16 (measured 3-4x faster
        training there, see benchmarks/cpu_speed.py); otherwise ``32``."""
        if self.precision != "auto":
            return self.precision
        import torch

        try:
            return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "32"
        except (AttributeError, RuntimeError):
            return "32"

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
    def from_dict(cls, d: dict) -> TrainConfig:
        """Build a config from a dict, rejecting unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a config written by :meth:`save`."""
        return cls.from_dict(yaml.safe_load(Path(path).read_text()))
