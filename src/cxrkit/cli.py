"""The ``cxrkit`` command line: demo, train, evaluate, predict, export, serve, models."""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from cxrkit import __version__

if TYPE_CHECKING:
    from collections.abc import Iterator

    from cxrkit.record import RunMeta


def _defaults() -> dict:
    """TrainConfig's defaults, the single source of truth for CLI defaults."""
    from cxrkit.config import TrainConfig

    return {f.name: f.default for f in fields(TrainConfig) if f.name not in ("data", "augment")}


def bounded_int(lo: int, hi: int):
    """An argparse type: a whole number from ``lo`` to ``hi``, else a one-line usage error (exit status 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is outside {lo}-{hi}")
        return value

    return parse


def bounded_float(lo: float, hi: float):
    """An argparse type: a number from ``lo`` to ``hi`` (not NaN), else a one-line usage error (exit status 2)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not lo <= value <= hi:  # NaN fails this too
            raise argparse.ArgumentTypeError(f"{text} is outside {lo:g}-{hi:g}")
        return value

    return parse


def regex(text: str) -> str:
    """An argparse type: a regular expression that compiles (re.error is no ValueError: it was an 'unexpected error')."""
    import re

    try:
        re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a regular expression ({exc})") from None
    return text


def _add_device_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda[:N]",
                   help=f"where to {what}: auto (default) takes a CUDA GPU when PyTorch sees one, else the CPU; cuda fails "
                        "without one (the ONNX engines always run on the CPU)")


def _add_train_options(p: argparse.ArgumentParser, single_model: bool = True) -> None:

    from cxrkit.config import FREEZE_CHOICES, INTENSITY_CHOICES, KEEP_CHOICES, PRECISIONS, SCHEDULES, TASK_CHOICES
    from cxrkit.data.augment import AUGMENT_PRESETS, DEFAULT_PRESET
    from cxrkit.data.spec import ASPECTS, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE

    d, aug = _defaults(), AUGMENT_PRESETS[DEFAULT_PRESET]
    g = p.add_argument_group("data")
    g.add_argument("--image-size", type=bounded_int(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE), default=None,
                   help=f"square side in pixels, {MIN_IMAGE_SIZE}-{MAX_IMAGE_SIZE} (default {d['image_size']}, or the images' own size "
                        "when smaller, e.g. 28 for a 28-px MedMNIST file)")
    g.add_argument("--aspect", choices=ASPECTS, default=d["aspect"],
                   help="pad: keep aspect ratio, letterbox with black (default); squash: stretch to a square")
    g.add_argument("--intensity", choices=INTENSITY_CHOICES, default=d["intensity"],
                   help="per-image intensity normalisation at decode time, kept for evaluate/predict: zscore, percentile "
                        "(1-99%% stretch), histeq (histogram equalisation), clahe (adaptive) or none; auto (the default) is none "
                        "unless brightness and contrast alone tell the training classes apart (an exposure shortcut), then histeq")
    g.add_argument("--crop-border", action="store_true", help="remove uniform outer bands (collimation, frames) before resizing")
    g.add_argument("--positive", default=None, help="positive (disease) class of a binary task; default: the class whose name does not say normal, healthy, "
                        "negative, no finding or an absence (No_Effusion, Non-COVID); else the second name alphabetically, said at training")
    g.add_argument("--val-fraction", type=float, default=d["val_fraction"], help="share held out for validation when no val/ folder exists (default %(default)s)")
    g.add_argument("--test-fraction", type=float, default=d["test_fraction"], help="share held out for test when no test/ folder exists (default %(default)s)")
    g.add_argument("--group-pattern", default=None, metavar="REGEX",
                   help=r"regex extracting a patient ID from file names, for patient-level splits, e.g. '(person\d+|IM-\d+)'")
    g.add_argument("--cache-dir", default=None, help="preprocessing cache folder (default $CXRKIT_CACHE or ~/.cache/cxrkit)")
    g.add_argument("--labels", default=None, metavar="FILE.csv",
                   help="label table for the images under DATA: NIH Data_Entry_2017.csv, or a CSV with a path column and a "
                        "'|'-separated findings column, a label column or 0/1 columns, optional patient_id and split columns")
    g.add_argument("--label-column", default=None, help="the table's label column, when it cannot be told (e.g. folder_class)")
    g.add_argument("--task", choices=TASK_CHOICES, default=d["task"],
                   help="auto (default): multilabel for tables with several findings per image and multi-label MedMNIST files, "
                        "binary for 2 classes, multiclass otherwise")
    g.add_argument("--resplit", action="store_true",
                   help="ignore the splits the data gives (folders, a split column, NIH split lists, MedMNIST splits) and "
                        "make seeded patient-level ones with --val-fraction/--test-fraction")
    g.add_argument("--allow-leakage", action="store_true",
                   help="train even when the audit finds the same patients or (near-)identical images in two splits (recorded in meta.json)")
    g = p.add_argument_group("model and training")
    if single_model:
        g.add_argument("--model", default=d["model"], help="model name, see `cxrkit models` (default %(default)s)")
    g.add_argument("--width", type=int, default=None, help="model width (channels of the first block) for mlp, simple_cnn, cnn, pasa")
    g.add_argument("--dropout", type=float, default=None, help="dropout before the classifier, for models that have one")
    g = p.add_argument_group("transfer learning")
    g.add_argument("--pretrained", default=None, metavar="imagenet|none|PATH|RUN",
                   help="starting weights: imagenet (ships offline for efficientnet-lite0, downloaded once for MONAI models), "
                        "none, a state dict file (.safetensors or .pt), or a cxrkit run folder (its classifier head starts afresh "
                        "when that run had other classes). Default: imagenet for efficientnet-lite0, none otherwise")
    g.add_argument("--freeze", choices=FREEZE_CHOICES, default=d["freeze"],
                   help="backbone: train the classifier head only (linear probe) (default %(default)s)")
    g.add_argument("--head-epochs", type=int, default=d["head_epochs"],
                   help="two-stage fine-tuning: train the head alone for this many epochs, then all layers (default %(default)s)")
    g.add_argument("--backbone-lr-scale", type=float, default=d["backbone_lr_scale"],
                   help="backbone learning rate = --lr x this (discriminative learning rates; e.g. 0.1) (default %(default)s)")
    g.add_argument("--tta", action=argparse.BooleanOptionalAction, default=d["tta"],
                   help="test-time augmentation: average 5 views (zoom +-5%%, shift +-3%%), and their mirror images when the model "
                        "trains with flips, for the threshold, evaluation and prediction; on by default (external AUC +0.008 in 7 of 9 "
                        "paired leave-one-site-out runs, mirror images +0.006 more, BENCHMARKS.md), for 5x (10x) the prediction time; "
                        "--no-tta for one view")
    g = p.add_argument_group("tracking")
    g.add_argument("--track", default=None, metavar="mlflow[:URI]|tensorboard[:DIR]",
                   help="log parameters, per-epoch figures, validation metrics with CIs, the report and the model to MLflow "
                        "(e.g. mlflow:sqlite:///mlflow.db; default $MLFLOW_TRACKING_URI) or TensorBoard (default runs/tensorboard); "
                        "needs pip install 'cxrkit[track]'")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d["epochs"], help="maximum epochs (default %(default)s)")
    g.add_argument("--patience", type=int, default=d["patience"],
                   help="stop when validation AUC has not improved for this many epochs (default: no early stopping; the "
                        "whole cosine schedule runs and, with --keep auto, its last epoch is kept, since on small validation sets early stopping "
                        "cut the weakest seeds short in benchmarks/sites.py)")
    g.add_argument("--keep", choices=KEEP_CHOICES, default=d["keep"],
                   help="which epoch's weights the run keeps: best (on validation), last, or auto: the last when the whole "
                        "schedule runs, the best when --patience or --max-minutes ends it early (default %(default)s; on small validation sets the best "
                        "epoch can be an early, half-trained one: BENCHMARKS.md round 6)")
    g.add_argument("--max-minutes", type=float, default=None, help="stop after the epoch that passes this much wall-clock time")
    g.add_argument("--ema-epochs", type=float, default=d["ema_epochs"], metavar="N",
                   help="validate, keep and save a moving average of the weights over about N epochs (at most 15%% of "
                        "--epochs) instead of the last step's weights; 0 turns it off (default %(default)s: same external AUC, lower seed-to-seed spread "
                        "in benchmarks/sites.py)")
    g.add_argument("--mixstyle", type=float, default=d["mixstyle"], metavar="P",
                   help="MixStyle: with probability P per batch, mix early-layer feature statistics (style: exposure, "
                        "processing) between training images, so the model learns anatomy across styles; cnn, "
                        "efficientnet-lite0/1/2, resnet18/50 (default: off)")
    g.add_argument("--mixup", type=float, default=d["mixup"], metavar="ALPHA",
                   help="mixup: train on blends of two images (weight ~ Beta(ALPHA, ALPHA) per batch) and the same blend "
                        "of their losses; 0.2-0.4 is usual (default: off)")
    g.add_argument("--batch-size", type=bounded_int(1, 4096), default=d["batch_size"],
                   help="training images per optimiser step, 1-4096 (default %(default)s)")
    g.add_argument("--lr", type=float, default=d["lr"], help="AdamW learning rate (default %(default)s)")
    g.add_argument("--weight-decay", type=float, default=d["weight_decay"], help="AdamW weight decay (default %(default)s)")
    g.add_argument("--schedule", choices=SCHEDULES, default=d["schedule"],
                   help="learning rate over the epochs: cosine decay after a one-epoch warm-up, plateau (halve it when "
                        "validation AUC has not improved for 2 epochs) or constant (default %(default)s)")
    g.add_argument("--no-class-weights", action="store_true",
                   help="do not weight the loss by class frequency (multi-label: plain BCE instead of per-label pos_weight)")
    g.add_argument("--oversample", action="store_true",
                   help="multi-label: repeat images with rare findings in each epoch (repeat-factor sampling, threshold 10%%)")
    g.add_argument("--site-balanced", action=argparse.BooleanOptionalAction, default=None,
                   help="several sources: show every site as often as the largest in each epoch (repeat sampling); on by default "
                        "when the data have several sites (external AUC +0.037 in 8 of 9 paired leave-one-site-out runs, "
                        "BENCHMARKS.md); --no-site-balanced for the sites' natural shares")
    g.add_argument("--threshold-rule", default=d["threshold_rule"],
                   help="how the decision threshold is chosen on validation data: youden, sensitivity:0.90, specificity:0.95, a number, "
                        "or a guaranteed target such as sensitivity:0.90@0.95 (the one-sided 95%% Clopper-Pearson lower bound of "
                        "validation sensitivity must reach 0.90) (default %(default)s)")
    g.add_argument("--referral", default=None, metavar="RULE_OUT,RULE_IN",
                   help="binary runs: a referral band chosen on validation, e.g. npv:0.98,ppv:0.90 or sensitivity:0.99,specificity:0.99; "
                        "below the lower threshold the model rules out, above the upper it rules in, in between predict says 'refer'")
    g.add_argument("--allow-point-estimate", action="store_true",
                   help="when a guaranteed rule (X@C) is impossible with the validation cases at hand, use the point rule X instead of stopping")
    g.add_argument("--precision", choices=PRECISIONS, default=d["precision"],
                   help="auto (default): bf16 autocast where the training device computes bfloat16 natively (a CPU with AVX512-BF16/AMX, "
                        "a GPU from Ampere on), else 32-bit. bf16 was 0.012 higher in mean external AUC across sites (BENCHMARKS.md); "
                        "its speed depends on the model: cnn 1.7x faster at 224 px, "
                        "efficientnet-lite0 1.15x at 224 px and 0.9x at 128 px")
    g.add_argument("--workers", type=int, default=d["workers"], help="DataLoader worker processes reading the cache (default %(default)s)")
    g.add_argument("--seed", type=int, default=d["seed"],
                   help="seed of the training randomness and, unless --split-seed is given, of the split (default %(default)s)")
    g.add_argument("--split-seed", type=int, default=None, metavar="N",
                   help="seed of the train/validation/test split (default: --seed); fix it and vary --seed to see how much "
                        "training randomness alone moves the figures, or to train ensemble members on one split")
    g = p.add_argument_group("augmentation (training images only)")
    g.add_argument("--augment-preset", choices=list(AUGMENT_PRESETS), default=DEFAULT_PRESET,
                   help="starting values of the options below. robust: rotation, zoom and shift plus brightness 0.2, contrast 0.3, "
                        "gamma 0.4, blur 1.0 and noise 0.03, to cover other sites' exposure and processing (chosen by the "
                        "leave-one-site-out benchmark, README: robust by default); mild: the same geometry with brightness and "
                        "contrast 0.1 only (the default before) (default %(default)s)")
    preset = f"from --augment-preset; %s in {DEFAULT_PRESET}"
    g.add_argument("--rotate", type=float, default=None, help="max rotation in degrees (default: " + preset % aug.rotate_degrees + ")")
    g.add_argument("--scale", type=float, default=None, help="max zoom in/out fraction (default: " + preset % aug.scale + ")")
    g.add_argument("--translate", type=float, default=None, help="max shift as a fraction of the size (default: " + preset % aug.translate + ")")
    g.add_argument("--brightness", type=float, default=None, help="max brightness shift on a 0-1 scale (default: " + preset % aug.brightness + ")")
    g.add_argument("--contrast", type=float, default=None, help="max contrast change fraction (default: " + preset % aug.contrast + ")")
    g.add_argument("--gamma", type=float, default=None, help="log-gamma range, e.g. 0.3 = gamma 0.74-1.35 (default: " + preset % aug.gamma + ")")
    g.add_argument("--blur", type=float, default=None, help="max Gaussian blur sigma in pixels (default: " + preset % aug.blur + ")")
    g.add_argument("--noise", type=float, default=None, help="max Gaussian noise std on a 0-1 scale (default: " + preset % aug.noise + ")")
    g.add_argument("--erase-edges", type=float, default=None, metavar="P",
                   help="probability per image of blacking out a random border band (2-10%% of the side) or corner squares "
                        "(10-25%%), where collimation, markers and text differ between sites (default: " + preset % aug.erase_edges + ")")
    g.add_argument("--random-conv", type=float, default=None, metavar="P",
                   help="probability per image of mixing it with a random shallow convolutional network's output (GIN, Ouyang et al. "
                        "2022): new intensity curves and textures, shapes kept (default: " + preset % aug.random_conv + ")")
    g.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips (default: " + preset % ("on" if aug.hflip else "off")
                        + "; BENCHMARKS.md round 6: with the last epoch kept, +0.020 AUC at held-out sites, higher in 9 of 9 "
                          "runs; with --keep best one seed lost 0.13)")
    g.add_argument("--no-augment", action="store_true", help="turn all augmentation off")


def _config_from_args(a: argparse.Namespace, data: str, out: str, model: str | None = None):
    from cxrkit.config import TrainConfig
    from cxrkit.data.augment import AUGMENT_PRESETS, AugmentConfig

    if a.no_augment:
        aug = AugmentConfig(0, 0, 0, 0, 0, False)
    else:
        given = {"rotate_degrees": a.rotate, "scale": a.scale, "translate": a.translate, "brightness": a.brightness, "contrast": a.contrast,
                 "gamma": a.gamma, "blur": a.blur, "noise": a.noise,
                 "erase_edges": a.erase_edges, "random_conv": a.random_conv}
        given["hflip"] = a.hflip
        aug = replace(AUGMENT_PRESETS[a.augment_preset], **{k: v for k, v in given.items() if v is not None})
    return TrainConfig(
        data=data, out=out, labels=a.labels, label_column=a.label_column, task=a.task, resplit=a.resplit, oversample=a.oversample,
        model=model or a.model, width=a.width, dropout=a.dropout, image_size=a.image_size or _defaults()["image_size"], aspect=a.aspect,
        intensity=a.intensity, crop_border=a.crop_border, positive=a.positive,
        val_fraction=a.val_fraction, test_fraction=a.test_fraction, group_pattern=a.group_pattern, allow_leakage=a.allow_leakage, seed=a.seed,
        split_seed=a.split_seed, epochs=a.epochs, patience=a.patience, keep=a.keep, max_minutes=a.max_minutes,
        batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay,
        schedule=a.schedule, class_weights=not a.no_class_weights, threshold_rule=a.threshold_rule,
        allow_point_estimate=a.allow_point_estimate, referral=a.referral,
        precision=a.precision, workers=a.workers, pretrained=a.pretrained, freeze=a.freeze, head_epochs=a.head_epochs, backbone_lr_scale=a.backbone_lr_scale,
        ema_epochs=a.ema_epochs or None, mixstyle=a.mixstyle, mixup=a.mixup, tta=a.tta, cache_dir=a.cache_dir, augment=aug, site_balanced=a.site_balanced,
    )


def _summary(run_dir: Path, split: str) -> None:
    import json

    m = json.loads((run_dir / "metrics.json").read_text())[split]
    from cxrkit.report.narrative import evaluation_sentences, split_words

    words = split_words(split)
    text = evaluation_sentences(m, words)
    out = _result_stream()  # the figures are the result: --quiet printed nothing at all for train and evaluate
    print(f"\n{words} split ({m['n']} images):", file=out)
    for s in text:
        print("  " + s.replace("<b>", "").replace("</b>", ""), file=out)
    if m["task"] == "multilabel":
        _per_finding_table(m, out)
    if m.get("per_site"):
        from cxrkit.evaluation.sites import site_table

        print(f"  per site ({words}):", file=out)
        print("\n".join(site_table(m["per_site"])), file=out)


def _per_finding_table(m: dict, out=None) -> None:
    """The per-finding rows the multi-label sentences refer to: images with it, ROC-AUC with its interval, detection rates."""
    from cxrkit.report.narrative import pct

    rows = m["per_label"]
    width = max(len(k) for k in rows)
    print(f"  {'finding':<{width}}  with it  ROC-AUC (95% CI)        sensitivity  specificity  (at its validation threshold)", file=out)
    for k, e in sorted(rows.items(), key=lambda kv: -kv[1]["support"]):
        auc = e["roc_auc"]
        auc_text = "n/a" if auc["value"] is None else f"{auc['value']:.3f}" + (
            f" ({auc['ci'][0]:.3f}-{auc['ci'][1]:.3f})" if auc["ci"] else " (no interval)")
        print(f"  {k:<{width}}  {e['support']:>7}  {auc_text:<22}  {pct(e['sensitivity']['value']):>11}  {pct(e['specificity']['value']):>11}",
              file=out)


def _given_options(a: argparse.Namespace, model: str | None = None) -> dict:
    """The training options the user typed: the fields where the config built from ``a`` differs from the defaults."""
    from cxrkit.config import TrainConfig

    defaults = build_parser().parse_args(["train", a.data])
    typed = _config_from_args(a, a.data, "x", model).to_dict()
    default = _config_from_args(defaults, a.data, "x", model).to_dict()
    return {k: v for k, v in typed.items() if k not in ("data", "out") and v != default[k] and k in {f.name for f in fields(TrainConfig)}}


def _native_size(cfg):
    """The default image size follows the data: images smaller than it train at their own size (upsampling adds no detail)."""
    from dataclasses import replace as _replace

    from cxrkit.data.dataset import native_image_size
    from cxrkit.data.spec import MIN_IMAGE_SIZE

    native = native_image_size(cfg.data, cfg.labels, cfg.label_column, cfg.task, cfg.cache_dir)
    if native is None or native >= cfg.image_size:
        return cfg
    size = max(native, MIN_IMAGE_SIZE)
    print(f"note: the images are {native} px, smaller than the default {cfg.image_size} px, so they train at {size} px "
          f"(upsampling adds no detail and costs time); --image-size {cfg.image_size} overrides this", file=sys.stderr)
    return _replace(cfg, image_size=size)


def _refuse_out_inside(out: str | Path, inputs: list[str], written: str, name: str = "--out") -> None:
    """Refuse an --out folder inside a folder of input images: what is written there would be read as more images."""
    # A run inside its class folder (DATA/tb/run) had its plots read as tb images by the next evaluate, and explain's
    # overlays in the folder it explained became test images of that class: figures on other images, with no error.
    where = os.path.realpath(out)  # realpath, not Path.resolve: a symbolic-link loop is no RuntimeError here
    for d in inputs:
        root = os.path.realpath(d)
        if os.path.isdir(root) and (where == root or where.startswith(root.rstrip(os.sep) + os.sep)):
            raise ValueError(f"{name} {out} is inside {d}: the {written} written there would be read as images of {d} the next "
                             "time it is read; choose an --out outside it")


def cmd_train(a: argparse.Namespace) -> int:
    from cxrkit.config import TrainConfig
    from cxrkit.record import CONFIG_FILE, read_meta
    from cxrkit.training import train

    out_dir = Path(a.out or f"runs/{a.model}")
    if not a.labels and not a.config:  # a label table names its images: other files under DATA are never read (a --config
        _refuse_out_inside(out_dir, a.data, "run's plots")  # file may give one: its settings are checked below)
    if len(a.data) > 1 and not (a.resume and (out_dir / CONFIG_FILE).is_file()):
        from cxrkit.data.multisite import write_sources_file

        if (out_dir / "meta.json").exists() and not a.overwrite:
            raise FileExistsError(f"{out_dir} already holds a run; choose another --out or pass --overwrite")
        a.data = [str(write_sources_file(a.data, out_dir / "sources.yaml"))]  # several sites: one sources file, kept in the run
    elif len(a.data) > 1:
        a.data = [str(out_dir / "sources.yaml")]
    a.data = a.data[0]
    if a.resume and (out_dir / CONFIG_FILE).is_file():
        from cxrkit.training.trainer import resumed_config

        cfg = resumed_config(out_dir, a.data, _given_options(a), "--resume")  # the run's own settings
    elif a.config:
        if a.resume and out_dir.is_dir():
            print(f"note: {out_dir} has no {CONFIG_FILE} (it stopped before training began): --resume starts it afresh with "
                  f"{a.config} and the options given here", file=sys.stderr)
        cfg = TrainConfig.load(a.config, data=a.data)  # a hand-written file may leave the data to the DATA argument
        given = _given_options(a)
        d = cfg.to_dict()
        for k, v in given.items():
            if d.get(k) != v:
                print(f"note: {k} = {v!r} from the command line overrides {d.get(k)!r} from {a.config}", file=sys.stderr)
        cfg = TrainConfig.from_dict({**d, **given, "data": a.data, "out": a.out or cfg.out})
    else:
        if a.resume and out_dir.is_dir():  # killed during the audit: nothing trained yet, and nothing said it started again
            print(f"note: {out_dir} has no {CONFIG_FILE} (it stopped before training began): --resume starts it afresh with the "
                  "options given here", file=sys.stderr)
        cfg = _config_from_args(a, a.data, str(out_dir))
        if a.image_size is None:
            cfg = _native_size(cfg)
    if not cfg.labels:  # the out of a --config file, which the check above did not see
        _refuse_out_inside(cfg.out, [cfg.data], "run's plots", f"out (in {a.config})" if a.config and not a.out else "--out")
    from cxrkit.training.tracking import make_tracker

    out = train(cfg, progress=not a.quiet, overwrite=a.overwrite, resume=a.resume, tracker=make_tracker(a.track), device=a.device)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only process 0 reports
        return 0

    meta = read_meta(out)
    t = meta.training
    # The per-epoch AUC is one view per image; the summary below averages the test-time views, so the two differ.
    views = f"; one view per image, the figures below average {10 if meta.tta_flips else 5} test-time views" if meta.tta else ""
    print(f"\ntrained {t['epochs_run']} epoch(s), kept epoch {t['best_epoch']} (validation AUC {t['best_val_auc']:.4f}{views}); "
          f"{t['seconds_total']:.0f} s in all, median {t['images_per_second_median']:.0f} training images/s ({t['precision']})")
    _summary(out, "val")
    from cxrkit.record import read_metrics

    for n in (read_metrics(out).get("val") or {}).get("notes", []):  # written with the validation figures, said only in files
        print(f"warning: {n}", file=_result_stream())
    print(f"\nrun written to {out}/ (report: {out / 'report.html'})")
    _next_step_after_training(out, cfg.data, meta)
    return 0


def _next_step_after_training(out: Path, data: str, meta: RunMeta) -> None:
    """What validation chose and the command that gives an unbiased estimate, or why there is none in this data."""
    from cxrkit.report.narrative import validation_chose

    t = meta.training
    chose = validation_chose(t)
    if meta.threshold is None and meta.thresholds is None:  # multi-class: the most probable class decides, no threshold
        chose = "the checkpoint" if t.get("keep", "best") == "best" else None
    lead = f"validation figures chose {chose}" if chose else "validation figures are not a test result"
    splits = (meta.data or {}).get("counts") or {}
    if "test" in splits:
        print(f"{lead}; for an unbiased estimate run:")
        print(f"  cxrkit evaluate {out} {data} --split test")
        return
    print(f"{lead}, and {data} has no test split (only {', '.join(splits) or 'train and val'}); for an unbiased estimate run one of:")
    print(f"  cxrkit evaluate {out} OTHER_LABELLED_DATA   # images the run has never seen")
    print(f"  cxrkit train {data} --resplit --out {out}-resplit   # cut train/val/test from this data")


def _calibration_figures(c: dict) -> str:
    """``ECE 0.0412 (95% CI 0.0213–0.0871; chance alone up to 0.0600), Brier 0.1010 (...)``: the intervals, and the ECE a
    perfectly calibrated model reaches by chance on this many images, when the evaluation computed them."""
    def one(name: str, key: str) -> str:
        ci = c.get(f"{key}_ci")
        chance = c.get("ece_if_calibrated") if key == "ece" else None
        inside = "; ".join(x for x in (ci and f"95% CI {ci[0]:.4f}–{ci[1]:.4f}",
                                       chance and f"a calibrated model scores up to {chance['p95']:.4f} here by chance") if x)
        return f"{name} {c[key]:.4f}" + (f" ({inside})" if inside else "")

    return f"{one('ECE', 'ece')}, {one('Brier', 'brier')}"


def _decision_summary(m: dict) -> None:
    """Calibration, the threshold's spread, the WHO triage check, the screening sentences and the attention flag of an evaluation."""
    from cxrkit.report.narrative import cases_to_confirm_sentence, metric_text, screening_sentences, threshold_spread_sentence

    cal = m.get("calibration")
    if cal:
        line = f"  calibration: {_calibration_figures(cal['model'])}"
        if "calibrated" in cal:
            line += f"; after {cal['method']} calibration {_calibration_figures(cal['calibrated'])}"
        print(line)
    sentence = threshold_spread_sentence(m.get("threshold_spread"), m.get("threshold"), m["classes"])
    if sentence:
        print("  " + sentence)
    w = m.get("who_triage")
    if w:
        se, sp = w["sensitivity"], w["specificity"]
        pos = str(m["classes"][1])
        other = "" if "tb" in pos.lower() or "tuberc" in pos.lower() else f" (a target set for TB; for {pos} read it as a reference line)"
        print(f"  WHO TB-triage target (sensitivity >= 90% with specificity >= 70%) at the validation threshold for 90% sensitivity "
              f"({w['threshold']:.3f}): sensitivity {metric_text('sensitivity', se)}, specificity {metric_text('specificity', sp)}: "
              f"{w['verdict'].upper()}{other}")
        confirm = cases_to_confirm_sentence(w, m["classes"])
        if confirm:
            print("    " + confirm)
    if m.get("screening"):
        for s in screening_sentences(m["screening"], m["classes"][1]):
            print("  " + s.replace("<b>", "").replace("</b>", ""))
    att = m.get("attention") or {}
    if att.get("flag"):
        print(f"  warning: only {100 * att['mean_share']['lung']:.0f}% of the heat-map mass lies in the central lung field; "
              "the model may be reading markers, borders or text")


def _referral_summary(r: dict | None, classes: list[str] | None) -> None:
    """The referral band's decided share and the accuracy of the decided cases."""
    from cxrkit.report.narrative import metric_text

    if not r:
        return
    o, k, b = r["outcomes"], r["per_1000"], r["band"]
    pos = classes[1] if classes else "positive"
    print(f"  referral band {b['spec']} ({b['lower']:.3f}–{b['upper']:.3f}): decided alone {metric_text('share', o['decided_share'])}; "
          f"ruled out {o['ruled_out']} (NPV {metric_text('npv', o['npv_ruled_out'])}), "
          f"ruled in {o['ruled_in']} (PPV {metric_text('ppv', o['ppv_ruled_in'])}), referred {o['referred']}")
    print(f"  per 1,000 people like these: {k['referred']} read by a radiologist, {k['missed']} with {pos} cleared without a reader")


def cmd_referral(a: argparse.Namespace) -> int:
    from cxrkit.record.lock import run_lock

    with run_lock(a.run, "referral"):  # meta.json is read, given the band and written back
        return _referral(a)


def _referral(a: argparse.Namespace) -> int:
    """Choose or remove the referral band (the run is locked)."""
    from cxrkit.evaluation.evaluate import fresh_validation_predictions, referral_analysis, store_referral, validation_patients, validation_predictions
    from cxrkit.run import Run

    run = Run.load(a.run)
    if a.remove:
        run.record.referral = None
        run.save_record()
        print(f"referral band removed from {a.run}; decisions use the single threshold again")
        return 0
    if run.task != "binary":  # was "has no validation predictions ... not at hand", with both at hand
        raise ValueError(f"a referral band needs a binary run (one disease against normal); {a.run} is a {run.task} run")
    # The validation images predicted again when the data is at hand: predictions.csv is not bound to the weights, and rows
    # edited there (0.99 for every tb image) gave a band with 100% NPV and PPV, printed and stored.
    fresh, where = fresh_validation_predictions(run), "validation images"
    if fresh is not None:
        val, patients = fresh[:2], fresh[2]
    else:
        val, where = validation_predictions(run), "validation rows of predictions.csv (the training data is not at hand)"
        patients = validation_patients(run) if val is not None else None
    if val is None:
        raise ValueError(f"{a.run} has no validation predictions in predictions.csv to choose the band on, and its training data is not at hand")
    band = store_referral(run, val[0], val[1], a.spec, patients)
    r = referral_analysis(run, *val, patients)
    print(f"referral band chosen on {len(val[0])} {where}: rule out below {band['lower']:.3f}, rule in at or above {band['upper']:.3f}")
    _referral_summary(r, run.classes)
    if band.get("note"):
        print(f"note: {band['note']}")
    for line in band.get("unsupported") or []:
        print(f"warning: {line}", file=sys.stderr)
    print("validation figures (optimistic); run `cxrkit evaluate` for the test split. predict, evaluate and serve now say 'refer' in the band")
    return 0


def _subgroup_summary(subgroups: dict) -> None:
    """Per-group sensitivity, specificity and AUC with intervals, the heterogeneity tests and the largest gap."""

    def cell(e: dict) -> str:
        if e["value"] is None:
            return "n/a".ljust(20)
        ci = f" ({e['ci'][0]:.2f}-{e['ci'][1]:.2f})" if e.get("ci") else ""
        return f"{e['value']:.3f}{ci}".ljust(20)

    for name, sub in subgroups.items():
        if "per_finding" in sub:  # multi-label: the per-finding tables are in the report and metrics.json
            over = (sub["summary"] or [{}])[0].get("over")
            unit = "patients" if any(r.get("intervals_by") == "patient" for r in sub["per_finding"].values()) else "images"
            print(f"\nsubgroups by {name} (mean of per-finding ROC-AUCs over the findings every group has 5 {unit} with and without: "
                  f"{', '.join(over) if over else 'none'}; per-finding figures in report.html and metrics.json):")
            for g in sub["summary"]:
                auc = "n/a" if g["mean_auc"] is None else f"{g['mean_auc']:.3f} over {g['findings_measured']} findings"
                print(f"  {g['group'][:14]:<14}{g['n']:>6}  {auc}")
            for finding, sentence in sub["gaps_excluding_zero"].items():
                print(f"  {finding}: {sentence}")
            continue
        results = {"": sub}
        for finding, r in results.items():
            print(f"\nsubgroups by {name}{' (' + r['binning'] + ')' if r.get('binning') else ''}{', ' + finding if finding else ''}:")
            print(f"  {'group':<14}{'n':>6}{'pos':>6}  {'sensitivity':<20}{'specificity':<20}{'ROC-AUC':<20}")
            for g in r["groups"]:
                flag = "  (too few to compare)" if all(g["too_small"].values()) else ""
                print(f"  {g['group'][:14]:<14}{g['n']:>6}{g['n_positive']:>6}  {cell(g['sensitivity'])}{cell(g['specificity'])}{cell(g['roc_auc'])}{flag}")
            tests = ", ".join(f"{k} p = {t['p_value']:.3g}" for k, t in r["tests"].items() if t["p_value"] is not None)
            print(f"  heterogeneity: {tests or 'not testable (too few cases per group)'}")
            if r.get("largest_gap"):
                print(f"  largest gap: {r['largest_gap']['sentence']}")
            if r.get("missing"):
                print(f"  {r['missing']} image(s) have no value for {name} and are left out")


def _reader_summary(readers: dict | None) -> None:
    """Per reader: the model against the reader on the same images, in sentences."""
    from cxrkit.report.narrative import reader_sentences

    for name, r in ((readers or {}).get("readers") or {}).items():
        print(f"\nagainst reader {name} ({r['read']} images, {r['positives']} with the disease):")
        for sentence in reader_sentences(r):
            print("  " + sentence)


def _plan_hint(run: str, m: dict) -> None:
    """A binary evaluation whose intervals reach more than 0.1 from their estimates: how to find the images that would narrow them."""
    if m.get("task") != "binary":
        return
    # How far each interval reaches from its estimate on its longer side (half its width said ±0.15 for 0.85 (0.64-0.95),
    # whose lower bound is 0.21 below): the side plan's ±D bounds.
    from cxrkit.metrics.sample_size import interval_reach

    metrics = m.get("metrics") or {}
    reach = {k: interval_reach(e["value"], *e["ci"]) for k in ("sensitivity", "specificity", "roc_auc")
             if (e := metrics.get(k)) and e.get("value") is not None and e.get("ci") and None not in e["ci"]
             and not (k == "roc_auc" and e["ci"][0] <= 0.5)}  # plan cannot plan an AUC that may be at chance: it said so after this hint
    if not reach or max(reach.values()) <= 0.1:
        return
    k = max(reach, key=reach.get)
    e = metrics[k]
    print(f"note: on {m['n']} images ({m['n_positive']} {m['classes'][1]}) the {k} interval ({e['ci'][0]:.2f}-{e['ci'][1]:.2f}) reaches "
          f"{reach[k]:.2f} from its estimate {e['value']:.2f}; `cxrkit plan {run} --split {m['split']} --prevalence P` gives the images "
          "a study needs for ±0.05")


def cmd_evaluate(a: argparse.Namespace) -> int:
    from cxrkit.evaluation.evaluate import evaluate_run, parse_class_map

    by = [c.strip() for c in (a.by or "").split(",") if c.strip()]
    if a.by_table and not by:  # it only says where --by's columns are: alone it was ignored without a word
        raise ValueError("--by-table names the table of the --by columns; give --by COLUMN too (--by-pattern reads file names, not the table)")
    m = evaluate_run(a.run, a.data, a.split, class_map=parse_class_map(a.class_map), recalibrate_on=a.recalibrate_on,
                     prevalence=a.prevalence, explain=None if a.explain == "none" else a.explain, by=by, by_table=a.by_table,
                     by_pattern=a.by_pattern, device=a.device, readers=a.readers,
                     reader_columns=[c.strip() for c in (a.reader_columns or "").split(",") if c.strip()] or None)
    for n in m.get("notes", []):
        print(f"note: {n}")
    _summary(Path(a.run), m["split"])
    if "recalibrated" in m:
        r = m["recalibrated"]["metrics"]
        print(f"  at the re-chosen threshold {m['recalibrated']['threshold']:.3f}: sensitivity {100 * r['sensitivity']['value']:.1f}%, "
              f"specificity {100 * r['specificity']['value']:.1f}%")
    _decision_summary(m)
    _plan_hint(a.run, m)
    _subgroup_summary(m.get("subgroups") or {})
    _referral_summary(m.get("referral"), m.get("classes"))
    _reader_summary(m.get("readers"))
    print(f"\nmetrics.json, predictions.csv and report.html updated in {a.run}/")
    a.result = {"run": str(a.run), "split": m["split"], "metrics": m}
    return 0


def cmd_stress(a: argparse.Namespace) -> int:
    from cxrkit.evaluation.evaluate import parse_class_map
    from cxrkit.evaluation.stress import format_table, stress_run

    r = stress_run(a.run, a.data, a.split, progress=not a.quiet, class_map=parse_class_map(a.class_map))
    a.result = r
    print(format_table(r), file=_result_stream())
    print(f"\nstress.json updated in {a.run}/")
    return 0


def _check_writable(out: Path) -> None:
    """Fail now if ``out`` cannot be made: its nearest existing folder must take a new file (nothing is left behind)."""
    p = Path(out)
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    if p.is_dir():
        import tempfile

        with tempfile.TemporaryFile(dir=p):  # a read-only, foreign or full place says so now, not after the long work
            pass
    elif os.path.lexists(p) and p != Path(out):
        raise NotADirectoryError(20, "Not a directory", str(p))


def cmd_adapt(a: argparse.Namespace) -> int:
    from cxrkit.training.adapt import adapt_run

    _check_writable(Path(a.out))  # adapt makes --out only after decoding every image of the new site
    info = adapt_run(a.run, a.folder, a.out, a.batch_size, overwrite=a.overwrite, progress=not a.quiet)
    a.result = info
    print(f"{info['batchnorm_layers']} batch-norm layer(s) re-estimated on {info['images']} image(s) of {a.folder}"
          + (f" ({info['unreadable']} unreadable)" if info["unreadable"] else "") + f"; adapted run written to {a.out}/", file=_result_stream())
    kept = "threshold is" if info.get("task") == "binary" else "thresholds are" if info.get("task") == "multilabel" else "decision rule is"
    print(f"the {kept} still the source run's; to measure the adapted model: cxrkit evaluate {a.out} LABELLED_DATA")
    return 0


def _shard(text: str | None) -> tuple[int, int] | None:
    """``"K/N"`` (or, under torchrun, RANK/WORLD_SIZE) -> (K, N); None for an unsharded prediction."""
    import os

    if text is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        text = f"{os.environ['RANK']}/{os.environ['WORLD_SIZE']}"
    if text is None:
        return None
    k, sep, n = text.partition("/")
    if not sep or not k.isdigit() or not n.isdigit() or not 0 <= int(k) < int(n):
        raise ValueError(f"--shard {text!r}: write K/N with 0 <= K < N, e.g. --shard 0/4")
    return int(k), int(n)


def cmd_calibrate(a: argparse.Namespace) -> int:
    from cxrkit.evaluation.calibrate import calibrate_run, remove_calibration
    from cxrkit.metrics.calibration import MIN_SLOPE_CASES

    if a.remove:
        removed = remove_calibration(a.run, a.data, progress=not a.quiet)
        a.result = {"removed": bool(removed)}
        if not removed:
            print(f"{a.run} has no calibration; nothing removed", file=_result_stream())
            return 0
        print(f"calibration removed from {a.run}; predictions use the model's own probabilities and the original threshold, "
              "and the validation results (and any referral band) were re-scored and re-chosen with them", file=_result_stream())
        return 0
    c = calibrate_run(a.run, a.data, a.method, progress=not a.quiet)
    a.result = c
    b, f = c["before"], c["after"]
    # Measured on the images the map was fitted to: isotonic reaches ECE 0 there by construction.
    per_finding = isinstance(c["params"].get("how"), list)
    print(f"{c['method']} calibration fitted on {c['n']} validation images: {'mean over findings: ' if per_finding else ''}"
          f"ECE {b['ece']:.4f} -> {f['ece']:.4f}, Brier {b['brier']:.4f} -> {f['brier']:.4f} (on the images it was fitted to, so "
          "optimistic; `cxrkit evaluate` measures it on the test split)", file=_result_stream())
    if per_finding:  # multi-label: one map per finding; the decisions do not change
        how, names = c["params"]["how"], c["params"]["findings"]
        shifted = [n for n, h in zip(names, how) if h == "intercept"]
        fitted = [n for n in names if n not in shifted]
        print(f"  mean probability {b['mean_probability']:.3f} -> {f['mean_probability']:.3f}, against {b['share_with_it']:.3f} of "
              f"image-finding pairs positive; slope and intercept: {len(fitted)} finding(s){f' ({chr(44).join(fitted)})' if fitted else ''}"
              + (f"; intercept only: {len(shifted)} ({', '.join(shifted)}: under {MIN_SLOPE_CASES} validation images with and without "
                 "the finding, or not ranked the right way; ranking kept, mean probability moved to the validation share)" if shifted else "")
              + "; each finding's threshold moved with its map, so every decision stays as it was", file=_result_stream())
    if c["method"] == "isotonic" and c["n"] < 200:
        print(f"warning: isotonic calibration on {c['n']} images follows their noise (it needs a few hundred); Platt scaling "
              "(--method platt) has two parameters", file=sys.stderr)
    if f["ece"] > b["ece"]:
        print(f"warning: the calibrated probabilities are less calibrated than the model's own even on the images the map was fitted "
              f"to (ECE {b['ece']:.4f} -> {f['ece']:.4f}); `cxrkit calibrate {a.run} --remove` undoes it", file=sys.stderr)
    if c.get("threshold"):  # binary runs: a multi-class run decides by its top class
        t = c["threshold"]
        print(f"threshold re-chosen on calibrated validation probabilities with rule {t['rule']}: {t['uncalibrated']:.4f} -> {t['calibrated']:.4f}")
    if c.get("referral"):  # its bounds were on the old probability scale
        r = c["referral"]
        print(f"referral band {r['spec']} re-chosen on the calibrated validation probabilities: {r['lower']:.3f}-{r['upper']:.3f}")
    print(f"calibration.json written to {a.run}/; predict, evaluate and serve now apply it")
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    from cxrkit.prediction.files import find_images, skipped_line
    from cxrkit.run import Run

    run = Run.load(a.run, engine=a.engine, device=a.device)
    target = Path(a.path)
    found = find_images(target)
    paths = found.paths
    shard = _shard(a.shard)
    if shard:
        if not a.out:
            raise ValueError("a sharded prediction needs --out; each shard writes OUT with .shardK-of-N before the extension")
        k, n = shard
        paths = paths[k::n]
        a.out = str(Path(a.out).with_name(f"{Path(a.out).stem}.shard{k}-of-{n}{Path(a.out).suffix}"))
        if not paths:
            raise ValueError(f"shard {k}/{n} has no images ({target} has fewer than {n})")
    from cxrkit.data.shift import check_stats, image_stats, merge_stats
    from cxrkit.prediction.results import ood_summary, predict_results

    reference = run.shift_reference()
    batches: list = []
    collect = (lambda x: batches.append(image_stats(x))) if reference else None
    if a.out:
        from cxrkit.prediction.predict_csv import predict_to_csv

        s = predict_to_csv(run, paths, a.out, a.batch_size, a.workers, progress=len(paths) > 1 and not a.quiet, on_batch=collect)
        rate = f" ({(s['total'] - s['skipped']) / s['seconds']:.0f}/s)" if s["seconds"] > 0 and s["total"] > s["skipped"] else ""
        print(f"{s['total']} image(s): {s['skipped']} already in {a.out}, {s['predicted']} predicted in {s['seconds']:.1f} s{rate} "
              f"with {run.engine}; {s['errors']} unreadable; written to {a.out}")
        ood_line = ood_summary(s["ood"], s["total"])
        unreadable = s["unreadable"]
    else:
        results = predict_results(run, paths, a.batch_size, a.workers, progress=len(paths) > 1 and not a.quiet, on_batch=collect)
        ood_line = ood_summary(sum(1 for r in results if r["ood_warning"]), len(results)) if len(paths) > 1 else None
        unreadable = [(r["path"], r["error"]) for r in results if r["error"]]
    if target.is_dir():  # a single file's error is its own line below
        where = f" (in {a.out}'s error column)" if a.out else " (in the error column)" if not a.json else ""
        skipped = skipped_line(found, unreadable, where)
        if skipped:
            print(skipped, file=sys.stderr)
    shift = check_stats(reference, merge_stats(batches)) if reference and batches else None
    if shift:
        if shift["warning"]:
            print(f"warning: {shift['message']}; predictions on such images are less reliable than the run's metrics suggest",
                  file=sys.stderr)
    if ood_line:
        print(ood_line, file=sys.stderr)
    if reference is None:
        from cxrkit.run import NO_SHIFT_REFERENCE

        print(f"note: {a.run} has no {NO_SHIFT_REFERENCE}", file=sys.stderr)
    if a.out:
        a.result = {"model": _identity(run), "out": str(a.out), "summary": {k: v for k, v in s.items() if k != "unreadable"},
                    "skipped_files": found.skipped(), "shift_warning": shift["message"] if shift and shift["warning"] else None}
        return 0
    import numpy as np

    from cxrkit.prediction.predict_csv import csv_fields, result_row

    probs = np.array([[np.nan] * len(run.classes) if r["probabilities"] is None else [r["probabilities"][c] for c in run.classes]
                      for r in results])
    rows = [result_row(run, p, probs[i] if r["probabilities"] else None, r["decision"], r["error"], r["ood_findings"], reference is not None)
            for i, (p, r) in enumerate(zip(paths, results))]
    if a.json:
        a.result = {"model": _identity(run), "results": [_json_row(r) for r in rows], "skipped_files": found.skipped(),
                    "shift_warning": shift["message"] if shift and shift["warning"] else None}
        return 1 if len(paths) == 1 and rows[0]["error"] else 0
    out = _result_stream()
    if len(paths) == 1:
        r = rows[0]
        if r["error"]:
            print(f"{paths[0]}: could not be read: {r['error']}", file=sys.stderr)
            return 1
        if r["ood_warning"] == "yes":
            print(f"warning: {paths[0]} lies outside the training images' range ({r['ood_findings']}); the prediction is less "
                  "reliable than the run's metrics suggest", file=sys.stderr)
        if run.task == "multilabel":
            from cxrkit.evaluation.evaluate import unchosen_findings

            # A finding whose validation split had no positive decides at an unchosen 0.5; "chosen on validation" said otherwise.
            unchosen = set(unchosen_findings(run))
            found = [f"{c} {probs[0, j]:.3f} (>= {t:.3f}{', unchosen' if c in unchosen else ''})"
                     for j, (c, t) in enumerate(zip(run.classes, run.thresholds)) if probs[0, j] >= t]
            print(f"{paths[0]}: {', '.join(found) if found else 'no finding above its threshold'}  (thresholds chosen per finding on validation"
                  + (f", except {', '.join(sorted(unchosen))}: 0.5{' of the uncalibrated probability' if run.calibration else ''}"
                     if unchosen else "") + ")", file=out)
        elif run.task == "binary":
            from cxrkit.report.narrative import against_threshold

            pos = run.classes[1]
            shown_p, shown_t = against_threshold(float(probs[0, 1]), float(run.threshold))
            print(f"{paths[0]}: {r['prediction']}  (P({pos}) = {shown_p}; called {pos} when >= {shown_t}, "
                  f"rule {run.meta['threshold']['rule']} chosen on validation"
                  + (f"; probabilities {run.calibration['method']}-calibrated" if run.calibration else "") + ")", file=out)
        else:
            ranked = ", ".join(f"{c} {probs[0, j]:.3f}" for j, c in sorted(enumerate(run.classes), key=lambda t: -probs[0, t[0]]))
            print(f"{paths[0]}: {r['prediction']}  ({ranked})", file=out)
        return 0
    w = csv.DictWriter(out, fieldnames=csv_fields(run))
    w.writeheader()
    w.writerows(rows)
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from cxrkit.export.onnx import export_onnx

    r = export_onnx(a.run, a.out, quantize=a.quantize)
    # Only the files in the run folder are what predict and serve pick up: a copy elsewhere is not used by them.
    used = "predict and serve now use it (--engine torch to opt out)" if r["used_by_run"] else \
        f"not used by predict and serve, which read {Path(a.run) / 'model.onnx'} (the default --out)"
    print(f"wrote {r['path']}: ONNX Runtime matches PyTorch on {r['samples']} sample images "
          f"(max abs probability difference {r['max_abs_diff']:.1e}); {used}")
    q = r.get("quantized")
    if q:
        int8_use = "used only with --engine onnx-int8" if r["used_by_run"] else "not used by predict and serve"
        if q.get("auc_fp32") is not None and q.get("auc_int8") is not None:
            print(f"wrote {q['path']}: validation ROC-AUC {q['auc_fp32']:.4f} -> {q['auc_int8']:.4f} int8 "
                  f"(change {q['auc_change']:+.4f}, n={q['n']}; max abs probability difference {q['max_abs_prob_diff']:.1e}); "
                  f"{int8_use}")
        else:
            print(f"wrote {q['path']}: {q.get('note', 'AUC cost not measured')}; {int8_use}")
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from cxrkit.serve.app import Limits, create_app, resolve_api_key
    from cxrkit.serve.server import ConnectionLimits, is_loopback, listen, serve, url

    limits = Limits(max_file_bytes=int(a.max_upload_mb * 1024 * 1024), max_files=a.max_files, max_pixels=a.max_pixels, max_decodes=a.max_decodes,
                    max_inflight_bytes=a.max_inflight_mb * 1024 * 1024)
    connection_limits = ConnectionLimits(header_timeout=a.header_timeout, body_timeout=a.body_timeout, max_connections=a.max_connections,
                                         body_min_rate=a.body_min_rate)
    api_key = a.api_key
    if a.api_key_file:
        from cxrkit.serve.guard import read_api_key_file

        api_key = read_api_key_file(a.api_key_file)
    api_key = resolve_api_key(api_key)  # once: the banner says what the server enforces ('' turns an environment key off)
    app = create_app(a.run, engine=a.engine, api_key=api_key or "", limits=limits, cors_origins=a.cors_origin, device=a.device)
    # Bound before the banner: a port in use (or an unknown host) printed "serving on ..." and then failed.
    sock = listen(a.host, a.port)
    svc = app.state.service
    print(f"serving {svc.identity['id']} (version {svc.identity['version']}, {svc.run.engine} on {svc.run.device}) on {url(a.host, a.port)} "
          f"(API docs at /docs; {'API key required' if api_key else 'no API key'})")
    if api_key is None and not is_loopback(a.host):
        print(f"warning: listening on {a.host}, reachable from other machines, with no API key: anyone who can reach this port can "
              "use the model; set --api-key-file or $CXRKIT_API_KEY", file=sys.stderr)
    serve(app, a.host, a.port, connection_limits, sock=sock)
    return 0


@contextlib.contextmanager
def _output_folder(out: Path) -> Iterator[None]:
    """Make ``out`` and check that a file can be created in it before the work that fills it; when the work fails, the
    folders made here are removed again if nothing was written into them."""
    made, p = [], Path(out)
    while not os.path.lexists(p) and p != p.parent:
        made.append(p)
        p = p.parent
    out.mkdir(parents=True, exist_ok=True)
    try:
        import tempfile

        with tempfile.TemporaryFile(dir=out):  # a read-only or full file system says so now
            pass
        yield
    except BaseException:
        for d in made:  # deepest first; a folder the work wrote into stays
            try:
                d.rmdir()
            except OSError:
                break
        raise


def cmd_audit(a: argparse.Namespace) -> int:
    from cxrkit.audit.dataset_audit import audit_dataset
    from cxrkit.audit.messages import audit_messages
    from cxrkit.audit.report import save_audit

    out = Path(a.out or f"runs/audit-{'+'.join(Path(d).stem for d in a.data)}")
    with _output_folder(out):  # an --out that cannot be written failed only after every image had been read
        data = a.data[0]
        if len(a.data) > 1:  # several sites, as `cxrkit train A B` reads them: one sources file, kept beside the audit
            from cxrkit.data.multisite import write_sources_file

            data = write_sources_file(a.data, out / "sources.yaml")
        audit = audit_dataset(data, a.group_pattern, a.val_fraction, a.test_fraction, a.seed, a.cache_dir, progress=not a.quiet,
                              labels=a.labels, label_column=a.label_column, task=a.task, resplit=a.resplit)
        save_audit(audit, out)
    read = audit["seconds"]["files_computed"]
    print(f"{audit['n_files']} files audited in {audit['seconds']['total']:.1f} s ({read} read, {audit['n_files'] - read} from the cache)")
    if audit.get("labels_from"):  # a covariate read as a finding, or the patient column missed, shows here
        print("  " + audit["labels_from"], file=_result_stream())
    for m in audit_messages(audit):  # the findings are the result (--quiet keeps them)
        print(("  " if not m.isupper() and not m.split(":")[0].isupper() else "! ") + m, file=_result_stream())
    print(f"audit.json and audit.html written to {out}/")
    v = audit["verdict"]
    a.result = {"out": str(out), "messages": audit_messages(audit), "audit": audit}
    return 1 if a.strict and (v["leakage"] or v["shortcut"]) else 0


def cmd_explain(a: argparse.Namespace) -> int:
    from cxrkit.explain.cam import resolve_method
    from cxrkit.explain.export import INDEX_FILE, explain_files
    from cxrkit.prediction.files import find_images, skipped_line
    from cxrkit.run import Run, RunError

    _refuse_out_inside(a.out, [a.path], "overlay PNGs")
    run = Run.load(a.run, device=a.device)
    # One image of the run's own data explained into its class folder made the overlays more images of that class.
    with contextlib.suppress(RunError):
        _refuse_out_inside(a.out, [str(run.data_root())], "overlay PNGs")
    found = find_images(a.path)
    a.method = resolve_method(run, a.method)  # auto: the model's own default, named in what is printed
    rows = explain_files(run, found.paths, a.out, a.method, progress=len(found.paths) > 1 and not a.quiet)
    bad = [r for r in rows if r["error"]]
    if Path(a.path).is_dir():
        skipped = skipped_line(found, [(r["path"], r["error"]) for r in bad], f" (all in {Path(a.out) / INDEX_FILE})")
        if skipped:
            print(skipped, file=sys.stderr)
    else:
        for r in bad:
            print(f"{r['path']}: could not be read: {r['error']}", file=sys.stderr)
    print(f"{len(rows) - len(bad)} image(s) explained with {a.method}, one overlay per class ({', '.join(run.classes)}), "
          f"written to {a.out}/ (listed in {INDEX_FILE})")
    blank = sum(len(r.get("no_heat") or []) for r in rows)
    if blank:  # such an overlay looks like the input image: half of them, on a two-class run, without a word
        print(f"note: {blank} of {len(rows) - len(bad)} x {len(run.classes)} overlay(s) show no heat: nothing in that image raised that "
              f"class's score ({a.method} is zero everywhere; usually the class the model did not choose), so they show the image alone")
    return 0 if len(bad) < len(rows) else 1


def cmd_compare(a: argparse.Namespace) -> int:
    from cxrkit.experiments.compare import compare, parse_models

    if not a.labels:  # a label table names its images: other files under DATA are never read
        _refuse_out_inside(a.out, [a.data], "runs' plots")
    base = _config_from_args(a, a.data, a.out, model=parse_models(a.models, _defaults()["image_size"])[0][1])
    if a.image_size is None:  # as train does: small images compare at their own size (an mlp trained at 224 px on 96 px images)
        base = _native_size(base)
    models = parse_models(a.models, base.image_size)
    from cxrkit.training.tracking import make_tracker

    make_tracker(a.track)  # a missing tracking library is an error before the first model trains
    s = compare(a.data, models, a.out, base, split=a.split, resume=a.resume, overwrite=a.overwrite, track=a.track)
    print()
    print((Path(a.out) / "comparison.md").read_text())
    print(f"comparison written to {a.out}/ (comparison.csv, comparison.md, report.html)")
    return 0 if not s["failed"] else 1


def cmd_tune(a: argparse.Namespace) -> int:
    from cxrkit.experiments.tune import check_options, tune

    out = a.out or f"runs/tune-{a.model}"
    base = _config_from_args(a, a.data, out)
    try:
        sizes = [int(x) for x in a.image_sizes.split(",") if x.strip()] if a.image_sizes else None
    except ValueError:
        raise ValueError(f"--image-sizes {a.image_sizes!r}: write comma-separated whole numbers, e.g. 64,96,128") from None
    check_options(a.trials, sizes, a.timeout_minutes)  # before the images are read for their size
    if a.image_size is None and not a.image_sizes:  # as train does: small images are tuned at their own size
        base = _native_size(base)
    from cxrkit.training.tracking import make_tracker

    make_tracker(a.track)
    s = tune(a.data, base, a.trials, out, storage=a.storage, study_name=a.study_name, image_sizes=sizes, timeout_minutes=a.timeout_minutes,
             track=a.track)
    print(f"\nstudy {s['study']}: {s['trials']} trial(s), {s['completed']} completed, {s['pruned']} pruned, {s['failed']} failed "
          f"(all trials in {out}/trials.csv)")
    if "best_val_auc" not in s:
        print("no trial completed: each one failed (the reasons are above); change the settings the trials share"
              if s["failed"] and not s["pruned"] else "no trial completed yet; run the same command again to continue")
        return 1
    print(f"best: trial {s['best_trial']}, validation AUC {s['best_val_auc']:.4f} with {s['best_params']}")
    print(f"train it with:  cxrkit train {a.data} --config {s['config']}")
    print("(the test split was not used; evaluate the trained model on it once)")
    return 0


def cmd_models(a: argparse.Namespace) -> int:
    from cxrkit.models.registry import MODELS, build_model, count_parameters

    out = _result_stream()
    rows = []
    for name, spec in MODELS.items():
        _, total = count_parameters(build_model(name, 1))
        rows.append({"name": name, "parameters": total, "description": spec.description})
    a.result = {"models": rows, "note": "parameter counts for a binary task; multi-class heads add a few per class"}
    print(f"{'name':<20}{'parameters':>12}  description", file=out)
    for r in rows:
        print(f"{r['name']:<20}{r['parameters']:>12,}  {r['description']}", file=out)
    print("\n(parameter counts for a binary task; multi-class heads add a few per class)")
    return 0


def cmd_plan(a: argparse.Namespace) -> int:
    from cxrkit.evaluation.study_plan import plan_for_run
    from cxrkit.metrics.sample_size import plan_study

    given = {"sensitivity": a.sensitivity, "specificity": a.specificity, "auc": a.auc}
    if a.run is not None:
        plan = plan_for_run(a.run, a.half_width, a.prevalence, a.split, a.confidence, a.point_estimates, **given)
    else:
        if a.split is not None or a.point_estimates:
            raise ValueError(f"{'--split' if a.split is not None else '--point-estimates'} reads a run's stored figures; give the run folder too")
        if a.prevalence is None:
            raise ValueError("--prevalence is needed without a run: the share of images with the disease at the site to be studied")
        plan = plan_study(a.prevalence, a.half_width, confidence=a.confidence, **given)
    a.result = plan
    out = _result_stream()
    conf = f"{a.confidence * 100:g}%"
    print(f"validation study for {conf} intervals of at most ±{plan['half_width']:.3g} at prevalence {plan['prevalence']:.3g}", file=out)
    print(f"  {'figure':<13}{'anticipated':>12}  {'needs':<17}{'images':>9}  (with / without the disease)", file=out)
    for r in plan["requirements"]:
        print(f"  {r['metric']:<13}{r['anticipated']:>12.3f}  {r['needed_cases']:>7,} {r['cases']:<9}{r['images']:>9,}  "
              f"({r['positives']:,} / {r['negatives']:,})", file=out)
    print(f"needed: {plan['images']:,} images, {plan['positives']:,} with the disease and {plan['negatives']:,} without "
          f"(set by {plan['binding']})", file=out)
    src = plan.get("from_run")
    if src:
        print(f"anticipated figures from {src['run']}'s {src['split']} split ({src['n']} images, {src['n_positive']} with the disease), "
              f"{src['anticipated_from_run']}" + ("" if src["anticipated_from_run"] == "point estimates" else " (--point-estimates for the point values)")
              + ("; the prevalence too: a screening site's is often far lower, pass --prevalence" if src["prevalence_from_run"] else ""))
        for name, why in src["skipped"].items():
            print(f"  {name}: {why}")
        if src["current_reach"]:
            print("  that split's 95% intervals reach " + ", ".join(f"{w:.3f} ({k})" for k, w in src["current_reach"].items())
                  + " from their estimates")
        if src["split"] == "val":
            print("  (validation figures chose the threshold and the kept epoch: optimistic; a new site will likely score lower)")
        if src.get("patients"):
            pat = src["patients"]
            worst = max(pat["design_effect"].values(), default=pat["images_per_patient"])
            print(f"  these counts are independent cases: plan them as patients, one image each. That split had {pat['images_per_patient']:.1f} "
                  f"images per patient ({src['n']} from {pat['n_patients']}), and its intervals counted patients (design effect up to "
                  f"{worst:.1f}): a study of repeat films needs about {worst:.1f}x the images")
    print("anticipated values are estimates: a lower sensitivity or specificity closer to 0.5, or a lower AUC, needs more images")
    return 0


def _check_demo_folder(out: Path, data: Path, overwrite: bool) -> None:
    """Refuse to let the demo delete or overwrite what it did not write: a user's files in OUT/data are never deleted, and
    another run or other files in OUT need --overwrite (an earlier demo in OUT is replaced, so the README's command reruns)."""
    import yaml

    from cxrkit.data.synthetic import is_demo_dataset
    from cxrkit.record import CONFIG_FILE
    from cxrkit.record.lock import LOCK_FILE

    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; give a folder for the demo")
    if not out.is_dir():
        return
    if (data.exists() or data.is_symlink()) and not is_demo_dataset(data):
        raise FileExistsError(f"{data} holds files that `cxrkit demo` did not write, and the demo would replace it; "
                              "nothing was deleted: choose another --out")
    entries = {p.name for p in out.iterdir()}
    if overwrite or not entries:
        return
    if (out / CONFIG_FILE).is_file():
        try:
            trained_on = yaml.safe_load((out / CONFIG_FILE).read_text()).get("data")
        except (OSError, ValueError, AttributeError, yaml.YAMLError):
            trained_on = None
        on = Path(str(trained_on))
        earlier_demo = "data" in entries and on.name == "data" and (not on.is_absolute() or on.resolve() == data.resolve())
        what = "a run"
    else:  # a demo stopped before training wrote its config: only its data, cache and lock
        earlier_demo = entries <= {"data", "cache", LOCK_FILE}
        what = "files"
    if not earlier_demo:
        raise FileExistsError(f"{out} already holds {what} that `cxrkit demo` did not write; choose another --out or pass --overwrite")


def cmd_demo(a: argparse.Namespace) -> int:
    import shutil

    from cxrkit.config import TrainConfig
    from cxrkit.data.augment import default_augment
    from cxrkit.data.synthetic import make_synthetic_dataset
    from cxrkit.evaluation.evaluate import evaluate_run
    from cxrkit.training import train

    out = Path(a.out)
    data = out / "data"
    t0 = time.perf_counter()
    _check_demo_folder(out, data, a.overwrite)
    if data.exists():
        shutil.rmtree(data)
    print(f"making a synthetic chest X-ray dataset in {data}/ (train/ and test/, classes healthy and tb) ...")
    make_synthetic_dataset(data, n_per_class=a.n_per_class, size=96, seed=a.seed, splits={"train": 0.8, "test": 0.2}, signal=0.6)
    cfg = TrainConfig(
        data=str(data), out=str(out), model=a.model, image_size=a.image_size, epochs=a.epochs, patience=5,
        batch_size=32, lr=2e-3, seed=a.seed, cache_dir=str(out / "cache"), augment=default_augment(),
    )
    train(cfg, overwrite=True)
    print("\nevaluating once on the held-out test split ...")
    evaluate_run(out, data, "test")
    _summary(out, "test")
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; open {out / 'report.html'} in a browser")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for all sub-commands."""
    from cxrkit.data.spec import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
    from cxrkit.explain import METHODS as HEATMAP_METHODS
    from cxrkit.metrics.calibration import CALIBRATION_METHODS
    from cxrkit.record.files import ENGINES

    p = argparse.ArgumentParser(
        prog="cxrkit",
        description="Chest X-ray classification: train on a folder of images, evaluate honestly, predict, report.",
        epilog="Run `cxrkit <command> --help` for a command's options.",
    )
    p.add_argument("--version", action="version", version=f"cxrkit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="command")

    d = sub.add_parser("demo", help="synthetic data -> train -> evaluate -> report, about 30 s on 2 idle CPU cores")
    d.add_argument("--out", default="runs/demo", help="run folder (default %(default)s)")
    d.add_argument("--model", default="cnn", help="model name, as in `cxrkit models` (default %(default)s: small and fast)")
    d.add_argument("--epochs", type=bounded_int(1, 1000), default=15, help="training epochs (default %(default)s)")
    d.add_argument("--image-size", type=bounded_int(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE), default=64,
                   help=f"model input size in pixels, {MIN_IMAGE_SIZE}-{MAX_IMAGE_SIZE} (default %(default)s)")
    d.add_argument("--n-per-class", type=bounded_int(20, 5000), default=200,
                   help="synthetic images per class, 20-5000 (default %(default)s)")
    d.add_argument("--seed", type=bounded_int(0, 2**32 - 1), default=0, help="seed of the synthetic data and the training (default %(default)s)")
    d.add_argument("--overwrite", action="store_true",
                   help="replace a run or other files in --out that an earlier demo did not write (an OUT/data folder of your own "
                        "is never deleted); an earlier demo in --out is replaced without it")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train a model on a dataset folder or zip",
                       description="Train on DATA: <root>/<split>/<class>/*, <root>/<class>/* or a .zip of either. "
                                   "Writes the model, metrics on the validation split and report.html into --out. "
                                   "Test images are never used here.")
    t.add_argument("data", nargs="+", help="dataset folder or .zip; several folders (one per site) train on their union with a site "
                                            "per image (written to OUT/sources.yaml); or a sources .yaml")
    t.add_argument("--out", default=None, help="run folder (default runs/<model>)")
    t.add_argument("--config", default=None,
                   help="settings from a YAML file (a run's config.yaml, best_config.yaml or your own; keys as in config.yaml, "
                        "data: defaults to DATA); options given on the command line override it, with a note")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run in --out (its metrics and plots are deleted)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last per-epoch checkpoint with its saved config.yaml (an option that "
                        "differs from it is refused, except --threshold-rule, --allow-point-estimate and --referral); starts a new run when there is "
                        "none, so the same command suits preemptible jobs")
    _add_device_option(t, "train on")
    _add_train_options(t)
    _output_options(t, json_output=False)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a run on a split (test by default), at its validation-chosen threshold")
    e.add_argument("run", help="run folder written by `cxrkit train`")
    e.add_argument("data", nargs="?", default=None, help="dataset (default: the one the run was trained on)")
    e.add_argument("--split", choices=["test", "val", "train", "all"], default=None,
                   help="split to evaluate (default: test of the training data; all images of another dataset)")
    e.add_argument("--class-map", default=None, metavar="DATASET=MODEL,...",
                   help="match another dataset's class folders to the model's classes, e.g. healthy=normal,TB=tb "
                        "(same names, case differences and normal/healthy/negative are matched automatically)")
    e.add_argument("--recalibrate-on", default=None, metavar="SAMPLE_DIR",
                   help="a small labelled sample of the new site (other images than DATA): the threshold is re-chosen on it "
                        "with the run's rule and DATA is also scored at that threshold")
    e.add_argument("--prevalence", type=float, default=None, metavar="P",
                   help="share of disease in the population the model will screen, e.g. 0.05: PPV and NPV are recomputed by "
                        "Bayes' rule and the report says what happens per 1,000 people screened (binary runs)")
    e.add_argument("--explain", choices=["auto", *HEATMAP_METHODS, "none"], default="auto",
                   help="heat-map method for the report's gallery and 'where does it look' figure (default %(default)s: occlusion, "
                        "for every model: Grad-CAM missed a corner-marker shortcut on each model measured; gradcam is faster)")
    e.add_argument("--by", default=None, metavar="COLUMN[,COLUMN]",
                   help="subgroup figures by label-table columns, e.g. 'Patient Gender,Patient Age,View Position': per group n, "
                        "prevalence, AUC, sensitivity, specificity, PPV, NPV with 95%% CIs, heterogeneity tests and the largest gap; "
                        "numeric columns are banded (age: 0-17, 18-39, 40-59, 60+)")
    e.add_argument("--by-table", default=None, metavar="FILE.csv",
                   help="table holding the --by columns (default: the run's own --labels table); images matched by path or file name")
    e.add_argument("--by-pattern", action="append", default=None, metavar="NAME=REGEX",
                   help="subgroups from file names: the first capture group of REGEX, e.g. 'site=^(CHNCXR|MCUCXR)' (repeatable)")
    e.add_argument("--readers", default=None, metavar="READS.csv",
                   help="human readers' calls on the same images (binary runs): a path column and one column per reader holding its call "
                        "(the class names, 0/1 or negative/positive; blank where not read). Each reader's sensitivity and specificity "
                        "against the model's at its threshold on the same images (paired: Newcombe interval of the difference, McNemar "
                        "test; by patient where patients have several images), and the model at the reader's own specificity and sensitivity")
    e.add_argument("--reader-columns", default=None, metavar="COLUMN[,COLUMN]",
                   help="the reader columns of --readers (default: every column but the path, label, patient and image facts)")
    _add_device_option(e, "run the model on")
    _output_options(e)
    e.set_defaults(func=cmd_evaluate)

    st = sub.add_parser("stress", help="does the model read the lungs? ROC-AUC under exposure, contrast, gamma, masks and resampling",
                        description="Re-evaluate a split (test by default; all images of another dataset) with each image changed: "
                                    "re-standardised to the training images' exposure, brighter/darker, more/less contrast, gamma, "
                                    "border band masked, corners masked, down- and up-sampled. Prints each ROC-AUC (95% CI) and its "
                                    "paired DeLong change; a drop of 0.05 or more (p < 0.05) under a change that leaves the lungs "
                                    "alone is reported as a shortcut. For a run trained with --intensity, each change is made before the run's "
                                    "own normalisation, as a re-exposed file would reach the model. Writes RUN/stress.json. Binary runs.")
    st.add_argument("run", help="run folder written by `cxrkit train`")
    st.add_argument("data", nargs="?", default=None, help="dataset (default: the one the run was trained on)")
    st.add_argument("--split", choices=["test", "val", "train", "all"], default=None,
                    help="split to stress (default: test of the training data; all images of another dataset)")
    st.add_argument("--class-map", default=None, metavar="DATASET=MODEL,...", help="as for evaluate")
    _output_options(st)
    st.set_defaults(func=cmd_stress)

    ad = sub.add_parser("adapt", help="AdaBN: re-estimate batch-norm statistics on unlabelled images of a new site",
                        description="Copy RUN to --out with every batch-norm layer's running mean and variance re-estimated on the "
                                    "images under FOLDER (a new site's unlabelled images; at least 16). No weight is trained and no "
                                    "label is read; the threshold stays the source run's (re-choose it with evaluate --recalibrate-on).")
    ad.add_argument("run", help="run folder written by `cxrkit train`")
    ad.add_argument("folder", help="folder of unlabelled images from the new site (searched recursively)")
    ad.add_argument("--out", required=True, help="folder for the adapted run (the source run is not changed)")
    # At least 2: a batch of one has no variance and is skipped, so --batch-size 1 (or 0, or a negative one, which made no
    # batch at all) left every layer with reset statistics (mean 0, variance 1) and still said they were re-estimated.
    ad.add_argument("--batch-size", type=bounded_int(2, 4096), default=64, help="images per batch-norm batch, 2-4096 (default %(default)s)")
    ad.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _output_options(ad)
    ad.set_defaults(func=cmd_adapt)

    ca = sub.add_parser("calibrate", help="fit a probability calibration on the validation split and store it in the run",
                        description="Fit temperature scaling (any run), Platt scaling or isotonic regression (binary runs) on the "
                                    "validation split, never test (default: Platt for binary, temperature for multi-class). "
                                    "The map is saved as calibration.json and applied by predict, evaluate "
                                    "and serve; a binary run's threshold is re-chosen with its rule on the calibrated validation "
                                    "probabilities (the old one is kept in meta.json). Prints ECE and Brier score before and after.")
    ca.add_argument("run", help="run folder")
    ca.add_argument("data", nargs="?", default=None, help="dataset (default: the one the run was trained on); its validation split is used")
    ca.add_argument("--method", choices=["auto", *CALIBRATION_METHODS], default="auto",
                    help="auto (default): platt for binary runs, temperature for multi-class; temperature: one scalar on the logits; "
                         "platt: logistic regression on the logit (also undoes the shift of class-weighted training); "
                         "isotonic: monotone steps, needs a few hundred validation images")
    ca.add_argument("--remove", action="store_true", help="delete the run's calibration, restore its original threshold and re-score "
                    "the validation split without it (needs the run's data, or DATA)")
    _output_options(ca)
    ca.set_defaults(func=cmd_calibrate)

    pr = sub.add_parser("predict", help="classify one image or every image under a folder")
    pr.add_argument("run", help="run folder")
    pr.add_argument("path", help="an image file or a folder of images")
    pr.add_argument("--out", default=None,
                    help="CSV file to write, checkpointed atomically; run again with the same --out to resume (files with "
                         "a result are skipped, failed ones retried) (default: print)")
    pr.add_argument("--batch-size", type=bounded_int(1, 1024), default=32, help="images per model call, 1-1024 (default %(default)s)")
    pr.add_argument("--workers", type=bounded_int(0, 64), default=4, help="threads decoding images while the model runs (0: none) (default %(default)s)")
    pr.add_argument("--engine", choices=ENGINES, default="auto",
                    help="auto (default): ONNX Runtime when `cxrkit export` wrote model.onnx for these weights, else PyTorch; "
                         "or force one (onnx-int8 needs `cxrkit export --quantize int8`)")
    pr.add_argument("--shard", default=None, metavar="K/N",
                    help="predict only every N-th image of the folder starting at K (processes share a folder this way); "
                         "under torchrun K/N come from RANK/WORLD_SIZE. Needs --out: --out preds.csv --shard 0/2 writes preds.shard0-of-2.csv")
    _add_device_option(pr, "run the model on")
    _output_options(pr)
    pr.set_defaults(func=cmd_predict)

    ex = sub.add_parser("export", help="export a run's model to ONNX, checked against PyTorch",
                        description="Write RUN/model.onnx (network only: normalised image in, logits out; metadata holds classes, "
                                    "size, mean/std, intensity mode, threshold and calibration) after checking that ONNX Runtime "
                                    "reproduces PyTorch's probabilities within 1e-4 on sample images; fails otherwise. "
                                    "`cxrkit predict` and `cxrkit serve` then use ONNX Runtime.")
    ex.add_argument("run", help="run folder")
    ex.add_argument("--format", choices=["onnx"], default="onnx", help="export format (default %(default)s)")
    ex.add_argument("--out", default=None, help="file to write (default RUN/model.onnx, which predict and serve pick up)")
    ex.add_argument("--quantize", choices=["int8"], default=None,
                    help="also write model.int8.onnx (dynamic int8 weights) and measure its validation ROC-AUC change")
    ex.set_defaults(func=cmd_export)

    sv = sub.add_parser("serve", help="serve a run over HTTP: JSON API, web page at /, OpenAPI docs at /docs",
                        description="POST /v1/predict (multipart 'files': PNG, JPEG, BMP, TIFF or DICOM) answers per-class "
                                    "probabilities, the decision at the run's threshold, an out-of-distribution warning and, with "
                                    "?explain=true, a heat-map overlay (occlusion, as in the report). "
                                    "GET /v1/model gives the model card, GET /healthz liveness.")
    sv.add_argument("run", help="run folder")
    sv.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default %(default)s: this machine only; 0.0.0.0 every interface, with a warning "
                         "when no API key is set)")
    # 1-65535: a port outside was accepted, the model loaded and "serving on http://127.0.0.1:99999/" printed before the
    # bind failed with a traceback (exit 3).
    sv.add_argument("--port", type=bounded_int(1, 65535), default=8000, help="port, 1-65535 (default %(default)s)")
    key = sv.add_mutually_exclusive_group()
    key.add_argument("--api-key", default=None,
                     help="require this key as X-API-Key on /v1/* (default: $CXRKIT_API_KEY; none when unset); visible to other "
                          "users in `ps`, so prefer --api-key-file or the variable")
    key.add_argument("--api-key-file", default=None, metavar="FILE", help="read the key from the first line of FILE (e.g. a mounted secret)")
    sv.add_argument("--engine", choices=ENGINES, default="auto",
                    help="auto (default): ONNX Runtime when model.onnx matches the weights, else PyTorch")
    sv.add_argument("--max-upload-mb", type=bounded_float(0.001, 1024), default=50,
                    help="largest file accepted, in MiB, 0.001-1024 (default %(default)s)")
    sv.add_argument("--max-files", type=bounded_int(1, 256), default=16, help="most files per request (default %(default)s)")
    sv.add_argument("--max-pixels", type=bounded_int(4096, 200_000_000), default=40_000_000,
                    help="largest image in pixels, checked before decoding (default %(default)s)")
    sv.add_argument("--max-inflight-mb", type=bounded_int(1, 1024 * 1024), default=2048,
                    help="request bodies held at once across all requests, in MB (spooled to disk until answered); past it a new "
                         "upload is answered 503 with Retry-After (default %(default)s)")
    sv.add_argument("--max-decodes", type=bounded_int(1, 64), default=1,
                    help="images decoded at once across all requests; each full-size 40 MP decode holds ~170 MB, so more "
                         "speeds up concurrent requests at that cost in memory (default %(default)s)")
    sv.add_argument("--header-timeout", type=float, default=10, metavar="SECONDS",
                    help="close a connection whose request headers are not complete in this time (default %(default)s)")
    sv.add_argument("--body-timeout", type=float, default=30, metavar="SECONDS",
                    help="answer 408 and close when the request body pauses this long, or has not arrived this long after the request "
                         "began plus a second per --body-min-rate bytes (default %(default)s)")
    sv.add_argument("--body-min-rate", type=bounded_float(1, 1e9), default=500, metavar="BYTES_PER_S",
                    help="slowest average upload accepted once --body-timeout has passed: a client trickling a byte every few "
                         "seconds held its connection for ever (default %(default)s, as Apache's mod_reqtimeout)")
    sv.add_argument("--max-connections", type=bounded_int(1, 1_000_000), default=4096,
                    help="open connections past which requests are answered 503 (default %(default)s)")
    sv.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                    help="allow browser calls from this origin, as browsers send it: scheme://host[:port], e.g. "
                         "https://viewer.example.org (repeatable); CORS is off by default")
    _add_device_option(sv, "run the model on")
    sv.set_defaults(func=cmd_serve)
    au = sub.add_parser("audit", help="check a dataset for leakage, duplicates, corrupt files and non-anatomical shortcuts",
                        description="Audit DATA with the split training would use: class balance per split; per-class image size, "
                                    "aspect ratio, mode, bit depth, channels, format and intensity; byte-identical and near-identical "
                                    "(perceptual hash) images within and across splits and classes; patient overlap (with "
                                    "--group-pattern); corrupt files; and a shortcut probe, a classifier on non-anatomical features "
                                    "only (warns above AUC 0.75 and names the giveaways). Writes audit.json and audit.html. "
                                    "File properties are cached, so a second audit is fast.")
    au.add_argument("data", nargs="+", help="dataset folder, .zip, label table (.csv) or sources YAML, as for train; several folders "
                                            "(one per site) are audited as their union, with the per-site split training would cut")
    au.add_argument("--out", default=None, help="folder for audit.json and audit.html (default runs/audit-<dataset name>)")
    au.add_argument("--strict", action="store_true", help="exit with status 1 when leakage or a strong shortcut is found")
    au.add_argument("--group-pattern", type=regex, default=None, metavar="REGEX",
                    help="regex extracting a patient ID from file names (as for train)")
    au.add_argument("--val-fraction", type=float, default=_defaults()["val_fraction"], help="as for train (default %(default)s)")
    au.add_argument("--test-fraction", type=float, default=_defaults()["test_fraction"], help="as for train (default %(default)s)")
    au.add_argument("--seed", type=bounded_int(0, 2**32 - 1), default=0, help="split seed, as for train (default %(default)s)")
    au.add_argument("--cache-dir", default=None, help="cache folder (default $CXRKIT_CACHE or ~/.cache/cxrkit)")
    au.add_argument("--labels", default=None, metavar="FILE.csv", help="label table for the images under DATA, as for train")
    au.add_argument("--label-column", default=None, help="the table's label column, when it cannot be told, as for train")
    from cxrkit.config import TASK_CHOICES

    au.add_argument("--task", choices=TASK_CHOICES, default=_defaults()["task"], help="as for train (default %(default)s)")
    au.add_argument("--resplit", action="store_true", help="ignore the splits the data gives and audit the patient-level ones "
                                                           "train --resplit would cut")
    _output_options(au)
    au.set_defaults(func=cmd_audit)

    x = sub.add_parser("explain", help="heat maps of where the model looks, overlaid on the images (PNG per image and class)",
                       description="Write OUT/<image>_<class>.png for every image and every class of the run: the radiograph with a "
                                   "heat map of the evidence for that class. occlusion (auto) measures how much the class's log-odds drop "
                                   "when each region is hidden (81 forward passes an image, works for every model); gradcam and gradcam++ "
                                   "read the gradients at the model's last convolutional block with a map of at least 7x7 (faster, but on "
                                   "every model measured they missed a corner-marker shortcut that occlusion found).")
    x.add_argument("run", help="run folder")
    x.add_argument("path", help="an image file or a folder of images")
    x.add_argument("--out", required=True, help="folder for the overlay PNGs")
    x.add_argument("--method", choices=["auto", *HEATMAP_METHODS], default="auto",
                   help="heat-map method (default %(default)s: occlusion, for every model)")
    _add_device_option(x, "run the model's predictions on (the heat maps use a CPU copy of it, as in evaluate)")
    _output_options(x, json_output=False)
    x.set_defaults(func=cmd_explain)

    c = sub.add_parser("compare", help="train several models on the same split and compare them in one table",
                       description="Train each of --models on DATA with the same split, seed, preprocessing and settings; "
                                   "write comparison.csv, comparison.md and report.html with ROC-AUC (95% CI), paired DeLong tests "
                                   "against the best model, sensitivity/specificity/PPV/NPV at each model's validation-chosen "
                                   "threshold, size, training time and inference speed, and a recommendation. A model that fails "
                                   "is reported and the others go on; --resume continues an interrupted comparison.")
    c.add_argument("data", help="dataset folder or .zip")
    c.add_argument("--models", required=True, help="comma-separated model names; NAME:SIZE sets one model's image size, e.g. cnn,pasa,resnet18:128")
    c.add_argument("--out", default="runs/compare", help="comparison folder (default %(default)s)")
    c.add_argument("--split", choices=["val", "test"], default="val",
                   help="split to compare on (default val; test evaluates every model on test once, and picking by it biases the pick)")
    c.add_argument("--resume", action="store_true", help="continue an interrupted comparison: finished models are skipped")
    c.add_argument("--overwrite", action="store_true", help="start again, replacing the runs in --out")
    _add_train_options(c, single_model=False)
    c.set_defaults(func=cmd_compare)

    tu = sub.add_parser("tune", help="search hyper-parameters with Optuna on validation AUC (never test)",
                        description="Optuna study (TPE sampler, median pruner on per-epoch validation AUC) over learning rate, "
                                    "weight decay, batch size, augmentation strength (a multiple, 0-1.5, of the augmentation given: the "
                                    "--augment-preset and its options; none searched with --no-augment), image size, dropout and width (where the "
                                    "model has them). Stored in SQLite: running the command again continues the study, and "
                                    "several processes can share one --storage. Writes best_config.yaml for `cxrkit train --config`.")
    tu.add_argument("data", help="dataset folder or .zip")
    tu.add_argument("--trials", type=bounded_int(1, 1_000_000), default=20, help="finished trials the study should hold (default %(default)s)")
    tu.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///OUT/study.db)")
    tu.add_argument("--study-name", default=None, help="study name in the storage (default cxrkit-MODEL)")
    tu.add_argument("--out", default=None, help="folder for trials, trials.csv and best_config.yaml (default runs/tune-MODEL)")
    tu.add_argument("--image-sizes", default=None, help="comma-separated sizes to try (default: 1/2, 3/4 and all of --image-size)")
    tu.add_argument("--timeout-minutes", type=float, default=None, help="stop starting new trials after this long")
    _add_train_options(tu)
    tu.set_defaults(func=cmd_tune)

    rf = sub.add_parser("referral", help="set a referral band on a trained binary run: rule out, refer to a reader, rule in",
                        description="Choose two thresholds on the run's stored validation predictions (never test): below the lower one the "
                                    "model rules the disease out, at or above the upper one it rules it in, in between predict, evaluate and "
                                    "serve answer 'refer'. Prints the share decided without a reader and the NPV/PPV of the decided ones.")
    rf.add_argument("run", help="run folder")
    rf.add_argument("spec", nargs="?", default="npv:0.98,ppv:0.90",
                    help="rule-out and rule-in targets: npv:X or sensitivity:X, and ppv:X or specificity:X (default %(default)s)")
    rf.add_argument("--remove", action="store_true", help="remove the band")
    rf.set_defaults(func=cmd_referral)

    pl = sub.add_parser("plan", help="how many images a validation study needs for intervals of a given width",
                        description="Sample size of a validation study at a new site: the images (and how many with the disease) "
                                    "needed for the 95% intervals cxrkit reports to be at most ±HALF_WIDTH: Wilson intervals for "
                                    "sensitivity and specificity, Hanley-McNeil for ROC-AUC. Anticipated figures come from a run's "
                                    "stored evaluation (test split, else validation) or from the options.")
    pl.add_argument("run", nargs="?", default=None, help="a binary run folder whose stored figures are the anticipated ones (optional)")
    pl.add_argument("--half-width", type=float, default=0.05, metavar="D",
                    help="the widest acceptable interval half-width, e.g. 0.05 for ±5 points (default %(default)s)")
    pl.add_argument("--prevalence", type=float, default=None, metavar="P",
                    help="share of images with the disease at the site to be studied (default: the run's split's share)")
    pl.add_argument("--sensitivity", type=float, default=None, help="anticipated sensitivity (default: the run's)")
    pl.add_argument("--specificity", type=float, default=None, help="anticipated specificity (default: the run's)")
    pl.add_argument("--auc", type=float, default=None, help="anticipated ROC-AUC (default: the run's)")
    pl.add_argument("--split", default=None, help="the run's stored evaluation to read: test (default when stored), val, external:NAME")
    pl.add_argument("--confidence", type=float, default=0.95, help="interval confidence level (default %(default)s)")
    pl.add_argument("--point-estimates", action="store_true",
                    help="take the run's point estimates as the anticipated figures; by default each is the end of its stored interval "
                         "that needs the most images (nearest 0.5 for sensitivity and specificity, the lower end for ROC-AUC)")
    _output_options(pl)
    pl.set_defaults(func=cmd_plan)

    m = sub.add_parser("models", help="list the available models with parameter counts")
    _output_options(m)
    m.set_defaults(func=cmd_models)
    return p


def _output_options(p: argparse.ArgumentParser, json_output: bool = True) -> None:
    """--json (one JSON document on stdout) and --quiet (no progress bars, no chatter) for a command."""
    if json_output:
        p.add_argument("--json", action="store_true",
                       help="print one JSON document on stdout and nothing else (messages go to stderr); for scripts and pipelines")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars and no messages; only results (the figures, findings or predictions; errors, and warnings "
                        "that the figures may be wrong, on stderr)")


# The real stdout while a command runs with its chatter redirected (--json, --quiet); results are written here.
_RESULT_STREAM = None


def _result_stream():
    """Where a command writes its results: stdout, even while --json/--quiet send its messages elsewhere."""
    return _RESULT_STREAM or sys.stdout


def _identity(run) -> dict:
    """The model behind a result: id, version and decision rule (as the HTTP API reports it)."""
    from cxrkit.serve.model_card import model_identity

    return model_identity(run)


def _json_row(row: dict) -> dict:
    """A prediction row with numbers as numbers, empty cells as null, and ``ood_warning`` as in Python: true, false, or null
    when not checked (no shift reference, or the file was not decoded)."""
    out = {}
    for k, v in row.items():
        if k == "ood_warning":  # the CSV's "yes" / "" / "unchecked": an in-range image was null, read as "not checked"
            v = True if v == "yes" else None if v == "unchecked" or not row.get("prediction") else False
        elif isinstance(v, str) and v == "":
            v = None
        elif isinstance(v, str) and k.startswith("prob_"):
            try:
                v = float(v)
            except ValueError:
                pass
        out[k] = v
    return out


def _run_command(args: argparse.Namespace) -> int:
    """Runs a command; with --json or --quiet its messages leave stdout, and --json prints the command's result document."""
    import contextlib
    import json

    global _RESULT_STREAM
    as_json, quiet = getattr(args, "json", False), getattr(args, "quiet", False)
    args.json, args.quiet, args.result = as_json, quiet, None
    if not as_json and not quiet:
        return args.func(args)
    real = sys.stdout
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(open(os.devnull, "w")) if quiet else sys.stderr
        stack.enter_context(contextlib.redirect_stdout(sink))
        _RESULT_STREAM = None if as_json else real
        try:
            code = args.func(args)
        finally:
            _RESULT_STREAM = None
    if as_json:
        from cxrkit.record.files import json_safe

        real.write(json.dumps(json_safe(args.result), indent=2, default=_json_default, allow_nan=False) + "\n")
        real.flush()
    return code


def _json_default(x):
    """numpy scalars and arrays, paths and sets in a result document."""
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, (Path, set, frozenset)):
        return str(x) if isinstance(x, Path) else sorted(x)
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


class Terminated(BaseException):
    """SIGTERM (a job scheduler stopping or pre-empting the job) raised where the command was, so its cleanup runs."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_stops_cleanly() -> Iterator[None]:
    """SIGTERM ends the command through its finally blocks (locks released, partial files removed) with a message; by
    default it killed the process without a word. Only the main thread can set a handler (a library caller's thread keeps
    Python's default)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cxrkit`` console script."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        _unknown_arguments(parser, args, extras)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from cxrkit.data.sources import DatasetError

    out = _Output(sys.stdout, "standard output", keep_going=_writes_files(args))
    err = _Output(sys.stderr, "standard error", keep_going=True)
    try:
        with _sigterm_stops_cleanly(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = _run_command(args)
            out.flush()  # what is still buffered fails here, not in the interpreter's exit flush
        if out.lost:
            with contextlib.suppress(OSError):
                print(f"note: standard output could not be written from some point on ({out.lost}); {args.command} went on"
                      + (" and finished: its files are complete" if code == 0 else ""), file=sys.stderr)
        return code
    except Terminated:
        command = getattr(args, "command", None)
        if command == "serve":  # uvicorn answered the requests in flight, then passed the signal on
            print("serve stopped (SIGTERM)", file=sys.stderr)
        else:
            hint = (" The training keeps its last checkpoint: the same command with --resume continues it." if command == "train"
                    and _checkpoint_kept(args) else " No epoch finished, so nothing was kept." if command == "train" else
                    " The study keeps its finished trials (listed in trials.csv): the same command continues it." if command == "tune" else "")
            print(f"terminated (SIGTERM): {command} stopped before finishing.{hint}", file=sys.stderr)
        return 143
    except (DatasetError, ValueError) as exc:  # bad input: data, configs, run folders, weights, options
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError as exc:
        if _stdout_gone():  # `cxrkit ... | head`: the reader has all it wanted; stop quietly, as Unix tools do
            return 141
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a missing, unreadable or misplaced file or folder
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"error: {where}{exc.strerror or _one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        command = getattr(args, "command", None)
        # A second Ctrl-C while train finished the run said only "interrupted"; SIGTERM there named --resume. Before the first
        # epoch's checkpoint there is nothing to resume.
        kept = command == "train" and _checkpoint_kept(args)
        hint = (": the study keeps its finished trials (listed in trials.csv); the same command continues it" if command == "tune" else
                ": the training keeps its last checkpoint; the same command with --resume continues it" if kept else
                ": no epoch finished, so nothing was kept; run the command again" if command == "train" else "")
        print(f"interrupted{hint}", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug, not the user's fault: one line unless asked for the traceback
        if os.environ.get("CXRKIT_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {_one_line(exc)} (a bug in cxrkit; CXRKIT_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 3


def _checkpoint_kept(args: argparse.Namespace) -> bool:
    """Whether an interrupted train left a checkpoint in its --out folder (none before its first epoch ended)."""
    out = Path(getattr(args, "out", None) or f"runs/{getattr(args, 'model', None)}")
    return (out / "checkpoint").is_dir()


def _unknown_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, extras: list[str]) -> None:
    """Exit with the sub-command's usage and the closest option names: a typo is the usual cause."""
    import difflib

    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    sub = commands.get(getattr(args, "command", None) or "", parser)
    known = [o for action in sub._actions for o in action.option_strings if o.startswith("--")]
    hints = []
    for word in extras:
        if word.startswith("-"):
            close = difflib.get_close_matches(word.split("=", 1)[0], known, n=1, cutoff=0.6)
            if close:
                hints.append((word.split("=", 1)[0], close[0]))
    said = hints[0][1] if len(hints) == 1 else ", ".join(f"{right} for {wrong}" for wrong, right in hints)
    sub.error(f"unrecognized arguments: {' '.join(extras)}" + (f"; did you mean {said}?" if hints else ""))


# Commands whose product is files (a run folder, a CSV): a closed or full standard output (`| head`, `> /dev/full`) must not
# stop them. `train | head` stopped the training at its first epoch line, before that epoch's checkpoint: all of it was lost.
FILE_COMMANDS = frozenset({"demo", "train", "evaluate", "stress", "adapt", "calibrate", "export", "explain", "compare", "tune", "referral",
                           "serve"})


def _writes_files(args: argparse.Namespace) -> bool:
    """Whether the command's product is files rather than what it prints (predict is, with --out)."""
    command = getattr(args, "command", None)
    return command in FILE_COMMANDS or (command == "predict" and bool(getattr(args, "out", None)))


class _Output:
    """sys.stdout or sys.stderr for the length of a command: a write that fails (reader gone, disk full) names the stream,
    and for a command whose product is files, the stream is dropped and the command goes on (``lost`` says why)."""

    def __init__(self, stream, name: str, keep_going: bool) -> None:
        self._stream, self._name, self._keep_going, self.lost = stream, name, keep_going, None

    def write(self, text: str) -> int:
        """Write ``text``, unless the stream was lost."""
        if self.lost is None:
            try:
                return self._stream.write(text)
            except OSError as exc:
                self._failed(exc)
        return len(text)

    def flush(self) -> None:
        """Flush, unless the stream was lost."""
        if self.lost is None:
            try:
                self._stream.flush()
            except OSError as exc:
                self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        if not self._keep_going:
            if exc.filename is None:
                exc.filename = self._name  # "error: No space left on device" read as the disk of the run folder
            raise exc
        self.lost = exc.strerror or type(exc).__name__
        try:  # what the stream still holds goes nowhere at exit, without "Exception ignored" on stderr
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
        except (AttributeError, OSError, ValueError):
            pass

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _stdout_gone() -> bool:
    """Whether standard output's reader has closed the pipe; if so it is pointed at /dev/null, so the exit flush is quiet."""
    import select

    try:
        fd = sys.stdout.fileno()
        poller = select.poll()  # the failed write may have emptied the buffer, so a flush would not tell
        poller.register(fd, select.POLLOUT)
        gone = any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or stdout is not a file
        return False
    if gone:
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    return gone


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (multi-line library messages are joined)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
