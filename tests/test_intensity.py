"""Per-image intensity normalisation and border cropping: what each does, and the same output everywhere."""

import base64
import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from cxrkit.config import TrainConfig
from cxrkit.data.augment import AugmentConfig
from cxrkit.data.intensity import INTENSITY_MODES, crop_borders, normalize_intensity
from cxrkit.data.synthetic import make_synthetic_dataset
from cxrkit.evaluation.evaluate import load_run_dataset
from cxrkit.run import Run
from cxrkit.training import train


def _image(seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:96, 0:80]
    return np.clip(60 + 0.4 * x + 20 * np.sin(y / 7) + rng.normal(0, 5, (96, 80)), 0, 255).astype(np.uint8)


def test_each_mode_does_what_it_says():
    g = _image()
    assert normalize_intensity(g, "none") is g
    z = normalize_intensity(g, "zscore")
    assert abs(z.mean() - 127.5) < 3 and z.std() > g.std()
    p = normalize_intensity(g, "percentile")
    assert np.percentile(p, 0.5) < 3 and np.percentile(p, 99.5) > 252  # stretched to the full range
    h = normalize_intensity(g, "histeq")
    counts = np.histogram(h, bins=8, range=(0, 256))[0]
    assert counts.max() / counts.min() < 2.0  # near-flat histogram
    c = normalize_intensity(g, "clahe")
    assert c.dtype == np.uint8 and c.shape == g.shape and c.std() > g.std()
    # A darker, low-contrast copy of the same image (another site's exposure) comes out nearly the same.
    other = (g * 0.6 + 20).astype(np.uint8)
    for mode in ("zscore", "percentile", "histeq"):
        diff = np.abs(normalize_intensity(other, mode).astype(int) - normalize_intensity(g, mode).astype(int)).mean()
        assert diff < 6, mode
    with pytest.raises(ValueError, match="intensity must be one of"):
        normalize_intensity(g, "gamma")
    with pytest.raises(ValueError, match=r"intensity \(--intensity\) must be one of"):
        TrainConfig(data="d", intensity="gamma")


def test_crop_borders_removes_uniform_bands_only():
    g = _image()
    framed = np.full((130, 110), 255, np.uint8)  # a white collimation frame around the image
    framed[14:110, 12:92] = g
    assert crop_borders(framed).shape == g.shape
    np.testing.assert_array_equal(crop_borders(framed), g)
    flat = np.full((50, 50), 30, np.uint8)
    assert crop_borders(flat).shape == flat.shape  # nothing to keep: never cropped away
    wide = np.zeros((100, 100), np.uint8)
    wide[45:55, 45:55] = 200
    assert crop_borders(wide).shape == (60, 60)  # at most 20% per side


@pytest.mark.parametrize("mode", INTENSITY_MODES)
def test_same_output_in_training_cache_evaluation_and_prediction(mode, tmp_path):
    data = make_synthetic_dataset(tmp_path / "d", n_per_class=16, size=40, seed=4, signal=1.0)
    frame = data / "tb" / "tb_0000.png"
    a = np.asarray(Image.open(frame))
    big = np.full((a.shape[0] + 10, a.shape[1] + 10), 255, np.uint8)
    big[5:-5, 5:-5] = a
    Image.fromarray(big).save(frame)  # one framed file, so cropping has work to do
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "r"), model="pasa", image_size=32, epochs=1, batch_size=8,
                      intensity=mode, crop_border=True, augment=AugmentConfig(0, 0, 0, 0, 0, False))
    train(cfg, progress=False)
    run = Run.load(tmp_path / "r")
    assert (run.preprocessing.intensity, run.preprocessing.crop_border) == (mode, True)
    ds, _ = load_run_dataset(run, progress=False)
    i = ds.relpaths.index("tb/tb_0000.png")
    from_predict = run.preprocessing.load(frame)
    np.testing.assert_array_equal(np.asarray(ds.images[i]), from_predict)  # cache used by train/evaluate == predict
    probs, errors = run.predict_files([frame])
    np.testing.assert_allclose(probs[0], run.predict_arrays(from_predict[None])[0], atol=1e-6)
    from fastapi.testclient import TestClient

    from cxrkit.serve.app import create_app

    with TestClient(create_app(tmp_path / "r", engine="torch", api_key="")) as client:
        r = client.post("/v1/predict", params={"preview": "true"}, files=[("files", ("x.png", frame.read_bytes(), "image/png"))])
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    served = np.asarray(Image.open(io.BytesIO(base64.b64decode(res["image_png"]))))
    np.testing.assert_array_equal(served, from_predict)  # the image as the served model saw it
    np.testing.assert_allclose([res["probabilities"][c] for c in run.classes], probs[0], atol=2e-6)


def test_gamma_blur_and_noise_augmentation():
    import torch

    from cxrkit.data.augment import augment_batch

    x = torch.zeros(4, 1, 32, 32)
    x[:, :, 12:20, 12:20] = 0.8
    x[:, :, :, :6] = 0.3
    off = AugmentConfig(0, 0, 0, 0, 0, False)
    assert not off.enabled
    g = augment_batch(x, AugmentConfig(0, 0, 0, 0, 0, False, gamma=0.5), torch.Generator().manual_seed(0))
    assert torch.equal(g == 0, x == 0) and not torch.allclose(g, x)  # black stays black, grey levels move
    b = augment_batch(x, AugmentConfig(0, 0, 0, 0, 0, False, blur=2.0), torch.Generator().manual_seed(0))
    assert b.shape == x.shape and (b[:, :, 16, 11] > 0).sum() >= 2 and b.max() <= 0.8 + 1e-6  # edges soften, no overshoot
    assert torch.allclose(b.sum(dim=(2, 3)), x.sum(dim=(2, 3)), rtol=0.05)  # blur keeps the mean
    n = augment_batch(x, AugmentConfig(0, 0, 0, 0, 0, False, noise=0.05), torch.Generator().manual_seed(0))
    assert 0 < (n - x).abs().mean() < 0.05 and n.min() >= 0 and n.max() <= 1
    again = augment_batch(x, AugmentConfig(0, 0, 0, 0, 0, False, noise=0.05), torch.Generator().manual_seed(0))
    assert torch.equal(n, again)  # seeded


def test_edge_erasing_blacks_out_only_border_bands_or_corners():
    import torch

    from cxrkit.data.augment import augment_batch

    x = torch.full((200, 1, 40, 40), 0.6)
    cfg = AugmentConfig(0, 0, 0, 0, 0, False, erase_edges=0.5)
    y = augment_batch(x, cfg, torch.Generator().manual_seed(0))
    erased = y == 0
    assert torch.equal(y[~erased], x[~erased])  # nothing else changes
    assert not erased[:, :, 10:30, 10:30].any()  # the centre (the lungs) is never touched
    hit = erased.flatten(1).any(1)
    assert 0.35 < hit.float().mean() < 0.65  # about half the images
    side = erased[:, 0, 20, :].any(1)  # a band crosses the middle row; corner squares (at most 25%) do not
    assert 0.1 < side.float().mean() < 0.4  # about half of the erased images got a band, the others corners
    for i in torch.nonzero(side).flatten()[:10]:  # a band is a full frame: every side blacked out, same width
        m = erased[i, 0]
        assert m[0].all() and m[-1].all() and m[:, 0].all() and m[:, -1].all()
        width = int(m[20].int().argmin())
        assert 1 <= width <= 4 and m[20, -width:].all() and not m[20, width:-width].any()
    assert torch.equal(augment_batch(x, cfg, torch.Generator().manual_seed(0)), y)  # seeded


def test_random_convolution_changes_texture_and_curve_but_keeps_shapes_polarity_and_range():
    import torch

    from cxrkit.data.augment import augment_batch

    g = torch.Generator().manual_seed(0)
    x = (torch.rand(64, 1, 32, 32, generator=g) * 0.2 + torch.linspace(0.1, 0.7, 32).view(1, 1, 1, 32)).clamp(0, 1)
    cfg = AugmentConfig(0, 0, 0, 0, 0, False, random_conv=1.0)
    y = augment_batch(x, cfg, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    change = (y - x).abs().flatten(1).mean(1)
    assert (change > 0).float().mean() > 0.95 and change.max() > 0.05  # a real change, and images differ in how much
    xc, yc = x - x.mean((2, 3), keepdim=True), y - y.mean((2, 3), keepdim=True)
    corr = (xc * yc).flatten(1).sum(1) / (xc.flatten(1).norm(dim=1) * yc.flatten(1).norm(dim=1))
    assert corr.min() > 0  # polarity kept: never an inverted film
    assert (y.mean((1, 2, 3)) - x.mean((1, 2, 3))).abs().max() < 0.1  # brought back to each image's own level
    half = augment_batch(x, replace(cfg, random_conv=0.5), torch.Generator().manual_seed(2))
    touched = (half != x).flatten(1).any(1).float().mean()
    assert 0.3 < touched < 0.7  # about half the images
    assert torch.equal(augment_batch(x, cfg, torch.Generator().manual_seed(1)), y)  # seeded


@pytest.mark.parametrize(("option", "flag"), [("erase_edges", "--erase-edges"), ("random_conv", "--random-conv")])
def test_a_probability_augmentation_is_off_by_default_and_refused_above_one(option, flag):
    import torch

    from cxrkit.config import ConfigError
    from cxrkit.data.augment import augment_batch

    x = torch.rand(16, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    off = AugmentConfig(0, 0, 0, 0, 0, False, noise=0.05)  # off by default: other augmentations draw the same numbers as before
    assert torch.equal(augment_batch(x, off, torch.Generator().manual_seed(1)),
                       augment_batch(x, replace(off, **{option: 0.0}), torch.Generator().manual_seed(1)))
    with pytest.raises(ConfigError, match=rf"{option} \({flag}\) is a probability"):
        TrainConfig(data="d", augment=AugmentConfig(**{option: 1.5}))


def test_augmentation_presets_and_explicit_options_on_the_command_line():
    from cxrkit.cli import _config_from_args, build_parser
    from cxrkit.data.augment import AUGMENT_PRESETS, DEFAULT_PRESET

    def config(*extra):
        a = build_parser().parse_args(["train", "data", *extra])
        return _config_from_args(a, "data", "out").augment

    assert config() == AUGMENT_PRESETS[DEFAULT_PRESET] == TrainConfig(data="d").augment
    assert DEFAULT_PRESET == "robust" and config().gamma == 0.4  # chosen by benchmarks/sites.py (README: robust by default)
    assert config("--augment-preset", "mild") == AugmentConfig()  # the default before issue 12
    robust = config("--augment-preset", "robust")
    assert (robust.gamma, robust.blur, robust.noise, robust.contrast) == (0.4, 1.0, 0.03, 0.3)
    mixed = config("--augment-preset", "robust", "--gamma", "0.1", "--hflip")
    assert (mixed.gamma, mixed.blur, mixed.hflip) == (0.1, 1.0, True)
    # Flips: on in the robust preset, the default (BENCHMARKS.md round 6), off in mild; --hflip/--no-hflip override either.
    assert config().hflip and not config("--no-hflip").hflip and not config("--augment-preset", "mild").hflip
    assert config("--augment-preset", "mild", "--hflip").hflip and not config("--augment-preset", "robust", "--no-hflip").hflip
    assert not config("--augment-preset", "robust", "--no-augment").enabled
    assert config("--erase-edges", "0.5").erase_edges == 0.5 and config().erase_edges == 0.0
    assert config("--random-conv", "0.5").random_conv == 0.5 and config().random_conv == 0.0


def test_to_unit_copies_and_accepts_read_only_arrays():
    import warnings

    import torch

    from cxrkit.data.preprocess import Preprocessing

    frozen = np.full((2, 4, 4), 255, np.uint8)
    frozen.setflags(write=False)  # as a memory-mapped cache hands it over
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when wrapping a read-only array
        unit = Preprocessing.to_unit(frozen)
    assert unit.shape == (2, 1, 4, 4) and float(unit.max()) == 1.0
    t = torch.full((2, 4, 4), 255.0)
    Preprocessing.to_unit(t)
    assert float(t.max()) == 255.0  # a float tensor given in is not scaled in place
