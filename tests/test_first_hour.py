"""A new user's first hour at the command line: what predict/explain say about skipped files, explain's --device and
--quiet, the user's own .zip path in messages, the time estimate before a long training run, flags in config errors."""

from __future__ import annotations

import re

import pytest

from cxrkit.cli import build_parser, main
from cxrkit.config import CLI_FLAGS, ConfigError, TrainConfig

# ---- config errors name the command-line flag ---------------------------------------------------------------------


def test_every_config_flag_is_an_option_of_train():
    train = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
    options = {o for a in train._actions for o in a.option_strings}
    assert CLI_FLAGS and set(CLI_FLAGS.values()) <= options
    assert CLI_FLAGS["batch_size"] == "--batch-size" and CLI_FLAGS["augment.rotate_degrees"] == "--rotate"
    assert "data" not in CLI_FLAGS and "channels_last" not in CLI_FLAGS  # no option sets them


@pytest.mark.parametrize("text, message", [
    ("epochs: 0\n", "epochs (--epochs) must be at least 1"),
    ("batch_size: abc\n", "batch_size (--batch-size): input should be a valid integer"),
    ("val_fraction: 0.7\ntest_fraction: 0.5\n", "val_fraction (--val-fraction) and test_fraction (--test-fraction) must each be"),
    ("augment: {erase_edges: 2}\n", "augment.erase_edges (--erase-edges) is a probability"),
])
def test_config_file_error_names_key_and_flag(text, message, binary_data, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    assert main(["train", str(binary_data), "--config", str(cfg), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {cfg}: {message}" or err.startswith(f"error: {cfg}: {message}"), err


def test_flag_errors_and_python_errors_read_the_same(binary_data, tmp_path, capsys):
    assert main(["train", str(binary_data), "--epochs", "0", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == "error: epochs (--epochs) must be at least 1"
    with pytest.raises(ConfigError) as err:
        TrainConfig(data="d", keep="median")
    assert str(err.value) == "keep (--keep) must be one of auto, best, last"
    # a message already naming the flag, or not starting with a key, is left alone
    assert str(ConfigError(str(err.value))) == str(err.value)
    assert str(ConfigError("quantize must be 'int8'")) == "quantize must be 'int8'"
    assert re.fullmatch(r"a configuration must be a mapping.*", str(ConfigError("a configuration must be a mapping, got list")))
