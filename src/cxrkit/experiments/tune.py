"""Hyper-parameter search with Optuna: TPE sampling, median pruning on validation AUC per epoch, SQLite storage.

The objective is the best validation ROC-AUC of a training run; the test split is never evaluated.
The study lives in a database (SQLite by default, inside the output folder), so an interrupted search
resumes and a second process can join the same study. The best trial's settings are written as a
config file that ``cxrkit train --config`` repeats.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path

from tqdm.auto import tqdm

from cxrkit.config import TrainConfig
from cxrkit.data.augment import AugmentConfig
from cxrkit.data.spec import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, is_finite_number
from cxrkit.models.registry import get_spec
from cxrkit.record import MODEL_FILE, atomic_write_csv, atomic_write_json, read_meta
from cxrkit.record.files import CHECKPOINT_DIR

PROBABILITIES = ("erase_edges", "random_conv")  # per-image probabilities: scaled, at most 1


def default_image_sizes(size: int) -> list[int]:
    """Half, three quarters and all of ``size``, in multiples of 16 (at least 32)."""
    return sorted({max(32, round(size * f / 16) * 16) for f in (0.5, 0.75, 1.0)})


class TrialFailed(Exception):
    """One trial's settings failed to train; the study goes on with the next."""


def scaled_augment(augment: AugmentConfig, strength: float) -> AugmentConfig:
    """``augment`` (the preset and options given to tune) with every strength multiplied by ``strength``; flips kept as given."""
    # Each trial used to scale the mild preset's five fields: the robust default's gamma, blur and noise, or any option
    # given, were dropped from every trial and from best_config.yaml without a word.
    scaled = {f.name: getattr(augment, f.name) * strength for f in fields(augment) if f.name != "hflip"}
    for name in PROBABILITIES:
        scaled[name] = min(1.0, scaled[name])
    return replace(augment, **scaled)


def suggest_config(trial, base: TrainConfig, image_sizes: list[int], out: Path) -> TrainConfig:
    """The training config of one trial: ``base`` with the searched settings drawn by ``trial``."""
    spec = get_spec(base.model)
    changes = {
        "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [16, 32, 64]),
        "image_size": trial.suggest_categorical("image_size", image_sizes) if len(image_sizes) > 1 else image_sizes[0],
        "out": str(out / "trials" / f"trial_{trial.number:03d}"),
    }
    if base.augment.enabled:  # --no-augment: no augmentation is searched (a strength drawn for it trained with some)
        changes["augment"] = scaled_augment(base.augment, trial.suggest_float("augment_strength", 0.0, 1.5))
    if "dropout" in spec.options:
        changes["dropout"] = trial.suggest_float("dropout", 0.0, 0.5)
    if "width" in spec.options and spec.width:
        w = spec.width
        changes["width"] = trial.suggest_categorical("width", sorted({max(4, w // 2), w, w + w // 2}))
    return replace(base, **changes)


def check_options(trials: int, image_sizes: list[int] | None, timeout_minutes: float | None) -> None:
    """Refuse options that can never finish a trial, before the study starts."""
    # --trials 0 or -1 and --timeout-minutes 0 or below ran no trial and said "run the same command again to continue",
    # which never would; an image size out of range failed every trial, each with a traceback in Optuna's log.
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be a whole number of at least 1 (the finished trials the study should hold), got {trials!r}")
    if timeout_minutes is not None and not (is_finite_number(timeout_minutes) and timeout_minutes > 0):
        raise ValueError(f"timeout_minutes must be a positive number of minutes (or left out), got {timeout_minutes!r}")
    for size in image_sizes or []:
        if isinstance(size, bool) or not isinstance(size, int) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
            raise ValueError(f"image sizes must be whole numbers from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}, got {size!r}")
    if image_sizes is not None and not image_sizes:
        raise ValueError("image sizes: give at least one (or leave them out for 1/2, 3/4 and all of the image size)")


def _shown(url: str) -> str:
    """A database URL as it may be printed: its password hidden."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return url


STUDY_FILE = "study.json"  # which study's trials a tune --out holds


def _claim_folder(out: Path, study_name: str, shown_storage: str) -> Callable[[], None]:
    """Refuse an --out that holds another study's trials: their folders (trial_000, ...), trials.csv and best_config.yaml
    would be overwritten by this study's, and trial 0 of one read as trial 0 of the other. Returns what marks it as this
    study's, to call once the study has opened (a storage that cannot be opened must not claim the folder)."""
    marker = out / STUDY_FILE
    mine = {"study": study_name, "storage": shown_storage}
    try:
        held = json.loads(marker.read_text())
    except FileNotFoundError:
        held = None
    except (OSError, ValueError):
        raise ValueError(f"{marker} is damaged; it says which study's trials {out} holds (give another --out)") from None
    if held is not None and held != mine:
        name, where = (held.get("study"), held.get("storage")) if isinstance(held, dict) else (None, None)
        raise ValueError(f"{out} holds the trials of study {name!r} in {where}; give another --out for study {study_name!r} "
                         f"in {mine['storage']} (or the same --study-name and --storage to continue that one)")
    return lambda: None if held is not None else atomic_write_json(marker, mine)


def _open_study(optuna, study_name: str, storage: str, seed: int):
    """The study named ``study_name`` in ``storage``; a URL that cannot be opened is a ValueError that says which and why."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return optuna.create_study(
            study_name=study_name, storage=storage, load_if_exists=True, direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
        )
    except (SQLAlchemyError, ImportError) as exc:  # an unknown scheme, a missing driver, an unreachable server or file
        why = " ".join(str(exc).split("(Background on this error")[0].split())
        raise ValueError(f"--storage {_shown(storage)} cannot be opened ({why}); give a database URL Optuna can use, e.g. "
                         "sqlite:///study.db, or postgresql://user@host/db with its driver installed") from None


def tune(
    data: str, base: TrainConfig, trials: int, out: str | Path, storage: str | None = None, study_name: str | None = None,
    image_sizes: list[int] | None = None, timeout_minutes: float | None = None, progress: bool = True, track: str | None = None,
) -> dict:
    """Run (or continue) a study until it holds ``trials`` finished trials; write best_config.yaml and trials.csv.

    ``storage`` defaults to ``sqlite:///OUT/study.db``. Returns a summary with the best value and settings.
    """
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from cxrkit.data.sources import open_image_folder
    from cxrkit.training import train
    from cxrkit.training.trainer import TrainingDivergedError

    check_options(trials, image_sizes, timeout_minutes)
    open_image_folder(data, Path(base.cache_dir) if base.cache_dir else None)  # fail once on a bad dataset, not once per trial
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shown = _shown(storage) if storage else "study.db in this folder"  # the folder may move: its own database moves with it
    storage = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    study_name = study_name or f"cxrkit-{base.model}"
    sizes = image_sizes or default_image_sizes(base.image_size)
    base = replace(base, data=str(data))
    claim = _claim_folder(out, study_name, shown)  # before the study is opened: opening creates it in the database
    study = _open_study(optuna, study_name, storage, base.seed)
    previous = study.user_attrs.get("base")
    mine = {k: v for k, v in base.to_dict().items() if k not in ("out",)}
    if previous is not None and previous != json.loads(json.dumps(mine)):
        raise ValueError(f"study {study_name!r} in {_shown(storage)} was started with other data or settings; choose another --study-name")
    claim()
    study.set_user_attr("base", mine)
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    already = len(study.get_trials(deepcopy=False, states=finished))
    # A resumed process must not replay the first one's random start-up draws, nor may a process that joins
    # while another is running (same trial count at start), hence the process id in that case.
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    study.sampler = optuna.samplers.TPESampler(seed=base.seed + len(study.trials) + (1000 * os.getpid() if running else 0))
    bar = tqdm(total=trials, initial=min(already, trials), desc=f"tuning {base.model}", unit="trial", disable=not progress or None)

    warned = False  # the data's warnings (leakage, shortcuts) are the same for every trial: said by this process's first one
    current: list[int] = []  # the number of the trial this process is running

    def objective(trial: optuna.Trial) -> float:
        nonlocal warned
        current[:] = [trial.number]
        cfg = suggest_config(trial, base, sizes, out)
        trial.set_user_attr("config", json.loads(json.dumps(cfg.to_dict())))

        def report(epoch: int, val_auc: float) -> None:
            trial.report(val_auc, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation AUC {val_auc:.4f} at epoch {epoch} is below the median of earlier trials")

        try:
            from cxrkit.training.tracking import make_tracker

            first, warned = not warned, True
            train(cfg, progress=False, overwrite=True, on_epoch=report, finish=False, tracker=make_tracker(track), warn=first)
        except (TrainingDivergedError, RuntimeError) as exc:  # these settings failed (a diverged loss, memory): the study goes on
            tqdm.write(f"trial {trial.number} failed: {' '.join(str(exc).split())}", file=sys.stderr)
            raise TrialFailed(str(exc)) from None
        finally:
            # Trials keep config, history and meta, not weights nor the resumable training state (a model's worth each).
            (Path(cfg.out) / MODEL_FILE).unlink(missing_ok=True)
            shutil.rmtree(Path(cfg.out) / CHECKPOINT_DIR, ignore_errors=True)
            bar.update(1)
        meta = read_meta(cfg.out).to_dict()
        if meta["training"]["interrupted"]:
            raise KeyboardInterrupt
        return float(meta["training"]["best_val_auc"])

    if already < trials:
        # Optuna logs every failed trial with its traceback; a failure is said in one line above, or ends the study.
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        try:
            study.optimize(
                objective, n_trials=trials - already, timeout=None if timeout_minutes is None else 60 * timeout_minutes,
                callbacks=[MaxTrialsCallback(trials, states=finished)], catch=(TrialFailed,),
            )
        except BaseException:  # Ctrl-C, or an error no setting can cure (the dataset refused): trials.csv still lists what ran
            bar.close()
            # Optuna closes a trial stopped by Ctrl-C or an error, not one stopped by SIGTERM (cli.Terminated): left "running"
            # for good, it was counted nowhere and made every later continuation seed its sampler as if a process shared the study.
            if current and current[0] in {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}:
                study.tell(current[0], state=TrialState.FAIL)
            write_results(study, out, base)
            raise
    bar.close()
    return write_results(study, out, base)


def write_results(study, out: Path, base: TrainConfig) -> dict:
    """trials.csv, and best_config.yaml from the best completed trial; returns a summary."""
    from optuna.trial import TrialState

    rows = []
    names = sorted({k for t in study.trials for k in t.params})
    for t in study.trials:
        rows.append({"trial": t.number, "state": t.state.name.lower(), "val_auc": "" if t.value is None else f"{t.value:.5f}",
                     "epochs": len(t.intermediate_values), "seconds": "" if t.duration is None else f"{t.duration.total_seconds():.1f}",
                     **{k: t.params.get(k, "") for k in names}})
    atomic_write_csv(out / "trials.csv", rows, ["trial", "state", "val_auc", "epochs", "seconds", *names])
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    summary = {"study": study.study_name, "trials": len(study.trials), "completed": len(done),
               "pruned": len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))),
               "failed": len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))}
    if done:
        best = study.best_trial
        cfg = TrainConfig.from_dict(dict(best.user_attrs["config"]))
        cfg = replace(cfg, out=str(Path("runs") / f"{base.model}-tuned"))
        cfg.save(out / "best_config.yaml")
        summary.update(best_trial=best.number, best_val_auc=best.value, best_params=best.params, config=str(out / "best_config.yaml"))
    return summary
