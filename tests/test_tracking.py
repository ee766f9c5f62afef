"""--track mlflow / tensorboard: what a run logs is read back from a local store."""

from __future__ import annotations

import pytest

from cxrkit.cli import main

ARGS = ["--model", "cnn", "--image-size", "32", "--epochs", "2", "--batch-size", "16"]


def test_mlflow_sqlite_store(binary_data, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Artifacts go where the experiment says (MLflow's default is ./mlruns in the working directory).
    MlflowClient(tracking_uri=store).create_experiment("cxrkit", artifact_location=(tmp_path / "artifacts").as_uri())
    assert main(["train", str(binary_data), "--out", str(tmp_path / "r"), *ARGS, "--track", f"mlflow:{store}"]) == 0
    client = MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name("cxrkit")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "r"
    assert run.data.params["model"] == "cnn" and run.data.params["augment.hflip"] == "True"
    history = client.get_metric_history(run.info.run_id, "val_auc")
    assert [m.step for m in history] == [1, 2]
    m = run.data.metrics
    assert 0 <= m["val.roc_auc"] <= 1 and m["val.roc_auc.ci_low"] <= m["val.roc_auc"] <= m["val.roc_auc.ci_high"]
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"meta.json", "report.html", "model.safetensors", "config.yaml"} <= files


def test_tensorboard_logdir(binary_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "tb"
    assert main(["train", str(binary_data), "--out", str(tmp_path / "r"), *ARGS, "--track", f"tensorboard:{logdir}"]) == 0
    acc = EventAccumulator(str(logdir / "r"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "epoch/val_auc" in tags and "final/val.sensitivity" in tags
    assert [e.step for e in acc.Scalars("epoch/train_loss")] == [1, 2]


def test_unknown_tracker_is_refused_before_training(binary_data, tmp_path, capsys):
    assert main(["train", str(binary_data), "--out", str(tmp_path / "r"), *ARGS, "--track", "wandb"]) == 2
    assert "use mlflow[:URI] or tensorboard[:DIR]" in capsys.readouterr().err
    assert not (tmp_path / "r" / "model.safetensors").exists()
