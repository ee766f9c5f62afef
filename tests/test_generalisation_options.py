"""Options measured for other hospitals (benchmarks/sites.py): MixStyle, mixup and a moving average of the weights.

MixStyle must change feature statistics only, only while training, and leave the saved network plain;
the moving average must be what is validated and saved (resuming both: tests/test_resume.py)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from cxrkit.config import ConfigError, TrainConfig
from cxrkit.data.synthetic import make_synthetic_dataset
from cxrkit.models.mixstyle import MixStyle
from cxrkit.models.registry import build_model
from cxrkit.training import train
from cxrkit.training.weight_average import effective_ema_epochs, ema_decay, weight_average


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(dim=(2, 3)), x.std(dim=(2, 3), correction=0)


def test_mixstyle_mixes_statistics_and_keeps_content():
    g = torch.Generator().manual_seed(0)
    content = torch.randn(4, 3, 8, 8, generator=g)
    content = (content - content.mean(dim=(2, 3), keepdim=True)) / content.std(dim=(2, 3), keepdim=True, correction=0)
    mu = torch.tensor([0.0, 1.0, 2.0, 3.0]).view(4, 1, 1, 1).expand(4, 3, 1, 1)
    sig = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1).expand(4, 3, 1, 1)
    x = content * sig + mu
    out = MixStyle(p=1.0, alpha=0.1, seed=3).mix(x)
    m_out, s_out = _stats(out)
    # each image's new mean and std lie between the smallest and largest in the batch, and not all are unchanged
    assert float(m_out.min()) >= -1e-4 and float(m_out.max()) <= 3 + 1e-4
    assert float(s_out.min()) >= 1 - 1e-3 and float(s_out.max()) <= 4 + 1e-3
    assert not torch.allclose(m_out, mu[:, :, 0, 0], atol=1e-2)
    # what is left after removing the statistics (the anatomy) is untouched
    renormed = (out - m_out[..., None, None]) / s_out[..., None, None]
    assert torch.allclose(renormed, content, atol=1e-3)


def test_mixstyle_acts_only_in_training_mode_and_can_be_removed():
    torch.manual_seed(0)
    model = build_model("cnn", 1, 32)
    x = torch.randn(6, 1, 32, 32)
    model.eval()
    plain = model(x)
    ms = MixStyle(p=1.0, seed=0).attach(model, ("features.3", "features.10", "features.17"))
    assert torch.equal(model(x), plain)  # evaluation: a no-op
    model.train()
    torch.manual_seed(1)
    mixed = model(x)
    ms.detach()
    torch.manual_seed(1)
    unmixed = model(x)
    assert not torch.allclose(mixed, unmixed, atol=1e-4)
    with pytest.raises(ValueError, match="no layer"):
        MixStyle().attach(model, ("features.99",))


def test_options_are_validated():
    with pytest.raises(ConfigError, match=r"mixstyle \(--mixstyle\) is not available for mlp"):
        TrainConfig(data="d", model="mlp", mixstyle=0.5)
    with pytest.raises(ConfigError, match=r"mixstyle \(--mixstyle\) must be a probability"):
        TrainConfig(data="d", mixstyle=1.5)
    with pytest.raises(ConfigError, match=r"ema_epochs \(--ema-epochs\) must be positive"):
        TrainConfig(data="d", ema_epochs=0)


def test_weight_average_is_the_debiased_exponential_average_of_the_steps_seen():
    net = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.BatchNorm1d(1))
    avg = weight_average(net, ema_epochs=1.0, steps_per_epoch=4)
    d = ema_decay(1.0, 4)
    assert d == pytest.approx(0.75)
    steps = [1.0, 2.0, 3.0, 5.0]
    for v in steps:
        with torch.no_grad():
            net[0].weight.fill_(v)
            net[1].running_mean.fill_(-v)
        net[1].num_batches_tracked += 1
        avg.update_parameters(net)
    w = [d ** (len(steps) - 1 - i) for i in range(len(steps))]
    expected = sum(a * b for a, b in zip(w, steps)) / sum(w)  # 3.217: no trace of any starting weight
    assert float(avg.module[0].weight.detach()) == pytest.approx(expected)
    assert float(avg.module[1].running_mean) == pytest.approx(-expected)  # batch-norm statistics averaged alike
    assert int(avg.module[1].num_batches_tracked) == 4
    assert effective_ema_epochs(3.0, 20) == 3.0 and effective_ema_epochs(3.0, 4) == pytest.approx(0.6)


class Stop(Exception):
    pass


def test_a_run_saved_before_weight_averaging_or_tta_loads_without_them(tmp_path):
    saved = tmp_path / "config.yaml"
    saved.write_text("data: d\nmodel: cnn\n")  # written before ema_epochs, tta and keep existed
    old = TrainConfig.load_saved(saved)
    assert old.ema_epochs is None and old.tta is False and old.resolved_keep() == "best"
    user = TrainConfig.load(saved)  # a user's config file gets today's defaults
    assert user.ema_epochs == 3.0 and user.tta is True and user.resolved_keep() == "last"
    saved.write_text("data: d\nmodel: cnn\nema_epochs: null\ntta: true\n")
    assert TrainConfig.load_saved(saved).ema_epochs is None and TrainConfig.load_saved(saved).tta is True


def test_tta_is_on_by_default_and_off_with_no_tta():
    from cxrkit.cli import _config_from_args, build_parser

    def tta(*extra: str) -> bool:
        return _config_from_args(build_parser().parse_args(["train", "data", *extra]), "data", "out").tta

    assert TrainConfig(data="d").tta and tta() and tta("--tta") and not tta("--no-tta")


def test_averaged_weights_are_what_is_kept(tmp_path):
    data = make_synthetic_dataset(tmp_path / "d", n_per_class=30, size=24, seed=2, signal=1.0)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "full"), model="cnn", image_size=24, epochs=4, batch_size=16,
                      lr=2e-3, seed=0, precision="32", ema_epochs=1.0, mixstyle=0.5, mixup=0.4, augment={"rotate_degrees": 0})

    def after_first(epoch: int, auc: float) -> None:
        raise Stop

    one = tmp_path / "one"
    with pytest.raises(Stop):  # a 10-epoch run (window 1 epoch, within 15% of the run) stopped after its first epoch
        train(replace(cfg, out=str(one), epochs=10), progress=False, finish=False, on_epoch=after_first)
    saved = load_file(str(one / "model.safetensors"))
    # the saved network is plain (no extra tensors) and is the average, not the last optimiser step
    assert set(saved) == set(build_model("cnn", 1, 24).state_dict())
    last = load_file(str(one / "checkpoint" / "tensors.safetensors"))
    assert all(torch.equal(saved[k], last[f"ema.module.{k}"]) for k in saved)
    assert any(not torch.equal(saved[k], last[f"model.{k}"]) for k in saved if saved[k].is_floating_point())

    full = train(cfg, progress=False, finish=False)
    meta = json.loads((full / "meta.json").read_text())["training"]
    # asked for 1 epoch; a 4-epoch run averages over at most 15% of itself (0.6 epochs of 3 steps)
    assert meta["weight_average"]["asked"] == 1.0 and meta["weight_average"]["epochs"] == pytest.approx(0.6)
    assert meta["weight_average"]["decay"] == pytest.approx(1 - 1 / 1.8) and meta["weight_average"]["debiased"]
    assert meta["mixstyle"]["layers"] == ["features.3", "features.10", "features.17"]
    assert meta["mixup"] == {"alpha": 0.4}
    assert json.loads((train(replace(cfg, out=str(tmp_path / "plain"), epochs=1, mixup=0.0), progress=False, finish=False)
                       / "meta.json").read_text())["training"]["mixup"] is None


def test_mixup_blends_images_and_losses_with_one_weight():
    import numpy as np

    from cxrkit.tasks import get_task
    from cxrkit.training.trainer import _loss, _mixup

    x = torch.arange(4 * 9, dtype=torch.float32).view(4, 1, 3, 3)
    same, none = _mixup(x, 0.0, np.random.default_rng(0), torch.Generator().manual_seed(0))
    assert same is x and none is None
    mixed, (lam, perm) = _mixup(x, 0.4, np.random.default_rng(0), torch.Generator().manual_seed(0))
    assert lam == pytest.approx(np.random.default_rng(0).beta(0.4, 0.4)) and 0 < lam < 1
    assert sorted(perm.tolist()) == [0, 1, 2, 3] and perm.tolist() != [0, 1, 2, 3]
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[perm])

    class S:  # the two fields of the training setup the loss reads
        task = get_task("binary")
        criterion = torch.nn.BCEWithLogitsLoss()

    logits, y = torch.tensor([[2.0], [-1.0], [0.5], [-3.0]]), torch.tensor([1, 0, 0, 1])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    want = lam * bce(logits[:, 0], y.float()) + (1 - lam) * bce(logits[:, 0], y[perm].float())
    assert _loss(S, logits, y, (lam, perm)).item() == pytest.approx(want.item())
    assert _loss(S, logits, y, None).item() == pytest.approx(bce(logits[:, 0], y.float()).item())


@pytest.mark.parametrize("alpha", [-0.1, 11.0, float("inf"), float("nan")])
def test_mixup_alpha_out_of_range_is_refused(alpha):
    with pytest.raises(ConfigError, match=r"mixup \(--mixup\) must be the Beta"):
        TrainConfig(data="d", mixup=alpha)

