"""cxrkit adapt (AdaBN): only batch-norm statistics change, and they become the new images' statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cxrkit.cli import main
from cxrkit.data.synthetic import synthetic_cxr
from cxrkit.run import Run
from cxrkit.training.adapt import batchnorm_layers


def _new_site(root: Path, n: int = 32, size: int = 48) -> Path:
    """Unlabelled images from a 'brighter' site, flat in one folder."""
    rng = np.random.default_rng(7)
    root.mkdir(parents=True)
    for i in range(n):
        img = synthetic_cxr(rng, size, pattern=i % 2).astype(int) + 50
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / f"x{i:03d}.png")
    return root


def test_adapt_changes_only_batchnorm_statistics(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    site = _new_site(tmp_path / "site")
    out = tmp_path / "adapted"
    assert main(["adapt", str(tiny_run), str(site), "--out", str(out), "--batch-size", "16", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["images"] == 32 and doc["batchnorm_layers"] > 0 and doc["method"] == "AdaBN"
    before, after = load_file(str(tiny_run / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked") for k in changed)
    assert any(k.endswith("running_mean") for k in changed)

    # The first batch-norm layer's running mean is now the mean of its inputs over the new images.
    src, run = Run.load(tiny_run, engine="torch"), Run.load(out, engine="torch")
    images = np.stack([run.preprocessing.load(p) for p in sorted(site.iterdir())])
    first = batchnorm_layers(run.model)[0]
    seen = []
    handle = first.register_forward_hook(lambda m, inp, outp: seen.append(inp[0].detach()))
    with torch.no_grad():
        run.model(run.preprocessing(images).contiguous(memory_format=torch.channels_last))
    handle.remove()
    assert torch.allclose(first.running_mean, seen[0].mean(dim=(0, 2, 3)), atol=1e-4)
    assert not torch.allclose(batchnorm_layers(src.model)[0].running_mean, first.running_mean, atol=1e-3)
    assert run.meta["adapted"]["images"] == 32 and run.threshold == src.threshold


def test_adapt_bad_inputs_are_one_line_errors(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    (tmp_path / "few").mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "few" / "a.png")
    assert main(["adapt", str(tiny_run), str(tmp_path / "few"), "--out", str(tmp_path / "o1")]) == 2
    assert main(["adapt", str(tiny_run), str(tmp_path / "missing"), "--out", str(tmp_path / "o2")]) == 2
    assert main(["adapt", str(tiny_run), str(tmp_path / "few"), "--out", str(tiny_run)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 3 and "Traceback" not in err and "at least 16" in err


@pytest.mark.parametrize("size", ["1", "0", "-3"])
def test_adapt_refuses_a_batch_size_that_estimates_nothing(size: str, tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    # A batch of one has no variance and is skipped, and a batch size of 0 or below made no batch at all: every layer was left
    # with reset statistics (mean 0, variance 1) and the command said they had been re-estimated on the images.
    site = _new_site(tmp_path / "site", n=16)
    with pytest.raises(SystemExit) as exit_:
        main(["adapt", str(tiny_run), str(site), "--out", str(tmp_path / "adapted"), "--batch-size", size])
    assert exit_.value.code == 2
    assert f"argument --batch-size: {size} is outside 2-4096" in capsys.readouterr().err
    assert not (tmp_path / "adapted").exists()


def test_adapt_run_checks_batch_size_and_link_loops_from_python(tiny_run: Path, tmp_path: Path):
    from cxrkit.training.adapt import adapt_run

    site = _new_site(tmp_path / "site", n=16)
    for size in (1, 0, 2.5, True):  # the command line's parser checked it; the function left every layer at reset statistics
        with pytest.raises(ValueError, match="batch_size must be an integer from 2 to 4096"):
            adapt_run(tiny_run, site, tmp_path / "adapted", batch_size=size)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(ValueError, match="symbolic link loop"):  # was "unexpected RuntimeError" from Path.resolve
        adapt_run(tiny_run, site, tmp_path / "loop")
    assert not (tmp_path / "adapted").exists()


def test_adabn_pools_statistics_over_images_not_batches(tiny_run: Path, tmp_path: Path):
    # 34 images in batches of 16: the old cumulative average gave the last 2 images the weight of 16, and 33 dropped one.
    from cxrkit.training.adapt import adapt_batchnorm

    site = _new_site(tmp_path / "site", n=34)
    run = Run.load(tiny_run, engine="torch")
    images = np.stack([run.preprocessing.load(p) for p in sorted(site.iterdir())])
    first = batchnorm_layers(run.model)[0]
    seen = []
    handle = first.register_forward_hook(lambda m, inp, outp: seen.append(inp[0].detach().double()))
    with torch.no_grad():
        run.model(run.preprocessing(images).contiguous(memory_format=torch.channels_last))
    handle.remove()
    pooled = seen[0].transpose(0, 1).reshape(seen[0].shape[1], -1)
    adapt_batchnorm(run, images, batch_size=16)
    torch.testing.assert_close(first.running_mean.double(), pooled.mean(dim=1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(first.running_var.double(), pooled.var(dim=1), atol=1e-5, rtol=1e-4)


def test_adapt_overwrite_replaces_only_run_files_and_never_takes_the_source_or_the_images(tiny_run: Path, tmp_path: Path,
                                                                                           capsys: pytest.CaptureFixture):
    # --overwrite emptied --out: the source run inside it, a dataset given as --out, anything else a user kept there.
    import shutil

    site = _new_site(tmp_path / "site")
    shutil.copytree(tiny_run, tmp_path / "box" / "r")
    for out, holds in ((tmp_path / "box", "the source run"), (tmp_path, "the source run"), (site, "the images to adapt on")):
        source = tmp_path / "box" / "r" if holds == "the source run" else tiny_run
        assert main(["adapt", str(source), str(site), "--out", str(out), "--overwrite"]) == 2
        assert f"holds {holds}" in capsys.readouterr().err
    out = tmp_path / "out"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "keep.txt").write_text("mine")
    (out / "model.onnx").write_text("an old export")
    assert main(["adapt", str(tiny_run), str(site), "--out", str(out), "--overwrite"]) == 0
    assert (out / "notes" / "keep.txt").read_text() == "mine" and not (out / "model.onnx").exists() and (out / "meta.json").is_file()
    assert len(list(site.iterdir())) == 32 and (tmp_path / "box" / "r" / "meta.json").is_file()


def test_an_adapted_run_names_itself_in_its_config_and_keeps_no_export_of_the_old_weights(tiny_run: Path, tmp_path: Path):
    import json
    import shutil

    import yaml

    source = tmp_path / "src"
    shutil.copytree(tiny_run, source)
    assert main(["export", str(source)]) == 0 and json.loads((source / "meta.json").read_text())["onnx_sha256"]
    out = tmp_path / "adapted"
    assert main(["adapt", str(source), str(_new_site(tmp_path / "site")), "--out", str(out)]) == 0
    # The report's "cxrkit calibrate ..." and "evaluate ..." commands named the source run (config.yaml's out).
    assert yaml.safe_load((out / "config.yaml").read_text())["out"] == str(out)
    assert json.loads((out / "meta.json").read_text())["onnx_sha256"] is None and not list(out.glob("*.onnx"))
    assert Run.load(out).config().cache_dir == Run.load(source).config().cache_dir
    # Neither the report nor the model card said the model was adapted; the report described the source's training alone.
    from cxrkit.serve.model_card import model_card

    assert any(s.startswith(f"Adapted (AdaBN) from {source}: batch-norm statistics re-estimated on 32 unlabelled images")
               for s in model_card(Run.load(out))["limitations"])
    assert main(["evaluate", str(out), "--split", "val"]) == 0
    html = (out / "report.html").read_text()
    assert "Adapted to another site (AdaBN).</b> This run is <code>" + str(source) in html and f"cxrkit calibrate {source}" not in html
