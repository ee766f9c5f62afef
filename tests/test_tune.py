"""cxrkit tune: Optuna trials on tiny data, stored in SQLite, resumed, best config reusable by train --config."""

import csv
from dataclasses import replace

import optuna
import pytest

from cxrkit.cli import main
from cxrkit.config import TrainConfig
from cxrkit.data.augment import AUGMENT_PRESETS, AugmentConfig
from cxrkit.experiments.tune import default_image_sizes, suggest_config


def test_search_space_follows_the_model(tmp_path):
    base = TrainConfig(data="d", model="pasa", image_size=64)
    trial = optuna.trial.FixedTrial({"augment_strength": 0.5, "lr": 1e-3, "weight_decay": 1e-4, "batch_size": 32,
                                     "image_size": 48, "dropout": 0.2, "width": 12})
    cfg = suggest_config(trial, base, [32, 48, 64], tmp_path)
    assert (cfg.width, cfg.dropout, cfg.image_size, cfg.batch_size) == (12, 0.2, 48, 32)
    assert cfg.augment.rotate_degrees == pytest.approx(5.0) and cfg.augment.scale == pytest.approx(0.05)
    assert cfg.out.endswith("trials/trial_000")
    # The strength scales the augmentation given to tune (the robust default): its gamma, blur and noise were dropped.
    robust = AUGMENT_PRESETS["robust"]
    cfg = suggest_config(trial, replace(base, augment=robust), [32, 48, 64], tmp_path)
    assert (cfg.augment.gamma, cfg.augment.blur, cfg.augment.noise) == pytest.approx((robust.gamma / 2, robust.blur / 2, robust.noise / 2))
    assert cfg.augment.hflip and cfg.augment.brightness == pytest.approx(robust.brightness / 2)
    edges = suggest_config(optuna.trial.FixedTrial({**trial.params, "augment_strength": 1.5}), replace(base, augment=AugmentConfig(erase_edges=0.8)),
                           [32, 48, 64], tmp_path)
    assert edges.augment.erase_edges == 1.0  # a probability stays one
    # --no-augment: every trial trains without augmentation, and no strength is searched (it trained with some)
    off = AugmentConfig(0, 0, 0, 0, 0, False)
    cfg = suggest_config(optuna.trial.FixedTrial({k: v for k, v in trial.params.items() if k != "augment_strength"}),
                         replace(base, augment=off), [32, 48, 64], tmp_path)
    assert not cfg.augment.enabled
    assert default_image_sizes(224) == [112, 160, 224]  # 168 rounds to a multiple of 16
    assert default_image_sizes(40) == [32]  # never below 32 px


def test_tune_persists_resumes_and_writes_a_trainable_config(binary_data, tmp_path, capsys):
    out = tmp_path / "tune"
    db = f"sqlite:///{tmp_path / 'tune.db'}"
    args = ["tune", str(binary_data), "--model", "pasa", "--out", str(out), "--storage", db, "--image-sizes", "32",
            "--epochs", "2", "--patience", "2"]
    assert main([*args, "--trials", "2"]) == 0
    study = optuna.load_study(study_name="cxrkit-pasa", storage=db)
    assert len(study.trials) == 2
    # Running again with a higher target continues the same study instead of starting over.
    assert main([*args, "--trials", "3"]) == 0
    study = optuna.load_study(study_name="cxrkit-pasa", storage=db)
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 3  # TPE drew three different settings
    with open(out / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and {"lr", "weight_decay", "batch_size", "augment_strength", "dropout", "width"} <= set(rows[0])
    best = max((r for r in rows if r["state"] == "complete"), key=lambda r: float(r["val_auc"]))
    cfg = TrainConfig.load(out / "best_config.yaml")
    assert cfg.lr == pytest.approx(float(best["lr"])) and cfg.width == int(best["width"])
    assert "--config" in capsys.readouterr().out
    # Reached target: nothing more runs.
    assert main([*args, "--trials", "3"]) == 0
    assert len(optuna.load_study(study_name="cxrkit-pasa", storage=db).trials) == 3
    # The best config trains as is, and the trial runs never touched the test split.
    run = tmp_path / "tuned"
    assert main(["train", str(binary_data), "--config", str(out / "best_config.yaml"), "--out", str(run)]) == 0
    assert (run / "model.safetensors").exists()
    for meta in (out / "trials").glob("*/meta.json"):
        assert "evaluations" not in meta.read_text()
    # Same study name with other settings is refused rather than mixed.
    assert main(["tune", str(binary_data), "--model", "pasa", "--out", str(out), "--storage", db, "--trials", "4", "--lr", "5e-3"]) == 2
    # Trials keep their record, not a model's worth of weights and resumable state each.
    assert not list(out.glob("trials/*/model.safetensors")) and not list(out.glob("trials/*/checkpoint"))
    assert len(list(out.glob("trials/*/meta.json"))) == 3
    # Another study (here another model's default study) in the same --out would overwrite trial_000 and trials.csv.
    capsys.readouterr()
    assert main(["tune", str(binary_data), "--model", "cnn", "--out", str(out), "--storage", db, "--trials", "1"]) == 2
    assert "holds the trials of study 'cxrkit-pasa'" in capsys.readouterr().err
    assert optuna.get_all_study_names(db) == ["cxrkit-pasa"]


def test_a_failure_no_setting_cures_ends_the_study_in_one_line_and_ctrl_c_keeps_trials_csv(binary_data, tmp_path, monkeypatch, capsys):
    import cxrkit.training
    from cxrkit.audit.dataset_audit import LeakageError
    from cxrkit.training.trainer import TrainingDivergedError

    args = ["tune", str(binary_data), "--model", "pasa", "--out", str(tmp_path / "t"), "--image-sizes", "32", "--epochs", "1"]
    raised = []

    def refuse(cfg, **_):
        raised.append(cfg.out)
        raise LeakageError("patients 3 and 7 are in both train and test; give --allow-leakage to go on")

    monkeypatch.setattr(cxrkit.training, "train", refuse)
    assert main([*args, "--trials", "3"]) == 2
    err = capsys.readouterr().err
    # Was: a failed trial with Optuna's traceback, three times, then "run the same command again to continue".
    assert len(raised) == 1 and err.strip() == "error: patients 3 and 7 are in both train and test; give --allow-leakage to go on", err
    # A setting that fails (a diverged loss) is said in one line, and the study goes on to the next.
    monkeypatch.setattr(cxrkit.training, "train", lambda cfg, **_: (_ for _ in ()).throw(TrainingDivergedError("training diverged in epoch 1")))
    assert main([*args, "--trials", "2"]) == 1
    out = capsys.readouterr()
    assert out.err.count("trial 1 failed: training diverged in epoch 1") == 1 and "Traceback" not in out.err
    assert "trial 2 failed" in out.err and "each one failed" in out.out
    # Ctrl-C: no traceback, and trials.csv lists the trials that ran.
    monkeypatch.setattr(cxrkit.training, "train", lambda cfg, **_: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert main([*args, "--trials", "2"]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "the same command continues it" in err
    with open(tmp_path / "t" / "trials.csv", newline="") as f:
        assert [r["state"] for r in csv.DictReader(f)] == ["fail"] * 4
    # SIGTERM (a job scheduler): the trial was left "running" for good, counted nowhere, and every later continuation seeded
    # its sampler with the process id as if another process shared the study.
    from cxrkit.cli import Terminated

    monkeypatch.setattr(cxrkit.training, "train", lambda cfg, **_: (_ for _ in ()).throw(Terminated()))
    assert main([*args, "--trials", "2"]) == 143
    assert "the same command continues it" in capsys.readouterr().err
    with open(tmp_path / "t" / "trials.csv", newline="") as f:
        assert [r["state"] for r in csv.DictReader(f)] == ["fail"] * 5


@pytest.mark.parametrize("options, message", [
    (["--timeout-minutes", "0"], "timeout_minutes must be a positive number of minutes (or left out), got 0.0"),
    (["--timeout-minutes", "nan"], "timeout_minutes must be a positive number"),
    (["--image-sizes", "0,64"], "image sizes must be whole numbers from 16 to 1024, got 0"),
    (["--image-sizes", "64,abc"], "--image-sizes '64,abc': write comma-separated whole numbers, e.g. 64,96,128"),
    (["--image-sizes", ","], "image sizes: give at least one"),
])
def test_tune_options_that_can_never_finish_a_trial_are_refused_first(options, message, binary_data, tmp_path, capsys):
    # These ran no trial (or failed every one, each with a traceback in Optuna's log) and then said "no trial completed
    # yet; run the same command again to continue", which never would.
    out = tmp_path / "tune"
    assert main(["tune", str(binary_data), "--model", "mlp", "--out", str(out), *options]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and "\n" not in err
    assert not out.exists()


@pytest.mark.parametrize("trials", ["0", "-1"])
def test_tune_needs_at_least_one_trial(trials, binary_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["tune", str(binary_data), "--model", "mlp", "--out", str(tmp_path / "tune"), "--trials", trials])
    assert exit_.value.code == 2 and f"argument --trials: {trials} is outside 1-1000000" in capsys.readouterr().err
    assert not (tmp_path / "tune").exists()


@pytest.mark.parametrize("url, why", [("notadb://x", "Can't load plugin"), ("sqlite:////no/such/folder/x.db", "unable to open database file"),
                                      ("postgresql://u:secret@localhost/x", "DB access module"), ("garbage", "Could not parse")])
def test_a_storage_url_that_cannot_be_opened_is_one_line(url, why, binary_data, tmp_path, capsys):
    # Each was "error: unexpected ...: (a bug in cxrkit ...)", status 3; a password in the URL is not printed.
    assert main(["tune", str(binary_data), "--storage", url, "--trials", "1", "--out", str(tmp_path / "t"), "--image-size", "32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: --storage ") and why in err and "secret" not in err and "unexpected" not in err
