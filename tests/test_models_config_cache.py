import os
import time

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cxrkit.config import TrainConfig
from cxrkit.data.augment import AugmentConfig, augment_batch
from cxrkit.data.cache import load_cached
from cxrkit.models import build_model, count_parameters
from cxrkit.models.pretrained import load_pretrained, read_state_dict


@pytest.mark.parametrize("name", ["mlp", "simple_cnn", "cnn", "pasa", "efficientnet-lite0", "resnet18", "densenet121", "efficientnet-b0"])
@pytest.mark.parametrize("outputs", [1, 3])
def test_registry_models_take_one_channel(name, outputs):
    model = build_model(name, outputs).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 64)).shape == (2, outputs)


def test_parameter_counts_are_in_the_documented_range():
    assert count_parameters(build_model("cnn", 1))[1] < 1_000_000
    assert 10_000_000 < count_parameters(build_model("resnet18", 1))[1] < 12_000_000
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg19", 1)


def test_pretrained_rgb_stem_is_summed_and_mismatched_head_skipped(tmp_path):
    torch.manual_seed(0)
    src = build_model("resnet18", 1000)  # "ImageNet" head with 1000 classes
    state = src.state_dict()
    rgb = torch.randn(64, 3, 7, 7)
    state["conv1.weight"] = rgb
    path = tmp_path / "w.pt"
    torch.save(state, path)
    dst = build_model("resnet18", 1)
    report = load_pretrained(dst, path, head="fc")
    assert "conv1.weight" in report.adapted
    assert "fc.weight" in report.skipped and "fc.weight" in report.missing
    torch.testing.assert_close(dst.state_dict()["conv1.weight"], rgb.sum(dim=1, keepdim=True))
    torch.testing.assert_close(dst.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    # Grey input through the summed stem == that grey image repeated in 3 channels through the RGB stem.
    x = torch.randn(1, 1, 32, 32)
    out1 = torch.nn.functional.conv2d(x, dst.state_dict()["conv1.weight"])
    out3 = torch.nn.functional.conv2d(x.repeat(1, 3, 1, 1), rgb)
    torch.testing.assert_close(out1, out3, rtol=1e-4, atol=1e-4)


def test_pretrained_refuses_pickled_code_and_foreign_weights(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "cb": print}, evil)  # a callable needs full unpickling
    with pytest.raises(ValueError, match="pickled print object, which could run code"):
        read_state_dict(evil)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")  # was "... (weights_only=True refused it): " and nothing after
    with pytest.raises(ValueError, match="empty or cut short"):
        read_state_dict(empty)
    foreign = tmp_path / "foreign.pt"
    torch.save({"totally.other.layer": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match="no tensor"):
        load_pretrained(build_model("cnn", 1), foreign)


def test_config_round_trip_and_validation(tmp_path):
    cfg = TrainConfig(data="d", model="simple_cnn", image_size=96, augment=AugmentConfig(rotate_degrees=5, hflip=True))
    cfg.save(tmp_path / "c.yaml")
    back = TrainConfig.load(tmp_path / "c.yaml")
    assert back == cfg and back.augment.rotate_degrees == 5 and back.augment.hflip
    d = yaml.safe_load((tmp_path / "c.yaml").read_text())
    d["learning_rate"] = 1
    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig.from_dict(d)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(data="d", batch_size=1)
    # YAML reads yes/on as true: a boolean where a number belongs is refused, not read as 1.0
    d.pop("learning_rate")
    for key, value, where in (("lr", True, r"lr \(--lr\)"), ("mixstyle", True, r"mixstyle \(--mixstyle\)"),
                              ("augment", {"brightness": True}, r"augment.brightness \(--brightness\)")):
        with pytest.raises(ValueError, match=f"{where}: expected a number or text, got true"):
            TrainConfig.from_dict({**d, key: value})
    assert TrainConfig.from_dict({**d, "tta": True}).tta  # booleans where they belong
    # a check across fields reads as its own message, not pydantic's wrapper around the whole dict
    for key, value, message in (("seed", -1, "seed (--seed) and split_seed (--split-seed) must be whole numbers from 0"),
                                ("split_seed", 2**32, "seed (--seed) and split_seed (--split-seed) must be whole numbers from 0"),
                                ("weight_decay", -1.0, "weight_decay (--weight-decay) must be a finite number >= 0"),
                                # infinite values trained on NaN weights; an empty out wrote the run into the current folder
                                ("lr", float("inf"), "lr (--lr) must be a positive number up to 1e6"),
                                ("lr", 1e39, "lr (--lr) must be a positive number up to 1e6"),  # a RuntimeError from the optimiser
                                # strengths that draw a zero or negative zoom, inverted or all-white images trained without a word
                                ("augment", {"scale": 5.0}, "augment.scale (--scale) must be below 1"),
                                ("augment", {"contrast": 5.0}, "augment.contrast (--contrast) must be at most 1"),
                                ("augment", {"brightness": 10.0}, "augment.brightness (--brightness) must be at most 1"),
                                ("augment", {"translate": 1.0}, "augment.translate (--translate) must be below 1"),
                                ("weight_decay", float("inf"), "weight_decay (--weight-decay) must be a finite number >= 0"),
                                ("backbone_lr_scale", float("inf"), "backbone_lr_scale (--backbone-lr-scale) must be a positive finite number"),
                                ("ema_epochs", float("inf"), "ema_epochs (--ema-epochs) must be positive"),
                                ("augment", {"rotate_degrees": float("inf")}, "augment strengths must be finite"),
                                ("out", " ", "out (--out) must name the run folder")):
        with pytest.raises(ValueError) as err:
            TrainConfig.from_dict({**d, key: value})
        assert str(err.value).startswith(message) and "given" not in str(err.value)
    assert TrainConfig.from_dict({**d, "group_pattern": ""}).group_pattern is None  # read as no pattern: stored as none


def _not_blank(level: int) -> np.ndarray:
    """A 20x30 image at ``level`` with a ramp in its first row: one grey level (or a few) is a blank image, which the cache refuses."""
    a = np.full((20, 30), level, np.uint8)
    a[0] = np.linspace(0, 255, 30).astype(np.uint8)
    return a


def test_cache_is_reused_and_invalidated(tmp_path):
    paths = []
    for i in range(5):
        p = tmp_path / f"{i}.png"
        Image.fromarray(_not_blank(i * 40)).save(p)
        paths.append(p)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    paths.append(bad)
    first = load_cached(paths, 16, cache_dir=tmp_path / "c", progress=False)
    assert not first.hit and first.images.shape == (6, 16, 16)
    assert list(first.ok) == [True] * 5 + [False] and 5 in first.errors
    assert np.median(first.images[3]) == 120
    second = load_cached(paths, 16, cache_dir=tmp_path / "c", progress=False)
    assert second.hit and second.key == first.key
    np.testing.assert_array_equal(second.images, first.images)
    assert load_cached(paths, 24, cache_dir=tmp_path / "c", progress=False).key != first.key
    time.sleep(0.01)
    Image.fromarray(_not_blank(250)).save(paths[3])
    os.utime(paths[3], ns=(time.time_ns(), time.time_ns()))
    changed = load_cached(paths, 16, cache_dir=tmp_path / "c", progress=False)
    assert not changed.hit and np.median(changed.images[3]) == 250



@pytest.mark.parametrize("damage", ["truncated images", "bad status", "wrong shape"])
def test_a_damaged_cache_store_is_rebuilt_with_a_note(tmp_path, capsys, damage):
    # A store is derived data: a truncated images.npy stopped every training with numpy's "mmap length is greater than file size".
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((20, 30), 40 * i, np.uint8)).save(paths[-1])
    first = load_cached(paths, 16, cache_dir=tmp_path / "c", progress=False)
    store = tmp_path / "c" / "images" / first.key
    expected = np.array(first.images)
    del first
    if damage == "truncated images":
        with open(store / "images.npy", "r+b") as f:
            f.truncate(400)
    elif damage == "bad status":
        (store / "status.json").write_text("{bad")
    else:
        np.save(store / "images.npy", np.zeros((5, 8, 8), np.uint8))
    capsys.readouterr()
    again = load_cached(paths, 16, cache_dir=tmp_path / "c", progress=False)
    assert not again.hit and again.key == store.name
    np.testing.assert_array_equal(again.images, expected)
    assert f"note: the image cache {store} is damaged" in capsys.readouterr().err
    assert load_cached(paths, 16, cache_dir=tmp_path / "c", progress=False).hit  # and whole again


def test_augmentation_is_seeded_shape_preserving_and_can_be_off():
    x = torch.rand(4, 1, 32, 32)
    cfg = AugmentConfig()
    a = augment_batch(x, cfg, torch.Generator().manual_seed(0))
    b = augment_batch(x, cfg, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    assert a.min() >= 0 and a.max() <= 1
    off = AugmentConfig(0, 0, 0, 0, 0, False)
    assert torch.equal(augment_batch(x, off, torch.Generator()), x)
    # Pure horizontal flip (probability 0.5 per image) mirrors the image exactly.
    flip = augment_batch(x, AugmentConfig(0, 0, 0, 0, 0, True), torch.Generator().manual_seed(3))
    for i in range(4):
        assert torch.allclose(flip[i], x[i], atol=1e-5) or torch.allclose(flip[i], x[i].flip(-1), atol=1e-5)
