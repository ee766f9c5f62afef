"""Experiment tracking: a run's parameters, per-epoch figures, final metrics with intervals, the report and the
model sent to MLflow or TensorBoard, where most users compare experiments.

``--track mlflow[:URI]`` (e.g. ``mlflow:sqlite:///mlflow.db`` or a server URL; default ``$MLFLOW_TRACKING_URI``,
else MLflow's own default) and
``--track tensorboard[:DIR]`` (default ``runs/tensorboard``). Both libraries are optional extras
(``pip install "cxrkit[track]"``); asking for one that is not installed is a one-line error before training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TRACKERS = ("mlflow", "tensorboard")


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def headline_metrics(metrics: dict) -> dict[str, float]:
    """Numbers worth a chart from one split's metrics: each metric's value and interval bounds."""
    out: dict[str, float] = {}
    for name, e in (metrics.get("metrics") or {}).items():
        if isinstance(e, dict) and isinstance(e.get("value"), (int, float)):
            out[name] = float(e["value"])
            if e.get("ci"):
                out[f"{name}.ci_low"], out[f"{name}.ci_high"] = float(e["ci"][0]), float(e["ci"][1])
    return out


class Tracker:
    """Interface: start with the configuration, log each epoch, finish with metrics and files."""

    def start(self, name: str, params: dict) -> None:
        """Open a tracked run named ``name`` with flattened ``params``."""

    def log_epoch(self, epoch: int, row: dict) -> None:
        """One epoch's numbers (losses, validation AUC, learning rate, speed)."""

    def finish(self, metrics: dict[str, float], files: list[Path]) -> None:
        """Final metrics and artefacts; closes the tracked run."""

    def abort(self) -> None:
        """Close the tracked run after a failure or interruption, marked as such."""


class MLflowTracker(Tracker):
    """Logs to an MLflow tracking store (a folder, a SQLite file or a server)."""

    def __init__(self, uri: str | None = None) -> None:
        import mlflow

        self.mlflow = mlflow
        if uri:
            mlflow.set_tracking_uri(uri)
        self.active = None

    def start(self, name: str, params: dict) -> None:
        try:
            self.mlflow.set_experiment("cxrkit")
            self.active = self.mlflow.start_run(run_name=name)
        except Exception as exc:  # MlflowException, connection errors: the store is unusable, say so in one line
            raise ValueError(f"MLflow tracking store {self.mlflow.get_tracking_uri()} cannot be used: {' '.join(str(exc).split())[:300]}") from None
        flat = {k: str(v)[:500] for k, v in _flat(params).items()}
        self.mlflow.log_params(flat)

    def log_epoch(self, epoch: int, row: dict) -> None:
        self.mlflow.log_metrics({k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and k != "epoch"}, step=epoch)

    def finish(self, metrics: dict[str, float], files: list[Path]) -> None:
        if metrics:
            self.mlflow.log_metrics(metrics)
        for f in files:
            if f.is_file():
                self.mlflow.log_artifact(str(f))
        self.mlflow.end_run()

    def abort(self) -> None:
        if self.active is not None:
            self.mlflow.end_run(status="FAILED")


class TensorBoardTracker(Tracker):
    """Writes TensorBoard event files: scalars per epoch, final metrics, the configuration as text."""

    def __init__(self, logdir: str | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.root = Path(logdir or "runs/tensorboard")
        self.writer_cls = SummaryWriter
        self.writer = None

    def start(self, name: str, params: dict) -> None:
        self.writer = self.writer_cls(str(self.root / name))
        self.writer.add_text("config", "```\n" + json.dumps(params, indent=2, default=str) + "\n```")

    def log_epoch(self, epoch: int, row: dict) -> None:
        for k, v in row.items():
            if isinstance(v, (int, float)) and k != "epoch":
                self.writer.add_scalar(f"epoch/{k}", float(v), epoch)

    def finish(self, metrics: dict[str, float], files: list[Path]) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(f"final/{k}", v, 0)
        self.writer.add_text("files", "\n".join(str(f.resolve()) for f in files if f.is_file()))
        self.writer.close()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.add_text("status", "failed or interrupted")
            self.writer.close()


def make_tracker(spec: str | None) -> Tracker | None:
    """``mlflow[:URI]`` or ``tensorboard[:DIR]`` -> a tracker (None for no tracking); a missing library is a ValueError."""
    if not spec:
        return None
    kind, _, where = spec.partition(":")
    if kind not in TRACKERS:
        raise ValueError(f"--track {spec!r}: use mlflow[:URI] or tensorboard[:DIR]")
    try:
        return MLflowTracker(where or None) if kind == "mlflow" else TensorBoardTracker(where or None)
    except ImportError as exc:
        package = "mlflow" if kind == "mlflow" else "tensorboard"
        raise ValueError(f"--track {kind} needs the {package} package ({exc.name} is not installed): pip install {package}") from None
