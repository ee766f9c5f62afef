"""The training loop: AdamW, a cosine or plateau schedule, class-weighted loss, early stopping on
validation AUC, best checkpoint kept, seeded and reproducible on CPU.

A plain loop (about 150 lines) rather than Lightning: on a 2-core CPU the whole dataset sits in a
memory-mapped uint8 array and augmentation runs batched in the training step, so the features a
framework adds (device placement, callbacks, loggers) would be indirection around the same lines.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from cxrkit import __version__
from cxrkit.audit.messages import is_warning
from cxrkit.config import TrainConfig
from cxrkit.data.augment import augment_batch
from cxrkit.data.dataset import LabelledImages, load_dataset
from cxrkit.data.preprocess import Preprocessing, intensity_stats
from cxrkit.data.sources import positive_is_guessed
from cxrkit.data.splits import OWN_ID_PREFIX
from cxrkit.metrics.thresholds import cases_needed, parse_rule, rule_confidence
from cxrkit.models.mixstyle import MixStyle
from cxrkit.models.pretrained import initialise
from cxrkit.models.registry import MODELS, build_model, count_parameters, split_parameters
from cxrkit.models.torch_files import nonfinite_tensors
from cxrkit.record import (
    CONFIG_FILE,
    HISTORY_FILE,
    META_FILE,
    MODEL_FILE,
    RUN_OUTPUTS,
    SHIFT_FILE,
    ImageSpec,
    RunMeta,
    atomic_write_csv,
    atomic_write_text,
    file_sha256,
    write_meta,
)
from cxrkit.record.files import CHECKPOINT_DIR, METRICS_FILE, PLOTS_DIR, PREDICTIONS_FILE, REPORT_FILE, SPLITS_FILE, all_or_nothing
from cxrkit.record.lock import run_lock
from cxrkit.record.meta import now
from cxrkit.run import probabilities, save_weights, weights_inputs
from cxrkit.tasks import Task, get_task
from cxrkit.training.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from cxrkit.training.distributed import Distributed, setup_distributed, teardown_distributed
from cxrkit.training.imbalance import class_counts, make_loss, oversampled_order, repeat_factors
from cxrkit.training.tracking import Tracker
from cxrkit.training.weight_average import effective_ema_epochs, ema_decay, weight_average


class _Batches(Dataset):
    """Indexable by a list of indices: returns a whole uint8 batch and its labels in one read."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.sort(np.asarray(idx))  # sorted reads are sequential on a memory map
        return torch.from_numpy(np.ascontiguousarray(self.images[idx])), torch.from_numpy(self.labels[idx])


def _loader(
    ds: LabelledImages, index: np.ndarray, batch_size: int, workers: int, order: np.ndarray | None = None, ctx: Distributed | None = None,
) -> DataLoader:
    idx = index if order is None else index[order]
    batches = [idx[i : i + batch_size].tolist() for i in range(0, len(idx), batch_size)]
    if ctx is not None and ctx.enabled:
        # Every process must take the same number of steps: a global batch too small to give each two images is dropped.
        batches = [ctx.share(b) for b in batches if len(b) >= 2 * ctx.world]
    return DataLoader(_Batches(ds.images, ds.labels), sampler=batches, batch_size=None, num_workers=workers)


@torch.inference_mode()
def predict_index(
    model: torch.nn.Module, ds: LabelledImages, index: np.ndarray, pre: Preprocessing, task: str,
    batch_size: int = 64, workers: int = 0, channels_last: bool = False, precision: str = "32", device: torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (N, K) and logits for the images at ``index``, in index order."""
    model.eval()
    device = device or torch.device("cpu")
    probs, logits = [], []
    for xb, _ in _loader(ds, index, batch_size, workers):
        x = pre(xb.numpy()).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(x).float().cpu()
        logits.append(out)
        probs.append(probabilities(out, task))
    return torch.cat(probs).numpy(), torch.cat(logits)


def _inputs(s) -> dict:
    """The inputs recorded in the weights' header, as meta.json will record them (see ``_record``)."""
    return weights_inputs(ImageSpec(**s.pre.to_dict()), s.cfg.tta, bool(s.cfg.tta and s.cfg.augment.hflip))


def _write_run_inputs(cfg: TrainConfig, ds: LabelledImages, train_idx: np.ndarray, out: Path) -> None:
    """config.yaml, the shift reference, splits.csv and skipped.csv: what the run was trained from."""
    from cxrkit.data.identity import pixel_hashes
    from cxrkit.data.shift import build_reference

    cfg.save(out / CONFIG_FILE)
    reference = build_reference(ds.images[train_idx], *ds.label_groups(train_idx), cfg.seed)
    if ds.sites is not None:  # each site's own training images, for a per-site shift check
        reference["per_site"] = {site: build_reference(ds.images[train_idx[ds.sites[train_idx] == site]],
                                                       *ds.label_groups(train_idx[ds.sites[train_idx] == site]), cfg.seed)["overall"]
                                 for site in np.unique(ds.sites[train_idx])}
    atomic_write_text(out / SHIFT_FILE, json.dumps(reference))
    # The pixels' hash lets `cxrkit evaluate` on other data find the images this run has already seen (a copy, a zip).
    hashes = pixel_hashes(ds.images)
    # The patient lets `cxrkit compare` pair two runs' figures by patient, as evaluate does (blank: the image is its own).
    patients = ["" if p is None or p.startswith(OWN_ID_PREFIX) else p for p in ds.patients] if ds.patients else [""] * len(ds.relpaths)
    atomic_write_csv(
        out / SPLITS_FILE,
        [{"path": rel, "label": ds.label_text(i), "split": ds.splits[i], "decoded": bool(ds.cache.ok[i]),
          "pixels": hashes[i] if ds.cache.ok[i] else "", "patient": patients[i]}
         for i, rel in enumerate(ds.relpaths)],
        ["path", "label", "split", "decoded", "pixels", "patient"],
    )
    atomic_write_csv(out / "skipped.csv", [dict(zip(("path", "split", "reason"), s)) for s in ds.skipped()], ["path", "split", "reason"])


def _lr_lambda(total_steps: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def prepare_run_folder(out: Path, overwrite: bool, resume: bool = False) -> None:
    """Create the run folder; refuse to mix a new run with an old one unless ``overwrite``, then clear the old outputs
    (a resumed run keeps them: they are rewritten as it goes)."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; give a folder for the run")
    if resume and find_checkpoint(out) is not None:
        return
    holds_run = (out / META_FILE).exists() or (out / MODEL_FILE).exists()
    # An unfinished run without a checkpoint (the disk filled before the first one) has nothing to continue: --resume, as
    # every message advises, starts it afresh. It was refused with "already holds a run".
    if holds_run and not overwrite and not (resume and not _finished(out)):
        # Refused before anything is deleted: an interrupted run's checkpoint must survive a command without --resume.
        unfinished = find_checkpoint(out) is not None and not _finished(out)  # a finished run keeps its checkpoint too
        raise FileExistsError(f"{out} already holds a run" + ("; it stopped before finishing: add --resume to continue it," if unfinished else ";")
                              + " choose another --out or pass --overwrite")
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    if holds_run:
        for name in RUN_OUTPUTS:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / PLOTS_DIR, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def _finished(out: Path) -> bool:
    """Whether ``out`` holds a run whose meta.json says it finished (a damaged meta.json says nothing: not finished)."""
    try:
        meta = json.loads((out / META_FILE).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict):
        return False
    if "complete" in meta:
        return meta["complete"] is True
    # Runs written before the flag, read as cxrkit.record.meta reads them: complete once a threshold was stored.
    return meta.get("task") == "multiclass" or bool(meta.get("thresholds") or ((meta.get("threshold") or {}).get("value") is not None))


def _set_backbone_trainable(backbone: list[torch.nn.Parameter], trainable: bool) -> None:
    for p in backbone:
        p.requires_grad_(trainable)


def _freeze_batchnorm_stats(model: torch.nn.Module, head_prefix: str) -> None:
    """Put backbone normalisation layers in eval mode: a frozen backbone keeps its (ImageNet) statistics."""
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) and not name.startswith(head_prefix + "."):
            mod.eval()


EpochCallback = Callable[[int, float], None]


@dataclass
class _Setup:
    """What the epochs need, built once: data, model, loss, optimiser and schedule."""

    cfg: TrainConfig
    ctx: Distributed
    out: Path
    ds: LabelledImages
    audit: dict
    train_idx: np.ndarray
    val_idx: np.ndarray
    task: Task
    counts: np.ndarray
    pre: Preprocessing
    model: torch.nn.Module
    train_model: torch.nn.Module
    pretrained_report: dict | None
    criterion: torch.nn.Module
    loss_info: dict
    factors: np.ndarray | None
    backbone: list
    head_prefix: str
    optimizer: torch.optim.Optimizer
    scheduler: object
    steps_per_epoch: int
    precision: str
    rng: np.random.Generator
    aug_gen: torch.Generator
    ema: AveragedModel | None = None
    mixstyle: MixStyle | None = None

    @property
    def kept_model(self) -> torch.nn.Module:
        """The weights that are validated, kept and saved: the moving average when there is one."""
        return self.model if self.ema is None else self.ema.module


class TrainingDivergedError(ValueError):
    """Training produced no usable model (the weights became NaN or infinite): a user-facing error, not a bug."""


@dataclass
class _Progress:
    """Where training stands; saved in every checkpoint so a resumed run continues exactly."""

    history: list = field(default_factory=list)
    best_auc: float = -1.0
    best_loss: float = float("inf")
    best_epoch: int = 0
    best_state: dict | None = None
    bad_epochs: int = 0
    first_epoch: int = 1
    stopped_by: str = "epochs"
    interrupted: bool = False
    diverged: str = ""  # where the weights became NaN or infinite
    keep: str = "best"  # which epoch the run kept: "best" on validation or "last"
    seconds_before: float = 0.0


def _check_resume(cfg: TrainConfig, out: Path, resume: bool) -> Path | None:
    """The checkpoint to continue from (None: start afresh); refuse a resume with other settings."""
    ckpt = find_checkpoint(out) if resume else None
    if ckpt is not None:
        saved = TrainConfig.load_saved(out / CONFIG_FILE).to_dict()
        # The folder may have moved since (--out names where it is now), so out is not compared.
        differ = sorted(k for k, v in cfg.to_dict().items() if k not in RESUME_MAY_CHANGE and saved.get(k) != v)
        if differ:
            raise ValueError(f"--resume needs the configuration the run was started with; these differ: {', '.join(differ)}")
    return ckpt


# Settings that decide only how the trained model's threshold is chosen: a resumed run may change them.
RESUME_MAY_CHANGE = ("out", "threshold_rule", "allow_point_estimate", "referral")


def resumed_config(out: Path, data: str, given: dict, how: str) -> TrainConfig:
    """The settings a resumed run continues with: its own config.yaml, with the data and the run folder where they are now
    and the options that may change (:data:`RESUME_MAY_CHANGE`) from ``given``; any other option in ``given`` must agree
    with the run's. ``how`` names the caller's way of asking (``--resume``, ``resume=True``) in the errors."""
    from cxrkit.config import ConfigError

    saved = TrainConfig.load_saved(Path(out) / CONFIG_FILE).to_dict()
    if Path(saved["data"]).resolve() != Path(data).resolve() and not Path(data).exists():
        raise ConfigError(f"{out} was trained on {saved['data']}, and {data} does not exist; {how} continues the same run")
    saved.update(data=str(data), out=str(out))
    for key in ("cache_dir", "labels"):  # given again from here; config.yaml's are resolved where the training ran
        if given.get(key) and not Path(given[key]).is_absolute() and Path(saved.get(key) or "").is_absolute():
            given = {**given, key: str(Path(given[key]).resolve())}
    clash = {k: v for k, v in given.items() if k not in RESUME_MAY_CHANGE and saved.get(k) != v}
    if clash:
        raise ConfigError(f"{how} continues {out} with its own settings, which differ: "
                          + ", ".join(f"{k} {saved.get(k)!r} (given {v!r})" for k, v in clash.items()))
    return TrainConfig.from_dict({**saved, **{k: v for k, v in given.items() if k in RESUME_MAY_CHANGE}})


def _check_guarantee_possible(cfg: TrainConfig, task: Task, y_val: np.ndarray, patients: list[str] | None = None) -> None:
    """Refuse before training when the validation split is too small for the guaranteed threshold rule asked for."""
    from cxrkit.metrics.intervals import effective_cases_by_prefix

    confidence = rule_confidence(cfg.threshold_rule)
    if confidence is None or cfg.allow_point_estimate or task.name != "binary":
        return
    kind, target = parse_rule(cfg.threshold_rule)
    of_class = y_val == (1 if kind == "sensitivity" else 0)
    n = int(of_class.sum())
    need = cases_needed(target, confidence)
    # With a patient's several images the bound counts patients: even every case found is worth fewer independent cases.
    worth = float(effective_cases_by_prefix(np.asarray(patients, dtype=object)[of_class].astype(str))[-1]) if patients and n else n
    if worth < need:
        what = "positive" if kind == "sensitivity" else "negative"
        held = "" if worth == n else f" from {len(set(np.asarray(patients, dtype=object)[of_class]))} patients, worth {worth:.1f} independent cases"
        raise ValueError(
            f"--threshold-rule {cfg.threshold_rule} needs at least {need} {what} validation images (more if the model misses any); "
            f"the validation split has {n}{held}. Raise --val-fraction, lower the target or confidence, or add --allow-point-estimate"
        )


def _warn_about_patient_ids_in_names(ds: LabelledImages, log: Callable[[str], None], splits_given: bool = False) -> None:
    """Images split one by one while their names look like patient IDs: the same patient may sit in train and test."""
    from cxrkit.audit.messages import patient_names_message
    from cxrkit.data.splits import guess_patient_pattern, ids_in_several_splits

    pattern = guess_patient_pattern(ds.relpaths, None if ds.multilabel else [ds.class_names[y] for y in ds.labels])
    if pattern is None:
        return
    n, example = ids_in_several_splits(ds.relpaths, list(ds.splits), pattern)
    if n:
        log("splits: " + patient_names_message(n, example, pattern, splits_given))


def pretrained_source(pretrained: str | None, classes: list[str]) -> tuple[str | None, list[str] | None]:
    """The weights file ``--pretrained`` names (a cxrkit run folder means its model.safetensors), and the classes of the
    run it comes from when they differ from ``classes`` (None when they match or are unknown).

    A head trained for other classes answers another question (pneumonia, not TB), so it must not carry over; a run of
    the same classes (fine-tuning a model on local images) keeps it.
    """
    if pretrained is None or pretrained in ("none", "imagenet"):
        return pretrained, None
    path = Path(pretrained)
    if path.is_dir():
        if not (path / MODEL_FILE).is_file():
            raise ValueError(f"--pretrained {path} is a folder without {MODEL_FILE}: give a finished cxrkit run folder or a "
                             ".safetensors / .pt weights file")
        path = path / MODEL_FILE
    try:
        theirs = json.loads((path.parent / META_FILE).read_text()).get("classes")
    except (OSError, ValueError, AttributeError):
        theirs = None  # a bare weights file: nothing says what its head was trained for
    if not isinstance(theirs, list) or not all(isinstance(c, str) for c in theirs) or theirs == list(classes):
        return str(path), None
    return str(path), theirs


def _check_splits_for_training(ds: LabelledImages, cfg: TrainConfig, log: Callable[[str], None]) -> None:
    """Refuse, before the audit and the exposure probe, a split with no training or no validation images."""
    if len(ds.relpaths) and not np.asarray(ds.cache.ok).any():  # said as "no training images after the split", which is not why
        path, _, reason = ds.skipped()[0]
        raise ValueError(f"none of the {len(ds.relpaths)} images can be used (each is listed with its reason in skipped.csv); e.g. {path}: {reason}")
    empty = [s for s in ("train", "val") if len(ds.index(s)) == 0]
    if not empty:
        _check_validation_classes(ds, log, cut=cfg.resplit)
        test = ds.index("test")
        if len(test) and not ds.multilabel:
            # Said only by evaluate, after training ("no tb images, so ROC-AUC cannot be measured"): 3 tb images of 63 left none there.
            lacking = [c for i, c in enumerate(ds.class_names) if not (ds.labels[test] == i).any()]
            if lacking:
                log(f"warning: the test split has no {' or '.join(lacking)} images: its figures cannot measure how the model finds "
                    f"{' or '.join(lacking)} (no sensitivity, no ROC-AUC); add images of {'that class' if len(lacking) == 1 else 'those classes'}")
        return
    if empty == ["val"]:
        raise ValueError("training needs validation images (for the kept epoch, the threshold and calibration) and there are none: "
                         + ("give --val-fraction above 0, or a val/ folder" if cfg.val_fraction == 0 else "give a val/ folder or more images"))
    raise ValueError(f"training needs training images and there are none after the {' and '.join(s for s in ('val', 'test') if len(ds.index(s)))} "
                     "split(s) took theirs: lower --val-fraction / --test-fraction, or add images")


def _note_dataset_findings(ds: LabelledImages, log: Callable[[str], None]) -> None:
    """Say what the dataset holds that changes what the figures mean: images left out (only the report counted those in formats
    cxrkit does not read; those outside any class folder were counted nowhere; unusable ones), sites lacking a class, and patient
    IDs that may be one patient spelled two ways."""
    from cxrkit.data.sources import left_out_notes

    for sentence in left_out_notes(ds.source):
        log(f"note: {sentence}")
    sites = getattr(ds, "sites", None)
    if sites is not None and not ds.multilabel:
        for site in sorted(set(sites.tolist())):
            lacking = [c for i, c in enumerate(ds.class_names) if not ((sites == site) & (ds.labels == i)).any()]
            if lacking:  # the site itself then tells the classes apart: a shortcut the audit's probes may not see
                log(f"warning: site {site} has no {' or '.join(lacking)} images: the model can learn that {site}'s images are never "
                    f"{' or '.join(lacking)} (a shortcut through the site), and {site}'s own figures have no ROC-AUC")
    if getattr(ds, "patients", None) is not None:
        ids = {str(p) for p in ds.patients if p is not None and not str(p).startswith(OWN_ID_PREFIX)}
        spellings: dict[str, list[str]] = {}
        for p in sorted(ids):
            key = " ".join(p.split()).casefold()
            spellings.setdefault(key.lstrip("0") or "0" if key.isdigit() else key, []).append(p)  # Excel drops leading zeros
        alike = [v for v in spellings.values() if len(v) > 1]
        if alike:  # two patients to the split, who may be one: the split can then put one person on both sides
            log(f"note: {len(alike)} patient ID(s) differ from another only in case, spaces or leading zeros (e.g. {' and '.join(alike[0][:2])}); "
                "they are split as different patients. If they are one patient, write the IDs alike")
    skipped = ds.skipped()
    if skipped:  # listed in skipped.csv and counted in the report, but training itself said nothing
        path, _, reason = skipped[0]
        log(f"note: {len(skipped)} image(s) could not be used and were left out (e.g. {path}: {reason}); skipped.csv in the run lists them all")


def _check_validation_classes(ds: LabelledImages, log: Callable[[str], None], cut: bool = False) -> None:
    """Refuse a validation split with fewer than two classes before training (was an error after the last epoch: "no epoch gave
    a validation AUC"), and say which classes a multi-class validation split lacks (their threshold and AUC go unchecked)."""
    given = not cut and any(s.split == "val" for s in ds.source.samples)  # --resplit (cut) ignores a given val/ folder
    layout = str(getattr(ds.source, "layout", ""))
    if not given:
        where = "the validation split cxrkit cut"
    elif "table" in layout:  # "remove val/" named a folder that does not exist: the split is the table's column
        where = "the table's val rows"
    elif "npz" in layout:
        where = "the file's val arrays"
    else:
        where = "the val/ folder"
    has = "have" if where.endswith(("rows", "arrays")) else "has"
    if ds.multilabel:
        y_val = ds.labels[ds.index("val")]
        if len(y_val) and not y_val.any():  # was "no epoch gave a validation AUC" after the last epoch
            raise ValueError(f"{where} {has} {len(y_val)} image(s) and none with a finding, and choosing the kept epoch and the "
                             "thresholds needs images with findings there; add some, or give more patients so the cut can hold them")
        return
    present = set(np.unique(ds.labels[ds.index("val")]).tolist())
    missing = [c for i, c in enumerate(ds.class_names) if i not in present]
    if not missing:
        return
    totals = {c: int((ds.labels == i).sum()) for i, c in enumerate(ds.class_names)}
    # A class of 1 or 2 images cannot be in training, validation and test at once: "a larger --val-fraction" cannot help.
    scarce = [c for c in missing if totals[c] < 3 and not given]
    few = "; ".join(f"class {c} has only {totals[c]} image{'' if totals[c] == 1 else 's'} in all" for c in scarce)
    if len(present) < 2:
        fix = ("add such rows, or leave the split column empty so cxrkit cuts a stratified validation split" if "table" in where else
               "add such images, or leave them out so cxrkit cuts a stratified validation split" if "npz" in where else
               "add such images to val/, or remove val/ so cxrkit cuts a stratified validation split" if "folder" in where else
               f"{few}: add images of it (at least 3, far more for a useful model) or remove it" if scarce else
               "add images of that class, or give a larger --val-fraction")
        raise ValueError(f"{where} {has} no {' or '.join(missing)} images, and choosing the kept epoch and the threshold needs every class "
                         f"there: {fix}")
    log(f"warning: {where} {has} no {', '.join(missing)} images: the kept epoch is chosen on the other classes, and how well the model "
        f"finds {', '.join(missing)} is not checked before the test split"
        + (f" ({few}: neither validation nor test can measure it; add images of it, or remove it)" if scarce else ""))


def _choose_intensity(ds: LabelledImages) -> tuple[str, dict]:
    """``--intensity auto``: the exposure probe on the training and validation images (never the test split), with its
    own fixed cross-validation seed, so that training seeds on the same split decide alike."""
    from cxrkit.audit.exposure import choose_intensity

    if ds.multilabel:
        return "none", {"asked": "auto", "intensity": "none", "auc": None,
                        # said beside the audit's own probe (any finding against none), "not run" read as a contradiction
                        "message": "--intensity auto does not decide for a multi-label task (the audit's exposure probe compares images "
                                   "with any finding against those with none); images kept as they are (--intensity none)"}
    index = np.concatenate([ds.index("train"), ds.index("val")])
    return choose_intensity(ds.images, ds.labels, ds.class_names, index, ds.sites, np.asarray(ds.cache.ok))


def _build(cfg: TrainConfig, ctx: Distributed, out: Path, progress: bool, log: Callable[[str], None]) -> _Setup:
    """Load and audit the data, then build the model, loss, optimiser and learning-rate schedule."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed + ctx.rank)  # each process augments its own images differently
    from cxrkit.audit.dataset_audit import audit_before_training, duplicate_group_ids

    copies = (lambda paths: duplicate_group_ids(paths, cfg.cache_dir, progress)) if cfg.group_duplicates else None

    def load(intensity: str) -> LabelledImages:
        return load_dataset(
            cfg.data, cfg.image_size, cfg.aspect, cfg.positive, cfg.val_fraction, cfg.test_fraction,
            cfg.data_split_seed, cfg.group_pattern, cfg.cache_dir, progress=progress, intensity=intensity, crop_border=cfg.crop_border,
            duplicate_groups=copies, **cfg.dataset_options(),
        )

    intensity, exposure = cfg.intensity, None
    ds = load("none" if intensity == "auto" else intensity)
    if hasattr(ds.source, "describe"):  # a label table: which columns became labels and patients
        log(ds.source.describe())
    _check_splits_for_training(ds, cfg, log)
    _note_dataset_findings(ds, log)
    if cfg.positive is None and not ds.multilabel and positive_is_guessed(ds.class_names):
        # Every sensitivity, PPV and threshold rule is about this class: a guess is said, not kept silent.
        log(f"note: {ds.positive} is taken as the positive (disease) class, the second name alphabetically: neither name says "
            f"normal, healthy or no finding. If {ds.class_names[0]} is the disease, train again with --positive {ds.class_names[0]}")
    if cfg.intensity == "auto":
        intensity, exposure = _choose_intensity(ds)
        log(f"intensity (exposure probe on the training and validation images): {exposure['message']}")
        if intensity != "none":
            splits = ds.splits
            ds = load(intensity)
            if not np.array_equal(ds.splits, splits):  # the split depends on files and seeds only; checked, not assumed
                raise RuntimeError("the splits changed when the images were decoded again with --intensity histeq")
    if ds.duplicate_groups:
        log(f"splits: {ds.duplicate_groups} group{'' if ds.duplicate_groups == 1 else 's'} of identical or near-identical images kept in one split each "
            "(cxrkit cut the splits, so copies were grouped like a patient's images)")

    if ds.patients is None:
        _warn_about_patient_ids_in_names(ds, log, bool(ds.source.given_splits) and not cfg.resplit)

    audit = audit_before_training(ds, cfg.group_pattern, cfg.allow_leakage, out, cfg.seed, cfg.cache_dir, progress, resplit=cfg.resplit,
                                  intensity_choice=exposure)
    if exposure is not None:
        audit["exposure"] = exposure
    for m in audit["messages"]:
        log(f"audit: {m}")
    train_idx, val_idx = ds.index("train"), ds.index("val")
    task, k = get_task(ds.task), len(ds.class_names)
    _check_guarantee_possible(cfg, task, ds.labels[val_idx], ds.patients_of(val_idx))
    if cfg.referral and task.name != "binary":
        raise ValueError("--referral needs a binary task (one disease against normal)")
    if task.name == "multiclass" and cfg.threshold_rule != "youden":  # it was kept in config.yaml and applied to nothing
        raise ValueError(f"--threshold-rule {cfg.threshold_rule} needs a binary or multi-label task; a multi-class run calls the most "
                         "probable class, with no threshold to choose")
    mean, std = intensity_stats(ds.images, train_idx)
    pre = Preprocessing(cfg.image_size, cfg.aspect, mean, std, intensity, cfg.crop_border)

    model = build_model(cfg.model, task.num_outputs(k), **cfg.model_options())
    weights, other_classes = pretrained_source(cfg.pretrained, ds.class_names)
    pretrained_report = initialise(model, cfg.model, weights, keep_head=other_classes is None)
    if pretrained_report:
        r = pretrained_report
        if other_classes is not None:
            head = (f"the classifier head starts afresh: the run it comes from was trained for other classes "
                    f"({', '.join(other_classes)})")
            r["head_classes"] = other_classes
        elif r["head"] == "loaded":
            head = "the classifier head included"
        else:
            head = "the classifier head starts afresh"
        log(f"pretrained: {r['loaded']} tensors loaded from {r['source']} ({len(r['adapted'])} adapted to grayscale), "
            f"{len(r['skipped'])} skipped, {len(r['missing'])} of the model's left at their initial values; {head}")
    if cfg.precision == "bf16" and ctx.device.type == "cpu" and ctx.is_main:  # one warning, not one per process
        from cxrkit.config import cpu_bf16

        if not cpu_bf16():  # measured: 10-11x slower than float32 for efficientnet-lite0 and cnn at 128 px (benchmarks/cpu_speed.py)
            log("warning: --precision bf16 on a CPU without native bfloat16 (AVX512-BF16 or AMX): emulated, about 10x slower than "
                "--precision 32 on this machine; --precision auto chooses 32 here")
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = model.to(ctx.device)
    counts = class_counts(ds.labels[train_idx], k)
    criterion, loss_info = make_loss(task.name, counts, cfg.class_weights, n_images=len(train_idx))
    criterion = criterion.to(ctx.device)
    factors = None
    if cfg.oversample:
        if task.name != "multilabel":
            raise ValueError("--oversample applies to multi-label tasks (binary and multi-class use class weights)")
        factors = repeat_factors(ds.labels[train_idx])
        loss_info["oversampling"] = {"method": "repeat-factor sampling", "threshold": 0.1,
                                     "images_per_epoch": float(factors.sum()), "max_repeat": float(factors.max())}
    from cxrkit.data.multisite import site_factors

    per_site = None if ds.sites is None else site_factors(ds.sites[train_idx])
    # default (None): balance several sources whose training shares differ; equal sites are left to plain shuffling
    auto = cfg.site_balanced is None and per_site is not None and factors is None and not np.allclose(per_site, 1)
    if cfg.site_balanced or auto:
        if per_site is None:
            raise ValueError("--site-balanced needs several sources: cxrkit train SITE_A SITE_B ... (or a sources .yaml)")
        if factors is not None:
            raise ValueError("--site-balanced and --oversample exclude each other")
        factors = per_site
        loss_info["site_balanced"] = {"method": "repeat sampling per site", "images_per_epoch": float(factors.sum())}
    backbone, head = split_parameters(model, cfg.model)
    groups = [{"params": head, "lr": cfg.lr, "name": "head"}]
    if cfg.freeze == "backbone":
        _set_backbone_trainable(backbone, False)
    else:
        groups.append({"params": backbone, "lr": cfg.lr * cfg.backbone_lr_scale, "name": "backbone"})
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil((len(train_idx) if factors is None else round(factors.sum())) / cfg.batch_size)
    if cfg.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.epochs * steps_per_epoch, steps_per_epoch))
    elif cfg.schedule == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=2)
    else:
        scheduler = None
    ema = None
    if cfg.ema_epochs:
        ema = weight_average(model, effective_ema_epochs(cfg.ema_epochs, cfg.epochs), steps_per_epoch)
    # attached after the average's copy is made: the hooks act on the network being trained only
    mixstyle = MixStyle(cfg.mixstyle, seed=cfg.seed + 1000 * ctx.rank).attach(model, MODELS[cfg.model].mixstyle_layers) if cfg.mixstyle else None
    train_model = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)
    return _Setup(cfg, ctx, out, ds, audit, train_idx, val_idx, task, counts, pre, model, train_model, pretrained_report, criterion,
                  loss_info, factors, backbone, MODELS[cfg.model].head, optimizer, scheduler, steps_per_epoch, cfg.resolved_precision(ctx.device),
                  rng, aug_gen, ema, mixstyle)


def _restore(s: _Setup, ckpt: Path | None, log: Callable[[str], None]) -> _Progress:
    """A fresh progress record, or the checkpoint's (model, optimiser, schedule and random states restored)."""
    if ckpt is None:
        return _Progress()
    st, best_state = load_checkpoint(ckpt, s.model, s.optimizer, s.scheduler, s.rng, s.aug_gen, s.ema)
    prog = _Progress(st["history"], st["best_auc"], st["best_loss"], st["best_epoch"], best_state, st["bad_epochs"],
                     first_epoch=st["epoch"] + 1 if st["stopped_by"] is None else s.cfg.epochs + 1,
                     stopped_by=st["stopped_by"] or "epochs", seconds_before=st["seconds"])
    if s.mixstyle is not None:
        s.mixstyle.rng.bit_generator.state = st["mixstyle_rng"]
    if s.cfg.head_epochs:
        _set_backbone_trainable(s.backbone, prog.first_epoch > s.cfg.head_epochs)
    log(f"resuming {s.out} after epoch {st['epoch']} (best validation AUC {prog.best_auc:.4f} at epoch {prog.best_epoch})")
    return prog


def _train_epoch(s: _Setup, epoch: int, head_only: bool, progress: bool) -> tuple[list[float], float]:
    """One pass over the (shuffled or oversampled) training images; returns the batch losses and seconds."""
    cfg = s.cfg
    s.model.train()
    if head_only:
        _freeze_batchnorm_stats(s.model, s.head_prefix)
    t0 = time.perf_counter()
    losses: list[float] = []
    order = s.rng.permutation(len(s.train_idx)) if s.factors is None else oversampled_order(s.factors, s.rng)
    batch_bar = tqdm(
        _loader(s.ds, s.train_idx, cfg.batch_size, cfg.workers, order, s.ctx), total=s.steps_per_epoch,
        desc=f"epoch {epoch}", leave=False, unit="batch", disable=not progress or None,
    )
    for xb, yb in batch_bar:
        if len(yb) < 2:  # batch norm cannot train on one image; it is seen again next epoch
            continue
        x = augment_batch(s.pre.to_unit(xb), cfg.augment, s.aug_gen)
        x, mix = _mixup(x, cfg.mixup, s.rng, s.aug_gen)
        x = s.pre.normalize(x).to(s.ctx.device)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(s.ctx.device.type, dtype=torch.bfloat16, enabled=s.precision == "bf16"):
            logits = s.train_model(x)
        loss = _loss(s, logits.float(), yb.to(s.ctx.device), mix)
        s.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        s.optimizer.step()
        if cfg.schedule == "cosine":
            s.scheduler.step()
        if s.ema is not None:
            s.ema.update_parameters(s.model)
        losses.append(loss.item())
        batch_bar.set_postfix(loss=f"{np.mean(losses):.4f}")
    return losses, time.perf_counter() - t0


def _mixup(x: torch.Tensor, alpha: float, rng: np.random.Generator, gen: torch.Generator) -> tuple[torch.Tensor, tuple | None]:
    """Blend each image with another of the batch (weight lam ~ Beta(alpha, alpha)); ``(x, None)`` when off."""
    if not alpha:
        return x, None
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=gen)
    return lam * x + (1.0 - lam) * x[perm], (lam, perm)


def _loss(s: _Setup, logits: torch.Tensor, y: torch.Tensor, mix: tuple | None) -> torch.Tensor:
    """The task's loss; with mixup, the same blend of the losses against both images' labels."""
    if mix is None:
        return s.task.loss(s.criterion, logits, y)
    lam, perm = mix
    return lam * s.task.loss(s.criterion, logits, y) + (1.0 - lam) * s.task.loss(s.criterion, logits, y[perm.to(y.device)])


def _validate(s: _Setup, t_start: float, epoch: int) -> tuple[float, float, bool]:
    """Validation AUC and loss (process 0 measures, the others receive them) and whether the time limit is up."""
    cfg = s.cfg
    val_auc = val_loss = float("nan")
    time_up = False
    if s.ctx.is_main:
        y_val = s.ds.labels[s.val_idx]
        probs, val_logits = predict_index(s.kept_model, s.ds, s.val_idx, s.pre, s.task.name, 64, cfg.workers, cfg.channels_last, s.precision,
                                          s.ctx.device)
        val_loss = float(s.task.loss(s.criterion.cpu(), val_logits, torch.from_numpy(y_val)))
        s.criterion.to(s.ctx.device)
        val_auc = s.task.monitor_auc(y_val, probs)
        time_up = bool(cfg.max_minutes and time.perf_counter() - t_start > 60 * cfg.max_minutes and epoch < cfg.epochs)
    val_auc, val_loss, time_up = s.ctx.broadcast([val_auc, val_loss, time_up])
    return val_auc, val_loss, time_up


# The first epoch's duration is announced as an estimate for the rest only when the rest is long enough to plan around.
ESTIMATE_FROM_S = 60.0


def duration_text(seconds: float) -> str:
    """45 -> '45 s', 200 -> '3 min 20 s', 5400 -> '1 h 30 min'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s" if seconds < 600 and seconds % 60 else f"{round(seconds / 60)} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min"


def time_estimate(epoch_seconds: float, epochs_left: int, patience: int | None, max_minutes: float | None,
                  elapsed: float) -> str | None:
    """One line after the first epoch: how long the remaining epochs take at its pace (None when that is short)."""
    rest = epoch_seconds * epochs_left
    if epochs_left < 1 or rest < ESTIMATE_FROM_S:
        return None
    capped = bool(max_minutes) and elapsed + rest > 60 * max_minutes
    others = "the last epoch takes" if epochs_left == 1 else f"the other {epochs_left} epochs take"
    line = f"this epoch took {duration_text(epoch_seconds)}: {others} about {duration_text(rest)}"
    if capped:
        line += f", so --max-minutes {max_minutes:g} stops training after about {duration_text(60 * max_minutes)}"
    if patience is not None:
        line += f" (sooner if validation AUC stops improving for {patience} epochs)"
    return line + ", then the final evaluation"


def _fit(s: _Setup, prog: _Progress, log: Callable[[str], None], on_epoch: EpochCallback | None, progress: bool,
         tracker: Tracker | None = None) -> None:
    """The epochs: train, validate, keep the best model, checkpoint, stop early or on time; Ctrl-C ends it cleanly."""
    cfg, out = s.cfg, s.out
    t_start = time.perf_counter() - prog.seconds_before
    epoch_bar = tqdm(range(prog.first_epoch, cfg.epochs + 1), desc=f"training {cfg.model}", unit="epoch", disable=not progress or None)
    # The estimate comes from an epoch that trains all layers: a head-only one (--head-epochs) skips the backbone's
    # backward pass and takes a fraction of the time of the epochs after it (6.8 s against 28 s for a resnet18).
    estimate_after = max(prog.first_epoch, cfg.head_epochs + 1)
    try:
        for epoch in epoch_bar:
            head_only = cfg.freeze == "backbone" or epoch <= cfg.head_epochs
            if cfg.head_epochs and epoch in (1, cfg.head_epochs + 1):
                _set_backbone_trainable(s.backbone, not head_only)
                if epoch > 1:
                    prog.bad_epochs = 0  # stage two starts: give the full network its own patience
                    log(f"stage 2: training all layers (backbone learning rate {cfg.lr * cfg.backbone_lr_scale:g})")
            t0 = time.perf_counter()
            losses, train_seconds = _train_epoch(s, epoch, head_only, progress)
            t1 = time.perf_counter()
            val_auc, val_loss, time_up = _validate(s, t_start, epoch)
            if cfg.schedule == "plateau":
                s.scheduler.step(val_auc)
            # NaN/inf weights (an infinite batch-norm variance still gives a finite loss): never kept, and every later
            # epoch would be as broken, so training stops after this epoch's row.
            broken = not np.isfinite(val_loss) or bool(nonfinite_tensors(s.kept_model.state_dict()))
            # Ties in AUC (common once a small validation set is separated perfectly) go to the lower loss.
            improved = not broken and np.isfinite(val_auc) and (
                val_auc > prog.best_auc + 1e-4 or (abs(val_auc - prog.best_auc) <= 1e-4 and val_loss < prog.best_loss)
            )
            if improved:
                prog.best_auc, prog.best_loss, prog.best_epoch, prog.bad_epochs = val_auc, val_loss, epoch, 0
                prog.best_state = copy.deepcopy(s.kept_model.state_dict())
                if s.ctx.is_main:
                    save_weights(s.kept_model, out / MODEL_FILE, s.ds.class_names, _inputs(s))
            else:
                prog.bad_epochs += 1
            row = {
                "epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": val_loss, "val_auc": val_auc,
                "lr": s.optimizer.param_groups[0]["lr"], "stage": "head" if head_only else "all", "train_seconds": train_seconds,
                "val_seconds": time.perf_counter() - t1, "train_images_per_second": len(s.train_idx) / train_seconds,
            }
            prog.history.append(row)
            if tracker is not None and s.ctx.is_main:
                tracker.log_epoch(epoch, row)
            if s.ctx.is_main:
                atomic_write_csv(out / HISTORY_FILE, prog.history, list(prog.history[0]))
            epoch_bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_auc=f"{val_auc:.3f}", best=f"{prog.best_auc:.3f}@{prog.best_epoch}")
            log(
                f"epoch {epoch:3d}/{cfg.epochs}  train loss {row['train_loss']:.4f}  val loss {val_loss:.4f}  "
                f"val AUC {val_auc:.4f}  {row['train_images_per_second']:.0f} img/s{'  *best' if improved else ''}"
            )
            if epoch == estimate_after and not broken:
                estimate = time_estimate(time.perf_counter() - t0, cfg.epochs - epoch, cfg.patience, cfg.max_minutes,
                                         time.perf_counter() - t_start)
                if estimate:
                    log(estimate)
            if broken:
                prog.stopped_by, prog.diverged = "diverged", f"epoch {epoch} (training loss {row['train_loss']:.3g}, validation loss {val_loss})"
                log(f"training diverged in {prog.diverged}: stopping; lower --lr (now {cfg.lr:g})"
                    + (f"; keeping the model of epoch {prog.best_epoch}" if prog.best_state is not None else ""))
                break  # no checkpoint of NaN weights: the last good one stays
            stop = None
            if time_up:
                log(f"time limit: stopping after epoch {epoch} ({cfg.max_minutes:g} minutes reached)")
                stop = "time limit"
            elif cfg.patience is not None and prog.bad_epochs >= cfg.patience and not (cfg.head_epochs and epoch <= cfg.head_epochs):
                log(f"early stop: validation AUC did not improve for {cfg.patience} epochs")
                stop = "early stopping"
            # The stop decision goes into the checkpoint, so a run resumed right here stops as it would have.
            if s.ctx.is_main:
                save_checkpoint(out, s.model, prog.best_state, s.optimizer, s.scheduler, s.rng, s.aug_gen, ema=s.ema, state={
                    "epoch": epoch, "history": prog.history, "best_auc": prog.best_auc, "best_loss": prog.best_loss,
                    "best_epoch": prog.best_epoch, "bad_epochs": prog.bad_epochs, "stopped_by": stop,
                    "seconds": time.perf_counter() - t_start,
                    **({"mixstyle_rng": s.mixstyle.rng.bit_generator.state} if s.mixstyle is not None else {}),
                })
            if on_epoch is not None:
                on_epoch(epoch, val_auc)
            if stop:
                prog.stopped_by = stop
                break
    except KeyboardInterrupt:
        prog.interrupted = True
        # Before the first epoch ends there is no model to keep (the command then says so and keeps nothing).
        log("interrupted: keeping the best model so far and finishing the run" if prog.best_state is not None else
            "interrupted before the first epoch ended: no model to keep")
    prog.seconds_before = time.perf_counter() - t_start
    prog.keep = cfg.resolved_keep()
    if prog.keep == "last" and cfg.keep == "auto" and prog.stopped_by == "time limit":
        # auto keeps the last epoch of a whole schedule; one cut short by the clock ends at a high learning rate
        prog.keep = "best"
        log(f"the time limit cut the schedule short: keeping epoch {prog.best_epoch}, the best on validation (--keep last for the last)")
    if prog.keep == "last":
        _keep_last_epoch(s, prog, log)


def _keep_last_epoch(s: _Setup, prog: _Progress, log: Callable[[str], None]) -> None:
    """``keep: last`` (or ``auto`` without early stopping): the weights after the final epoch replace the best validation epoch's.

    Not after an interruption (the weights are mid-epoch) or a divergence (they are NaN): the best epoch stays, and
    the log says so. After a resume of a finished run the restored checkpoint holds the last epoch's weights.
    """
    if not prog.history or prog.best_epoch == prog.history[-1]["epoch"]:
        return
    last = prog.history[-1]
    if prog.interrupted or prog.diverged or not np.isfinite(last["val_auc"]):
        why = "interrupted" if prog.interrupted else "diverged" if prog.diverged else "no validation AUC"
        log(f"keeping the last epoch: epoch {last['epoch']} is not usable ({why}); "
            f"keeping epoch {prog.best_epoch}, the best on validation")
        prog.keep = "best"
        return
    prog.best_epoch, prog.best_auc, prog.best_loss = last["epoch"], last["val_auc"], last["val_loss"]
    prog.best_state = copy.deepcopy(s.kept_model.state_dict())
    if s.ctx.is_main:
        save_weights(s.kept_model, s.out / MODEL_FILE, s.ds.class_names, _inputs(s))
    log(f"keeping the last epoch, {prog.best_epoch} (validation AUC {prog.best_auc:.4f}), not the best on validation (--keep best for that)")


def _record(s: _Setup, prog: _Progress) -> RunMeta:
    """The run's meta.json: what it is (model, classes, preprocessing), where its data came from, how it trained.
    Not yet complete: the threshold is chosen on validation data afterwards."""
    cfg, ds, model = s.cfg, s.ds, s.model
    trainable, total = count_parameters(model)
    ips = [h["train_images_per_second"] for h in prog.history]
    window = effective_ema_epochs(cfg.ema_epochs, cfg.epochs) if cfg.ema_epochs else None
    meta = RunMeta(
        model=cfg.model, task=s.task.name, classes=list(ds.class_names), num_outputs=s.task.num_outputs(len(ds.class_names)),
        preprocessing=ImageSpec(**s.pre.to_dict()), positive_class=ds.positive,
        model_options={k: v for k, v in cfg.model_options().items() if v is not None and k != "image_size"},
        tta=cfg.tta, tta_flips=bool(cfg.tta and cfg.augment.hflip), complete=False, cxrkit_version=__version__, created=now(),
        audit={**s.audit, "allow_leakage": cfg.allow_leakage},
        data={
            "layout": ds.source.layout,
            # What the user named, for the report: a .zip (root is where it was extracted) and a label table.
            "given": str(ds.source.given) if getattr(ds.source, "given", None) else None,
            "table": str(ds.source.table) if getattr(ds.source, "table", None) else None,
            "label_column": getattr(ds.source, "label_column", None),
            "given_splits": ds.source.given_splits,
            "fingerprint": ds.fingerprint(),
            "train_fingerprint": ds.fingerprint("train"),
            "counts": ds.counts(),
            "sites": None if ds.sites is None else {
                site: {sp: int(((ds.sites == site) & (ds.splits == sp)).sum()) for sp in ("train", "val", "test")}
                for site in np.unique(ds.sites)},
            "images": ds.image_counts(),
            "patient_ids": ds.patients is not None,
            "skipped": len(ds.cache.errors),
            "ignored_non_image_files": len(ds.source.ignored_files),
            "cache_key": ds.cache.key,
            "cache_hit": ds.cache.hit,
            "cache_seconds": ds.cache.seconds,
        },
        training={
            "epochs_run": len(prog.history),
            "best_epoch": prog.best_epoch,
            "keep": prog.keep,
            "best_val_auc": prog.best_auc,
            "interrupted": prog.interrupted,
            "stopped_by": "interrupted" if prog.interrupted else prog.stopped_by,
            "train_counts": {c: int(n) for c, n in zip(ds.class_names, s.counts)},
            **s.loss_info,
            "parameters_trainable": trainable,
            "parameters_total": total,
            "images_per_second_median": float(np.median(ips)) if ips else None,
            "seconds_total": prog.seconds_before,
            "pretrained": s.pretrained_report,
            "fine_tuning": {"freeze": cfg.freeze, "head_epochs": cfg.head_epochs, "backbone_lr_scale": cfg.backbone_lr_scale},
            "weight_average": None if s.ema is None else {
                "method": "exponential moving average", "epochs": window, "asked": cfg.ema_epochs,
                "decay": ema_decay(window, s.steps_per_epoch), "debiased": True},
            "mixup": {"alpha": cfg.mixup} if cfg.mixup else None,
            "mixstyle": {"p": cfg.mixstyle, "alpha": 0.1, "layers": list(MODELS[cfg.model].mixstyle_layers)} if cfg.mixstyle else None,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "precision": s.precision,
            "processes": s.ctx.world,
            "device": str(s.ctx.device),
        },
    )
    meta.set_data_root(ds.source.root, s.out)
    return meta


def train(
    cfg: TrainConfig, progress: bool = True, overwrite: bool = False, on_epoch: EpochCallback | None = None,
    finish: bool = True, resume: bool = False, tracker: Tracker | None = None, device: str = "auto", warn: bool = True,
) -> Path:
    """Train ``cfg.model`` on ``cfg.data`` and write the run folder ``cfg.out``; returns its path.

    ``device``: ``auto`` trains on a CUDA GPU when PyTorch sees one, ``cpu`` keeps to the CPU, ``cuda[:N]`` requires a GPU.

    Writes config.yaml, model.safetensors (the kept epoch's: see ``TrainConfig.keep``), meta.json, history.csv,
    splits.csv and skipped.csv. Test images are never looked at. Ctrl-C stops training early and
    keeps the best model so far. An existing run in ``cfg.out`` is an error unless ``overwrite``.

    Fine-tuning: ``cfg.freeze == "backbone"`` trains the head only (linear probe, backbone batch-norm
    statistics kept); ``cfg.head_epochs`` > 0 trains the head alone for that many epochs, then all
    layers; the backbone's learning rate is ``cfg.lr * cfg.backbone_lr_scale`` (discriminative rates).
    ``on_epoch(epoch, val_auc)`` is called after every epoch (hyper-parameter search prunes there by
    raising). ``finish=False`` skips choosing the threshold and writing the report. Without ``progress`` nothing is printed
    but the warnings (leakage, shortcuts, split shift, "warning: ..." lines, on stderr), unless ``warn`` is False too.

    Every epoch ends with a checkpoint (:mod:`cxrkit.training.checkpoint`); ``resume`` continues from the
    run folder's checkpoint, if there is one, with the same configuration, and reaches the same model
    and history as a run that was never interrupted (on the same machine and thread count). ``tracker``
    (:mod:`cxrkit.training.tracking`) receives the configuration, every epoch, the validation metrics and the files.
    """
    out = Path(cfg.out)
    if cfg.pretrained not in (None, "none", "imagenet") and not Path(cfg.pretrained).exists():
        # A typo (imagenett) was found only after the data had been loaded and audited (minutes on a large set).
        raise FileNotFoundError(f"--pretrained {cfg.pretrained}: no such weights file or run folder; give imagenet, none, a "
                                ".safetensors / .pt file or a finished cxrkit run folder")
    ctx = setup_distributed(device)
    cfg.resolved_precision(ctx.device)  # --precision bf16 on a GPU without bfloat16: refused before the data is loaded
    if ctx.enabled and cfg.head_epochs:
        raise ValueError("two-stage fine-tuning (--head-epochs) is not supported with several processes; use --freeze or one process")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; give a folder for the run")
    # Held until the run is finished: a second training into this folder is refused (the two would overwrite each
    # other's weights, history and checkpoints), and an evaluation of it is refused until then.
    with run_lock(out, "train", wait=False, create=True) if ctx.is_main else nullcontext():
        if ctx.is_main:
            prepare_run_folder(out, overwrite, resume)
        ctx.barrier()
        ckpt = _check_resume(cfg, out, resume)

        def log(msg: str) -> None:
            if progress:
                tqdm.write(msg)
            elif warn and is_warning(msg):  # no progress (--quiet) drops chatter, not a warning that the figures may be wrong
                print(msg, file=sys.stderr)

        t0 = time.perf_counter()
        s = _build(cfg, ctx, out, progress, log)
        if ctx.is_main:
            _write_run_inputs(cfg, s.ds, s.train_idx, out)
        prog = _restore(s, ckpt, log)
        prog.seconds_before += time.perf_counter() - t0  # data loading and the audit count towards the time limit
        if tracker is not None and ctx.is_main:
            tracker.start(out.name, cfg.to_dict())
        try:
            return _train_and_finish(cfg, ctx, s, prog, out, log, on_epoch, progress, finish, tracker)
        except BaseException:
            if tracker is not None and ctx.is_main:
                tracker.abort()
            raise


def _train_and_finish(cfg: TrainConfig, ctx: Distributed, s: _Setup, prog: _Progress, out: Path, log: Callable[[str], None],
                      on_epoch: EpochCallback | None, progress: bool, finish: bool, tracker: Tracker | None) -> Path:
    """The epochs, then the run record, the validation threshold and report, and the tracker's final figures."""
    _fit(s, prog, log, on_epoch, progress, tracker)
    if s.mixstyle is not None:
        s.mixstyle.detach()
    if prog.best_state is None:
        if prog.diverged:
            raise TrainingDivergedError(f"training diverged in {prog.diverged} before any epoch gave a usable model; "
                                        f"lower the learning rate (--lr, now {s.cfg.lr:g})")
        if prog.interrupted:
            raise KeyboardInterrupt
        # not a divergence: every epoch's validation AUC was undefined
        raise ValueError("no epoch gave a validation AUC (every validation image of one class?); no model to keep")
    if not ctx.is_main:
        teardown_distributed(ctx)
        return out
    s.model.load_state_dict(prog.best_state)
    s.model = s.model.cpu()
    record = _record(s, prog)
    record.weights_sha256 = file_sha256(out / MODEL_FILE)  # the file the epochs left: the kept epoch's weights
    record.calibration_sha256 = "none"  # a new model is uncalibrated (train clears an old calibration.json from the folder)
    record.shift_reference_sha256 = file_sha256(out / SHIFT_FILE)  # written with config.yaml before the first epoch
    record.splits_sha256 = file_sha256(out / SPLITS_FILE)  # likewise
    write_meta(out, record)
    val_metrics: dict = {}
    if finish:
        from cxrkit.evaluation.evaluate import finish_training

        # All or nothing from the threshold to the report: a failure half-way (a full disk, Ctrl-C) leaves the run as
        # written above, unfinished and finished by --resume, not a threshold whose validation results were never written.
        try:
            with all_or_nothing([out / f for f in (META_FILE, METRICS_FILE, PREDICTIONS_FILE, REPORT_FILE)], [out / PLOTS_DIR]):
                val_metrics = finish_training(out, s.ds, cfg.threshold_rule, cfg.seed, allow_point_estimate=cfg.allow_point_estimate,
                                              referral=cfg.referral)
        except OSError as exc:
            raise OSError(exc.errno, f"{exc.strerror or exc}; the trained model is kept without a threshold: finish it by running the "
                                     "same `cxrkit train` command again with --resume", exc.filename) from None
    if tracker is not None:
        from cxrkit.training.tracking import headline_metrics

        tracker.finish({f"val.{k}": v for k, v in headline_metrics(val_metrics).items()},
                       [out / n for n in (META_FILE, CONFIG_FILE, "report.html", MODEL_FILE)])
    teardown_distributed(ctx)
    return out
