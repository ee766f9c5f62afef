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
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from cxrkit import __version__
from cxrkit.config import TrainConfig
from cxrkit.data.augment import augment_batch
from cxrkit.data.dataset import LabelledImages, load_dataset
from cxrkit.data.preprocess import Preprocessing, intensity_stats
from cxrkit.evaluation.metrics import rank_auc
from cxrkit.models.pretrained import initialise
from cxrkit.models.registry import MODELS, build_model, count_parameters, split_parameters
from cxrkit.run import META_FILE, MODEL_FILE, SHIFT_FILE, atomic_write_csv, atomic_write_text, probabilities, save_weights
from cxrkit.training.checkpoint import CHECKPOINT_DIR, find_checkpoint, load_checkpoint, save_checkpoint
from cxrkit.training.distributed import Distributed, setup_distributed, teardown_distributed
from cxrkit.training.imbalance import class_counts, make_loss, oversampled_order, repeat_factors


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


def monitor_auc(y: np.ndarray, probs: np.ndarray, task: str) -> float:
    """Validation AUC used for early stopping: ROC-AUC for binary, macro one-vs-rest for multi-class,
    the mean of the per-finding AUCs for multi-label."""
    if task == "binary":
        return rank_auc(y, probs[:, 1])
    if task == "multilabel":
        aucs = [rank_auc(y[:, c], probs[:, c]) for c in range(probs.shape[1])]
        return float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")
    aucs = [rank_auc(y == c, probs[:, c]) for c in range(probs.shape[1])]
    return float(np.nanmean(aucs))


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


def _write_run_inputs(cfg: TrainConfig, ds: LabelledImages, train_idx: np.ndarray, out: Path) -> None:
    """config.yaml, the shift reference, splits.csv and skipped.csv: what the run was trained from."""
    from cxrkit.data.shift import build_reference

    cfg.save(out / "config.yaml")
    reference = build_reference(ds.images[train_idx], *ds.label_groups(train_idx), cfg.seed)
    if ds.sites is not None:  # each site's own training images, for a per-site shift check
        reference["per_site"] = {site: build_reference(ds.images[train_idx[ds.sites[train_idx] == site]],
                                                       *ds.label_groups(train_idx[ds.sites[train_idx] == site]), cfg.seed)["overall"]
                                 for site in np.unique(ds.sites[train_idx])}
    atomic_write_text(out / SHIFT_FILE, json.dumps(reference))
    atomic_write_csv(
        out / "splits.csv",
        [{"path": rel, "label": ds.label_text(i), "split": ds.splits[i], "decoded": bool(ds.cache.ok[i])}
         for i, rel in enumerate(ds.relpaths)],
        ["path", "label", "split", "decoded"],
    )
    atomic_write_csv(out / "skipped.csv", [dict(zip(("path", "split", "reason"), s)) for s in ds.skipped()], ["path", "split", "reason"])


def _loss(criterion: torch.nn.Module, logits: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    if task == "binary":
        return criterion(logits[:, 0], y.float())
    return criterion(logits, y.float() if task == "multilabel" else y)


def _lr_lambda(total_steps: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


RUN_OUTPUTS = ("meta.json", "model.safetensors", "shift_reference.json", "calibration.json", "audit.json", "metrics.json", "predictions.csv",
               "history.csv", "splits.csv", "skipped.csv", "report.html", "config.yaml")


def prepare_run_folder(out: Path, overwrite: bool, resume: bool = False) -> None:
    """Create the run folder; refuse to mix a new run with an old one unless ``overwrite``, then clear the old outputs
    (a resumed run keeps them: they are rewritten as it goes)."""
    if resume and find_checkpoint(out) is not None:
        return
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    if (out / META_FILE).exists() or (out / MODEL_FILE).exists():
        if not overwrite:
            raise FileExistsError(f"{out} already holds a run; choose another --out or pass --overwrite")
        for name in RUN_OUTPUTS:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "plots", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def _set_backbone_trainable(backbone: list[torch.nn.Parameter], trainable: bool) -> None:
    for p in backbone:
        p.requires_grad_(trainable)


def _freeze_batchnorm_stats(model: torch.nn.Module, head_prefix: str) -> None:
    """Put backbone normalisation layers in eval mode: a frozen backbone keeps its (ImageNet) statistics."""
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) and not name.startswith(head_prefix + "."):
            mod.eval()


EpochCallback = Callable[[int, float], None]


def train(
    cfg: TrainConfig, progress: bool = True, overwrite: bool = False, on_epoch: EpochCallback | None = None,
    finish: bool = True, resume: bool = False,
) -> Path:
    """Train ``cfg.model`` on ``cfg.data`` and write the run folder ``cfg.out``; returns its path.

    Writes config.yaml, model.safetensors (best validation AUC), meta.json, history.csv,
    splits.csv and skipped.csv. Test images are never looked at. Ctrl-C stops training early and
    keeps the best model so far. An existing run in ``cfg.out`` is an error unless ``overwrite``.

    Fine-tuning: ``cfg.freeze == "backbone"`` trains the head only (linear probe, backbone batch-norm
    statistics kept); ``cfg.head_epochs`` > 0 trains the head alone for that many epochs, then all
    layers; the backbone's learning rate is ``cfg.lr * cfg.backbone_lr_scale`` (discriminative rates).
    ``on_epoch(epoch, val_auc)`` is called after every epoch (hyper-parameter search prunes there by
    raising). ``finish=False`` skips choosing the threshold and writing the report.

    Every epoch ends with a checkpoint (:mod:`cxrkit.training.checkpoint`); ``resume`` continues from the
    run folder's checkpoint, if there is one, with the same configuration, and reaches the same model
    and history as a run that was never interrupted (on the same machine and thread count).
    """
    out = Path(cfg.out)
    ctx = setup_distributed()
    if ctx.enabled and cfg.head_epochs:
        raise ValueError("two-stage fine-tuning (--head-epochs) is not supported with several processes; use --freeze or one process")
    if ctx.is_main:
        prepare_run_folder(out, overwrite, resume)
    ctx.barrier()
    ckpt = find_checkpoint(out) if resume else None
    if ckpt is not None:
        saved = TrainConfig.load(out / "config.yaml").to_dict()
        differ = sorted(k for k, v in cfg.to_dict().items() if saved.get(k) != v)
        if differ:
            raise ValueError(f"--resume needs the configuration the run was started with; these differ: {', '.join(differ)}")

    def log(msg: str) -> None:
        if progress:
            tqdm.write(msg)

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed + ctx.rank)  # each process augments its own images differently
    t_start = time.perf_counter()

    ds = load_dataset(
        cfg.data, cfg.image_size, cfg.aspect, cfg.positive, cfg.val_fraction, cfg.test_fraction,
        cfg.seed, cfg.group_pattern, cfg.cache_dir, progress=progress, intensity=cfg.intensity, crop_border=cfg.crop_border,
        **cfg.dataset_options(),
    )
    from cxrkit.audit.dataset_audit import audit_before_training

    audit = audit_before_training(ds, cfg.group_pattern, cfg.allow_leakage, out, cfg.seed, cfg.cache_dir, progress)
    for m in audit["messages"]:
        log(f"audit: {m}")
    train_idx, val_idx = ds.index("train"), ds.index("val")
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise ValueError("training needs images in both the train and the validation split")
    task, k = ds.task, len(ds.class_names)
    precision = cfg.resolved_precision()
    mean, std = intensity_stats(ds.images, train_idx)
    pre = Preprocessing(cfg.image_size, cfg.aspect, mean, std, cfg.intensity, cfg.crop_border)

    model = build_model(cfg.model, 1 if task == "binary" else k, **cfg.model_options())
    pretrained_report = initialise(model, cfg.model, cfg.pretrained)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = model.to(ctx.device)
    counts = class_counts(ds.labels[train_idx], k)
    criterion, loss_info = make_loss(task, counts, cfg.class_weights, n_images=len(train_idx))
    criterion = criterion.to(ctx.device)
    factors = None
    if cfg.oversample:
        if task != "multilabel":
            raise ValueError("--oversample applies to multi-label tasks (binary and multi-class use class weights)")
        factors = repeat_factors(ds.labels[train_idx])
        loss_info["oversampling"] = {"method": "repeat-factor sampling", "threshold": 0.1,
                                     "images_per_epoch": float(factors.sum()), "max_repeat": float(factors.max())}
    if cfg.site_balanced:
        from cxrkit.data.multisite import site_factors

        if ds.sites is None:
            raise ValueError("--site-balanced needs several sources: cxrkit train SITE_A SITE_B ... (or a sources .yaml)")
        if factors is not None:
            raise ValueError("--site-balanced and --oversample exclude each other")
        factors = site_factors(ds.sites[train_idx])
        loss_info["site_balanced"] = {"method": "repeat sampling per site", "images_per_epoch": float(factors.sum())}
    backbone, head = split_parameters(model, cfg.model)
    head_prefix = MODELS[cfg.model].head
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

    if ctx.is_main:
        _write_run_inputs(cfg, ds, train_idx, out)
    train_model = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)

    y_val = ds.labels[val_idx]
    history: list[dict] = []
    best_auc, best_loss, best_epoch, best_state, bad_epochs = -1.0, float("inf"), 0, None, 0
    interrupted = False
    stopped_by = "epochs"
    first_epoch = 1
    if ckpt is not None:
        st, best_state = load_checkpoint(ckpt, model, optimizer, scheduler, rng, aug_gen)
        history, best_auc, best_loss, best_epoch, bad_epochs = st["history"], st["best_auc"], st["best_loss"], st["best_epoch"], st["bad_epochs"]
        first_epoch = st["epoch"] + 1 if st["stopped_by"] is None else cfg.epochs + 1
        stopped_by = st["stopped_by"] or stopped_by
        t_start -= st["seconds"]
        if cfg.head_epochs:
            _set_backbone_trainable(backbone, first_epoch > cfg.head_epochs)
        log(f"resuming {out} after epoch {st['epoch']} (best validation AUC {best_auc:.4f} at epoch {best_epoch})")
    epoch_bar = tqdm(range(first_epoch, cfg.epochs + 1), desc=f"training {cfg.model}", unit="epoch", disable=not progress or None)
    try:
        for epoch in epoch_bar:
            head_only = cfg.freeze == "backbone" or epoch <= cfg.head_epochs
            if cfg.head_epochs and epoch in (1, cfg.head_epochs + 1):
                _set_backbone_trainable(backbone, not head_only)
                if epoch > 1:
                    bad_epochs = 0  # stage two starts: give the full network its own patience
                    log(f"stage 2: training all layers (backbone learning rate {cfg.lr * cfg.backbone_lr_scale:g})")
            model.train()
            if head_only:
                _freeze_batchnorm_stats(model, head_prefix)
            t0 = time.perf_counter()
            losses = []
            order = rng.permutation(len(train_idx)) if factors is None else oversampled_order(factors, rng)
            batch_bar = tqdm(
                _loader(ds, train_idx, cfg.batch_size, cfg.workers, order, ctx), total=steps_per_epoch,
                desc=f"epoch {epoch}", leave=False, unit="batch", disable=not progress or None,
            )
            for xb, yb in batch_bar:
                if len(yb) < 2:  # batch norm cannot train on one image; it is seen again next epoch
                    continue
                x = augment_batch(pre.to_unit(xb), cfg.augment, aug_gen)
                x = pre.normalize(x).to(ctx.device)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    logits = train_model(x)
                logits = logits.float()
                loss = _loss(criterion, logits, yb.to(ctx.device), task)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if cfg.schedule == "cosine":
                    scheduler.step()
                losses.append(loss.item())
                batch_bar.set_postfix(loss=f"{np.mean(losses):.4f}")
            train_seconds = time.perf_counter() - t0
            t1 = time.perf_counter()
            val_auc = val_loss = float("nan")
            time_up = False
            if ctx.is_main:  # process 0 validates and decides; the others follow its figures
                probs, val_logits = predict_index(model, ds, val_idx, pre, task, 64, cfg.workers, cfg.channels_last, precision, ctx.device)
                val_loss = float(_loss(criterion.cpu(), val_logits, torch.from_numpy(y_val), task))
                criterion.to(ctx.device)
                val_auc = monitor_auc(y_val, probs, task)
                time_up = bool(cfg.max_minutes and time.perf_counter() - t_start > 60 * cfg.max_minutes and epoch < cfg.epochs)
            val_auc, val_loss, time_up = ctx.broadcast([val_auc, val_loss, time_up])
            if cfg.schedule == "plateau":
                scheduler.step(val_auc)
            # Ties in AUC (common once a small validation set is separated perfectly) go to the lower loss.
            improved = np.isfinite(val_auc) and (
                val_auc > best_auc + 1e-4 or (abs(val_auc - best_auc) <= 1e-4 and val_loss < best_loss)
            )
            if improved:
                best_auc, best_loss, best_epoch, bad_epochs = val_auc, val_loss, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
                if ctx.is_main:
                    save_weights(model, out / MODEL_FILE)
            else:
                bad_epochs += 1
            row = {
                "epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": val_loss, "val_auc": val_auc,
                "lr": optimizer.param_groups[0]["lr"], "stage": "head" if head_only else "all", "train_seconds": train_seconds,
                "val_seconds": time.perf_counter() - t1, "train_images_per_second": len(train_idx) / train_seconds,
            }
            history.append(row)
            if ctx.is_main:
                atomic_write_csv(out / "history.csv", history, list(history[0]))
            epoch_bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_auc=f"{val_auc:.3f}", best=f"{best_auc:.3f}@{best_epoch}")
            log(
                f"epoch {epoch:3d}/{cfg.epochs}  train loss {row['train_loss']:.4f}  val loss {val_loss:.4f}  "
                f"val AUC {val_auc:.4f}  {row['train_images_per_second']:.0f} img/s{'  *best' if improved else ''}"
            )
            stop = None
            if time_up:
                log(f"time limit: stopping after epoch {epoch} ({cfg.max_minutes:g} minutes reached)")
                stop = "time limit"
            elif bad_epochs >= cfg.patience and not (cfg.head_epochs and epoch <= cfg.head_epochs):
                log(f"early stop: validation AUC did not improve for {cfg.patience} epochs")
                stop = "early stopping"
            # The stop decision goes into the checkpoint, so a run resumed right here stops as it would have.
            if ctx.is_main:
                save_checkpoint(out, model, best_state, optimizer, scheduler, rng, aug_gen, {
                    "epoch": epoch, "history": history, "best_auc": best_auc, "best_loss": best_loss, "best_epoch": best_epoch,
                    "bad_epochs": bad_epochs, "stopped_by": stop, "seconds": time.perf_counter() - t_start,
                })
            if on_epoch is not None:
                on_epoch(epoch, val_auc)
            if stop:
                stopped_by = stop
                break
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: keeping the best model so far and finishing the run")
    if best_state is None:
        raise RuntimeError("training stopped before the first epoch finished; no model to keep")
    if not ctx.is_main:
        teardown_distributed(ctx)
        return out
    model.load_state_dict(best_state)
    model = model.cpu()

    trainable, total = count_parameters(model)
    ips = [h["train_images_per_second"] for h in history]
    meta = {
        "cxrkit_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "model": cfg.model,
        "task": task,
        "classes": ds.class_names,
        "positive_class": ds.positive,
        "num_outputs": 1 if task == "binary" else k,
        "model_options": {k_: v for k_, v in cfg.model_options().items() if v is not None},
        "tta": cfg.tta,
        "preprocessing": pre.to_dict(),
        "threshold": None,
        "audit": {**audit, "allow_leakage": cfg.allow_leakage},
        "data": {
            "root": str(ds.source.root),
            "layout": ds.source.layout,
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
        "training": {
            "epochs_run": len(history),
            "best_epoch": best_epoch,
            "best_val_auc": best_auc,
            "interrupted": interrupted,
            "stopped_by": "interrupted" if interrupted else stopped_by,
            "train_counts": {c: int(n) for c, n in zip(ds.class_names, counts)},
            **loss_info,
            "parameters_trainable": trainable,
            "parameters_total": total,
            "images_per_second_median": float(np.median(ips)) if ips else None,
            "seconds_total": time.perf_counter() - t_start,
            "pretrained": pretrained_report,
            "fine_tuning": {"freeze": cfg.freeze, "head_epochs": cfg.head_epochs, "backbone_lr_scale": cfg.backbone_lr_scale},
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "precision": precision,
            "processes": ctx.world,
            "device": str(ctx.device),
        },
    }
    atomic_write_text(out / META_FILE, json.dumps(meta, indent=2))
    if finish:
        from cxrkit.evaluation.evaluate import finish_training

        finish_training(out, ds, cfg.threshold_rule, cfg.seed)
    teardown_distributed(ctx)
    return out
