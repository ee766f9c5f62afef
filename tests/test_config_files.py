"""Config files (`cxrkit train --config`, a run's config.yaml): what is written is what trains, or a one-line error."""

from __future__ import annotations

import pytest

from cxrkit.cli import main
from cxrkit.config import ConfigError, TrainConfig


@pytest.mark.parametrize("text, where, key", [
    ("epochs: 1\nmodel: mlp\nepochs: 50\n", "line 3, column 1", "epochs"),
    ("augment:\n  blur: 1.0\n  blur: 2.0\n", "line 3, column 3", "blur"),
])
def test_a_key_given_twice_is_refused(text, where, key, tmp_path):
    # PyYAML keeps the last value silently: `epochs: 1` at the top and `epochs: 50` further down trained 50 epochs.
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        TrainConfig.load(path, data="d")
    assert str(exc.value) == f"{path} is not valid YAML at {where}: key {key!r} is given twice"


def test_merge_keys_may_still_be_overridden(tmp_path):
    # `<<:` merges a mapping whose keys the mapping itself may override: that is YAML's meaning, not a key given twice.
    path = tmp_path / "c.yaml"
    path.write_text("data: d\naugment:\n  <<: {rotate_degrees: 5.0, blur: 1.0}\n  blur: 0.5\n")
    cfg = TrainConfig.load(path)
    assert (cfg.augment.rotate_degrees, cfg.augment.blur) == (5.0, 0.5)


def test_an_augment_section_changes_only_the_strengths_it_names(tmp_path):
    from dataclasses import asdict, replace

    from cxrkit.data.augment import AugmentConfig, default_augment

    path = tmp_path / "c.yaml"
    path.write_text("data: d\naugment:\n  rotate_degrees: 5\n")
    # The keys left out took the old mild preset's values: flips, gamma, blur and noise were turned off without a word.
    assert TrainConfig.load(path).augment == replace(default_augment(), rotate_degrees=5.0)
    assert TrainConfig(data="d", augment={"blur": 0.5}).augment == replace(default_augment(), blur=0.5)
    # A run saved before a strength existed trained without it: its own config keeps it off, whatever today's default.
    saved = {k: v for k, v in asdict(default_augment()).items() if k not in ("gamma", "noise")}
    run_config = tmp_path / "config.yaml"
    run_config.write_text("data: d\naugment:\n" + "".join(f"  {k}: {v}\n" for k, v in saved.items()))
    old = TrainConfig.load_saved(run_config).augment
    assert (old.gamma, old.noise) == (AugmentConfig().gamma, AugmentConfig().noise) == (0.0, 0.0) and old.blur == default_augment().blur


def test_train_with_a_duplicated_key_writes_nothing(binary_data, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("model: mlp\nepochs: 1\nepochs: 50\n")
    assert main(["train", str(binary_data), "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {config} is not valid YAML at line 3, column 1: key 'epochs' is given twice"
    assert not (tmp_path / "run").exists()
