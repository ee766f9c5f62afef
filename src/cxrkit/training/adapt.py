"""`cxrkit adapt`: test-time batch-norm adaptation (AdaBN, Li et al. 2016) to a new site's unlabelled images.

Batch-norm layers keep the training images' feature means and variances; at another site (other
exposure, other scanner) those statistics are wrong and every later layer sees shifted inputs. AdaBN
re-estimates them on unlabelled images of the new site. Nothing else changes: no labels are used,
no weight is trained, and the decision threshold stays the one chosen on the training site's
validation split (``evaluate --recalibrate-on`` re-chooses it with a labelled sample).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrkit.record import CALIBRATION_FILE, CONFIG_FILE, META_FILE, MODEL_FILE, RUN_OUTPUTS, SHIFT_FILE, file_sha256, read_meta, write_meta
from cxrkit.record.files import CHECKPOINT_DIR, PLOTS_DIR, atomic_write_text
from cxrkit.record.lock import LOCK_FILE, run_lock
from cxrkit.record.meta import now
from cxrkit.run import Run, save_weights, weights_inputs

MIN_IMAGES = 16  # fewer images give batch statistics too noisy to replace the training ones
# What an adapted run keeps from its source; plots, metrics and ONNX files describe the old weights.
KEPT = (CONFIG_FILE, META_FILE, SHIFT_FILE, CALIBRATION_FILE, "splits.csv", "history.csv", "audit.json", "sources.yaml")


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's batch-norm layers."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def adapt_batchnorm(run: Run, images: np.ndarray, batch_size: int = 64) -> int:
    """Replace the running mean and variance of every batch-norm layer of ``run.model`` by the mean and variance of its
    inputs pooled over all ``images`` (uint8, decoded at the run's size); returns how many layers changed.

    The layers normalise each batch by its own statistics while the images pass (AdaBN's forward), and each layer's
    inputs are summed over every image. PyTorch's cumulative average (momentum None) weighs batches, not images: the
    2 images of a last batch counted as much as the 64 of a full one, and a last batch of one was dropped."""
    layers = batchnorm_layers(run.model)
    if not layers:
        raise ValueError(f"model {run.record.model} has no batch-norm layers; AdaBN has nothing to adapt")
    model = run.model
    model.eval()
    sums: dict[int, list] = {id(m): [0, 0.0, 0.0] for m in layers}

    def pool(layer: nn.Module, inputs: tuple) -> None:
        x = inputs[0].detach().to(torch.float64)
        dims = [d for d in range(x.dim()) if d != 1]  # every axis but the channels
        s = sums[id(layer)]
        s[0] += x.numel() // x.shape[1]
        s[1] = s[1] + x.sum(dims)
        s[2] = s[2] + (x * x).sum(dims)

    hooks = [m.register_forward_pre_hook(pool) for m in layers]
    for m in layers:
        m.train()  # only the batch-norm layers: dropout stays off
    try:
        # Nearly equal batches: none of one image, which has no batch variance to normalise by.
        for batch in np.array_split(images, -(-len(images) // batch_size)):
            model(run.preprocessing(np.asarray(batch)).contiguous(memory_format=torch.channels_last))
    finally:
        for h in hooks:
            h.remove()
        model.eval()
    for m in layers:
        n, total, squares = sums[id(m)]
        mean = total / n
        var = (squares / n - mean * mean).clamp_min(0) * (n / (n - 1))  # unbiased, as PyTorch stores it
        m.running_mean.copy_(mean.to(m.running_mean.dtype))
        m.running_var.copy_(var.to(m.running_var.dtype))
        if m.num_batches_tracked is not None:
            m.num_batches_tracked.fill_(-(-len(images) // batch_size))
    return len(layers)


def adapt_run(run_dir: str | Path, folder: str | Path, out: str | Path, batch_size: int = 64, overwrite: bool = False,
              progress: bool = True) -> dict:
    """Write a copy of a run to ``out`` whose batch-norm statistics come from the images under ``folder``.

    Both folders are locked (:mod:`cxrkit.record.lock`), never at once: the source while its weights and files are
    read (a training into it is refused, a calibration of it waited for), then ``out`` while it is replaced (a training
    into it is refused, an evaluation of it waited for).
    """
    from cxrkit.data.decode import IMAGE_EXTENSIONS, ImageDecodeError, is_image_file

    run_dir, folder, out = Path(run_dir), Path(folder), Path(out)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 2 <= batch_size <= 4096:
        # A batch of one has no variance and is skipped: every batch-norm layer kept its reset statistics, said to be re-estimated.
        raise ValueError(f"batch_size must be an integer from 2 to 4096, got {batch_size!r}")
    try:
        same = out.resolve() == run_dir.resolve()
    except RuntimeError as exc:  # a symbolic link loop: was "unexpected RuntimeError"
        raise ValueError(f"{run_dir} or {out} is a symbolic link loop") from exc
    if same:  # also through a symbolic link: checked before either lock is taken
        raise ValueError("--out must be a new folder; the source run is kept unchanged")
    for inside, what in ((run_dir, "the source run"), (folder, "the images to adapt on")):
        if inside.resolve().is_relative_to(out.resolve()):  # a run's files (plots/*.png) written among them; --overwrite cleared them
            raise ValueError(f"--out {out} holds {what} ({inside}); give the adapted run a folder of its own")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; give a folder for the adapted run")
    if _holds_files(out) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of images")
    # The source is read whole under its lock and released before --out is locked: a calibration rewriting it half-way
    # would give weights and files of two versions, and holding both locks could wait for ever on an adapt the other
    # way round (RUN2 -> RUN). A source we cannot write is read unlocked, as predict reads it.
    with run_lock(run_dir, "adapt", read_only=True):
        run = Run.load(run_dir, engine="torch")
        kept = {name: ((run_dir / name).read_bytes(), (run_dir / name).stat()) for name in KEPT if (run_dir / name).is_file()}
        # Relative paths in config.yaml are resolved against its out, which changes: they are stored as found from the source.
        found = run.config() if CONFIG_FILE in kept else None
        root = run.record.data_root(run_dir)
    # An existing --out is locked from here, like a training into it: a training there refuses us (and we it), an
    # evaluation of it is waited for, and nobody adds results to it while its files are replaced.
    with run_lock(out, "adapt"):
        paths = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
        decoded, failed = [], 0
        for p in paths:
            try:
                decoded.append(run.preprocessing.load(p))
            except (ImageDecodeError, OSError, ValueError):
                failed += 1
        if len(decoded) < MIN_IMAGES:
            raise ValueError(f"{len(decoded)} decodable image(s) ({' '.join(IMAGE_EXTENSIONS)}) under {folder}; AdaBN needs at least {MIN_IMAGES}")
        rng = np.random.default_rng(0)  # mixed order: a folder sorted by class would give one-class batches
        images = np.stack(decoded)[rng.permutation(len(decoded))]
        layers = adapt_batchnorm(run, images, batch_size)
        # A new --out is created and locked only now (nested: a no-op when it was locked above), so a failure above
        # leaves no empty folder behind.
        with run_lock(out, "adapt", create=True):
            if _holds_files(out) and not overwrite:  # another command wrote a run there while we decoded
                raise FileExistsError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
            _clear(out)
            for name, (data, st) in kept.items():
                (out / name).write_bytes(data)
                os.utime(out / name, ns=(st.st_atime_ns, st.st_mtime_ns))
            if CONFIG_FILE in kept:  # its out named the source run, so the report's commands calibrated and evaluated that one
                import yaml

                cfg = yaml.safe_load(kept[CONFIG_FILE][0])
                if isinstance(cfg, dict) and found is not None:
                    paths = {k: getattr(found, k) for k in ("cache_dir", "labels") if cfg.get(k)}
                    atomic_write_text(out / CONFIG_FILE, yaml.safe_dump({**cfg, **paths, "out": str(out)}, sort_keys=False))
            save_weights(run.model, out / MODEL_FILE, run.classes, weights_inputs(run.record.preprocessing, run.record.tta, run.record.tta_flips))
            record = read_meta(out)
            if root is not None:  # stored relative to the run folder too, which has moved; a sources file inside the run moved with it
                record.set_data_root(out / root.relative_to(run_dir.resolve()) if root.is_relative_to(run_dir.resolve()) else root, out)
            info = {"method": "AdaBN", "source_run": str(run_dir), "folder": str(folder), "images": len(images), "unreadable": failed,
                    "batchnorm_layers": layers, "time": now(),
                    "note": "batch-norm statistics from the new site's unlabelled images; threshold and calibration from the source run's validation split"}
            record.extra["adapted"] = info
            info = {**info, "task": record.task}
            record.evaluations = []  # the adapted model has not been evaluated yet
            record.weights_sha256 = file_sha256(out / MODEL_FILE)
            record.onnx_sha256 = None  # the source's export is of the old weights, and is not copied
            write_meta(out, record)
    return info


def _holds_files(folder: Path) -> bool:
    """Whether ``folder`` holds anything besides the run lock (left by an earlier command: not a run's content)."""
    return folder.is_dir() and any(p.name != LOCK_FILE for p in folder.iterdir())


def _clear(folder: Path) -> None:
    """Remove the run files ``folder`` holds, as ``train --overwrite`` does: everything in it went, the source run and a
    dataset beside it included. Its lock file stays (removing it would let another process lock a new file of the same
    name at once)."""
    for name in {*RUN_OUTPUTS, *KEPT}:
        (folder / name).unlink(missing_ok=True)
    for p in folder.glob("*.onnx"):
        p.unlink()
    for name in (PLOTS_DIR, CHECKPOINT_DIR):
        shutil.rmtree(folder / name, ignore_errors=True)
