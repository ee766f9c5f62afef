"""What a first-time user reads: next steps that work, figures that agree, errors that say what to type."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from cxrkit.cli import main
from cxrkit.data.synthetic import make_synthetic_dataset


@pytest.fixture(scope="module")
def no_test_split_training(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A dataset that gives train/ and val/ but no test/ (like a MedMNIST file), trained for one epoch; its stdout."""
    data = make_synthetic_dataset(tmp_path_factory.mktemp("trainval"), n_per_class=24, size=32, seed=3,
                                  splits={"train": 0.7, "val": 0.3})
    out = tmp_path_factory.mktemp("runs") / "nt"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        status = main(["train", str(data), "--out", str(out), "--model", "cnn", "--image-size", "16", "--epochs", "1",
                       "--batch-size", "16"])
    assert status == 0
    return data, out, buf.getvalue()


def test_train_without_test_split_does_not_suggest_a_failing_command(no_test_split_training, capsys):
    data, out, text = no_test_split_training
    assert "--split test" not in text
    assert f"{data} has no test split (only train, val)" in text
    assert f"cxrkit train {data} --resplit" in text
    # the command that was suggested before really fails on such data
    assert main(["evaluate", str(out), str(data), "--split", "test", "--quiet"]) == 2
    assert "split 'test' has no images" in capsys.readouterr().err



def test_multiclass_run_is_not_said_to_have_a_validation_threshold(capsys):
    from types import SimpleNamespace

    from cxrkit.cli import _next_step_after_training

    meta = SimpleNamespace(training={"keep": "last"}, threshold=None, thresholds=None,
                           data={"counts": {"train": {}, "val": {}, "test": {}}})
    _next_step_after_training(Path("runs/covid"), "covid_data", meta)
    text = capsys.readouterr().out
    assert "chose the threshold" not in text
    assert text.startswith("validation figures are not a test result; for an unbiased estimate run:")
    assert "cxrkit evaluate runs/covid covid_data --split test" in text


def test_train_says_the_epoch_auc_is_one_view_when_the_summary_averages_views(no_test_split_training):
    _, _, text = no_test_split_training
    kept = next(line for line in text.splitlines() if line.startswith("trained "))
    assert "one view per image, the figures below average 10 test-time views" in kept
