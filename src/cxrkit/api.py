"""The Python API: ``cxrkit.load``, ``cxrkit.train`` and ``cxrkit.evaluate``, the same steps as the command line.

    import cxrkit
    run = cxrkit.train("data/chestxrays", out="runs/tb1", model="cnn", image_size=128)
    print(cxrkit.evaluate(run)["metrics"]["roc_auc"])          # the test split, once
    p = run.predict("patient.png")                               # or bytes, a PIL image, a NumPy array
    print(p.decision, p.probabilities, p.ood_warning)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cxrkit.record import CONFIG_FILE
from cxrkit.run import Run


def load(path: str | Path, engine: str = "auto", device: str = "cpu") -> Run:
    """Load a finished run folder (validated: a damaged or incomplete run is a one-line ``RunError``); ``device``: cpu, auto or cuda[:N]."""
    return Run.load(path, engine=engine, device=device)


def train(data: str | Path, *, progress: bool = True, overwrite: bool = False, resume: bool = False, device: str = "auto",
          **options: Any) -> Run:
    """Train on ``data`` with the options of ``cxrkit train`` (keyword names as in config.yaml, e.g. ``image_size=128``,
    ``augment={"hflip": True}``) and return the loaded run. Options are validated like a config file; ``device`` as for ``cxrkit train``.
    ``resume=True`` continues the run in ``out`` with its own config.yaml; options given must agree with it (except the threshold rule)."""
    from cxrkit.config import ConfigError, TrainConfig
    from cxrkit.training import train as _train

    for name, flag in (("progress", progress), ("overwrite", overwrite), ("resume", resume)):
        if not isinstance(flag, bool):  # overwrite="no" is truthy: it deleted the run already in out
            raise ConfigError(f"{name} must be True or False, got {flag!r}")
    if not isinstance(data, (str, os.PathLike)):  # str() of a list of folders was "dataset path ['a', 'b'] does not exist"
        raise ConfigError(f"data must be a dataset path (a folder, a .zip or a sources .yaml naming one folder per site), "
                          f"got {type(data).__name__}; several sites: write them in a sources .yaml, or run `cxrkit train A B`")
    cfg = TrainConfig.from_dict({"data": str(data), **options})
    if resume and (Path(cfg.out) / CONFIG_FILE).is_file():
        # As on the command line: a resumed run continues with its own config.yaml. Built from the defaults instead, the
        # very call that trained it plus resume=True was refused (the image size it had chosen from the data differed).
        from cxrkit.training.trainer import resumed_config

        given = cfg.to_dict()  # the options as validated, compared with the run's own
        cfg = resumed_config(Path(cfg.out), cfg.data, {k: given[k] for k in options}, "resume=True")
    elif "image_size" not in options:
        # As on the command line: images smaller than the default train at their own size.
        from cxrkit.data.dataset import native_image_size
        from cxrkit.data.spec import MIN_IMAGE_SIZE

        native = native_image_size(cfg.data, cfg.labels, cfg.label_column, cfg.task, cfg.cache_dir)
        if native is not None and native < cfg.image_size:
            if progress:
                print(f"note: the images are {native} px, smaller than the default {cfg.image_size} px, so they train at "
                      f"{max(native, MIN_IMAGE_SIZE)} px (pass image_size= to override)")
            cfg.image_size = max(native, MIN_IMAGE_SIZE)
    return Run.load(_train(cfg, progress=progress, overwrite=overwrite, resume=resume, device=device))


def evaluate(run: Run | str | Path, data: str | Path | None = None, split: str | None = None, *, progress: bool = False,
             **options: Any) -> dict:
    """Evaluate a run on a split of its own data (default ``test``) or on another dataset (default: all its images);
    writes metrics.json, predictions.csv and the report like ``cxrkit evaluate`` and returns that split's metrics.
    Further options (``prevalence``, ``class_map``, ``explain``, ``recalibrate_on``, ``readers``) are those of the command."""
    from cxrkit.evaluation.evaluate import evaluate_run

    _check_evaluate_options(data, split, progress, options)
    path = run.path if isinstance(run, Run) else run  # Run.load checks the type of a path
    return evaluate_run(path, data, split, progress=progress, **options)


def _check_evaluate_options(data: Any, split: Any, progress: Any, options: dict) -> None:
    """What the command line's parser checks, for keyword arguments: a bad one is a one-line ValueError before any work."""
    import inspect

    from cxrkit.data.spec import is_finite_number
    from cxrkit.evaluation.evaluate import evaluate_run
    from cxrkit.explain import AUTO, METHODS

    known = [n for n in inspect.signature(evaluate_run).parameters if n not in ("run_dir", "data", "split", "progress")]
    unknown = sorted(set(options) - set(known))
    if unknown:  # was a TypeError from evaluate_run's signature
        raise ValueError(f"unknown evaluate option(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if data is not None and not isinstance(data, (str, os.PathLike)):
        raise ValueError(f"data must be a dataset path, got {type(data).__name__}")
    if split is not None and not isinstance(split, str):
        raise ValueError(f"split must be train, val, test or all, got {split!r}")
    for name, flag in (("progress", progress), ("write_report", options.get("write_report", True))):
        if not isinstance(flag, bool):  # write_report="no" is truthy: the report was written
            raise ValueError(f"{name} must be True or False, got {flag!r}")
    for name in ("recalibrate_on", "by_table", "readers"):
        value = options.get(name)
        if value is not None and not isinstance(value, (str, os.PathLike)):
            # was a TypeError from pathlib after the whole evaluation had run
            raise ValueError(f"{name} must be a path, got {type(value).__name__}")
    if options.get("by_table") is not None and not options.get("by"):
        # by_table only names where by's columns are: alone it was ignored, and no subgroup figures came back
        raise ValueError("by_table names the table of the by= columns; give by=[...] too (by_pattern reads file names, not the table)")
    explain = options.get("explain")
    if explain is not None and explain not in (AUTO, *METHODS):  # an unknown method was caught and stored: no heat maps, no error
        raise ValueError(f"explain must be one of {', '.join((AUTO, *METHODS))} or None, got {explain!r}")
    prevalence = options.get("prevalence")
    if prevalence is not None and not (is_finite_number(prevalence) and 0 < prevalence < 1):
        raise ValueError(f"prevalence must be a number between 0 and 1 (exclusive), got {prevalence!r}")
    for name in ("by", "by_pattern", "reader_columns"):
        value = options.get(name)
        if value is not None and (not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value)):
            # a string is a sequence: by="sex" became the columns s, e and x
            raise ValueError(f"{name} must be a list of strings, e.g. [{str(value)!r}], got {value!r}")
    class_map = options.get("class_map")
    if class_map is not None and not (isinstance(class_map, dict) and all(isinstance(k, str) and isinstance(v, str)
                                                                          for k, v in class_map.items())):
        raise ValueError(f"class_map must map the data's class names to the run's (a dict of strings), got {class_map!r}")
