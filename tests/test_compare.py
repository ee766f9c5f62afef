"""cxrkit compare: the table, the paired DeLong test, failures and --resume."""

import csv
import json

import numpy as np
import pytest

import cxrkit.training
from cxrkit.cli import main
from cxrkit.experiments.compare import COLUMNS, parse_models
from cxrkit.metrics.intervals import delong_paired

FAST = ["--image-size", "32", "--epochs", "3", "--patience", "3", "--batch-size", "16", "--lr", "3e-3"]


def _reference_delong(y, a, b):
    """O(m*n) DeLong straight from the definitions (Heaviside kernel, explicit covariance)."""
    y = np.asarray(y, bool)

    def components(s):
        pos, neg = s[y], s[~y]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(), psi.mean(axis=1), psi.mean(axis=0)

    (A, a10, a01), (B, b10, b01) = components(np.asarray(a, float)), components(np.asarray(b, float))
    m, n = len(a10), len(a01)
    var = (np.var(a10, ddof=1) + np.var(b10, ddof=1) - 2 * np.cov(a10, b10)[0, 1]) / m
    var += (np.var(a01, ddof=1) + np.var(b01, ddof=1) - 2 * np.cov(a01, b01)[0, 1]) / n
    from scipy.stats import norm

    z = (A - B) / np.sqrt(var)
    return A, B, z, 2 * norm.sf(abs(z))


def test_delong_paired_matches_the_reference_and_holds_its_size():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    latent = y + rng.normal(0, 0.7, 200)
    a = np.round(latent + rng.normal(0, 0.3, 200), 1)  # rounding makes ties, which the midrank handles
    b = latent + rng.normal(0, 2.0, 200)
    r = delong_paired(y, a, b)
    A, B, z, p = _reference_delong(y, a, b)
    assert r["auc_a"] == pytest.approx(A) and r["auc_b"] == pytest.approx(B)
    assert r["z"] == pytest.approx(z) and r["p_value"] == pytest.approx(p)
    assert r["p_value"] < 0.05  # the noisier score really is worse here
    assert delong_paired(y, a, a)["p_value"] == 1.0
    # Under the null (two equally good scores) the test rejects about 5% of the time.
    rejections = 0
    for i in range(300):
        g = np.random.default_rng(100 + i)
        yy = g.integers(0, 2, 80)
        base = yy + g.normal(0, 1, 80)
        rejections += delong_paired(yy, base + g.normal(0, 1, 80), base + g.normal(0, 1, 80))["p_value"] < 0.05
    assert 0.02 <= rejections / 300 <= 0.09
    with pytest.raises(ValueError, match="two positive"):
        delong_paired([1, 0, 0], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])


def test_parse_models():
    assert parse_models("cnn, pasa,resnet18:128", 224) == [("cnn", "cnn", 224), ("pasa", "pasa", 224), ("resnet18:128", "resnet18", 128)]
    for bad, msg in [("cnn", "at least two"), ("cnn,vgg", "unknown model"), ("cnn,cnn", "twice"), ("cnn,pasa:big", "NAME:IMAGE_SIZE"),
                     ("cnn:0,pasa", "'cnn:0': the image size must be from 16 to 1024"), ("cnn,pasa:99999", "from 16 to 1024")]:
        with pytest.raises(ValueError, match=msg):
            parse_models(bad, 64)


def test_bad_dataset_fails_once_with_a_clear_error(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "missing"), "--models", "pasa,mlp", "--out", str(tmp_path / "c")]) == 2
    assert "missing" in capsys.readouterr().err and not (tmp_path / "c").exists()
    (tmp_path / "empty").mkdir()
    assert main(["tune", str(tmp_path / "empty"), "--model", "pasa", "--trials", "2", "--out", str(tmp_path / "t")]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "t").exists()


def test_compare_table_failure_and_resume(binary_data, tmp_path, monkeypatch, capsys):
    real_train = cxrkit.training.train
    calls = []

    def flaky_train(cfg, **kw):
        calls.append(cfg.model)
        if cfg.model == "mlp" and fail["on"]:
            raise RuntimeError("simulated out of memory")
        return real_train(cfg, **kw)

    fail = {"on": True}
    monkeypatch.setattr(cxrkit.training, "train", flaky_train)
    out = tmp_path / "cmp"
    args = ["compare", str(binary_data), "--models", "pasa,cnn,mlp", "--out", str(out), *FAST]
    assert main(args) == 1  # a failed model makes the exit status non-zero, after the others finished
    assert calls == ["pasa", "cnn", "mlp"]
    with open(out / "comparison.csv", newline="") as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    assert list(next(iter(rows.values()))) == COLUMNS
    assert rows["mlp"]["status"] == "failed" and "simulated out of memory" in rows["mlp"]["error"]
    done = [rows["pasa"], rows["cnn"]]
    for r in done:
        assert r["status"] == "done"
        for c in COLUMNS:
            if c != "error" and c not in ("auc_difference_vs_best", "delong_p_vs_best", "paired_p_vs_best"):
                assert r[c] != "", f"{r['model']} has no {c}"
        assert 0 <= float(r["roc_auc_ci_low"]) <= float(r["roc_auc"]) <= float(r["roc_auc_ci_high"]) <= 1
        assert int(r["tp"]) + int(r["fp"]) + int(r["tn"]) + int(r["fn"]) > 0
        assert float(r["inference_ms_batch1"]) > 0 and float(r["model_file_mb"]) > 0
    assert int(rows["pasa"]["parameters_total"]) < int(rows["cnn"]["parameters_total"])
    best, other = sorted(done, key=lambda r: -float(r["roc_auc"]))
    assert float(best["auc_difference_vs_best"]) == 0 and best["delong_p_vs_best"] == ""
    # The p-value in the table is DeLong's on the two runs' validation predictions.
    preds = {}
    for r in done:
        with open(out / r["model"] / "predictions.csv", newline="") as f:
            val = sorted((x for x in csv.DictReader(f) if x["split"] == "val"), key=lambda x: x["path"])
        preds[r["model"]] = (np.array([x["true"] == "tb" for x in val]), np.array([float(x["prob_tb"]) for x in val]))
    y = preds[best["model"]][0]
    ref = delong_paired(y, preds[best["model"]][1], preds[other["model"]][1])["p_value"]
    assert float(other["delong_p_vs_best"]) == pytest.approx(ref, rel=1e-4)
    assert float(other["paired_p_vs_best"]) == pytest.approx(ref, rel=1e-4)
    md = (out / "comparison.md").read_text()
    assert "Rule: the model with the fewest parameters" in md and "Recommended:" in md and "simulated out of memory" in md
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "pasa/report.html" in html

    # Without --resume an existing comparison is not overwritten.
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    # Resume: finished models are skipped, the failed one is trained again.
    calls.clear()
    fail["on"] = False
    assert main([*args, "--resume"]) == 0
    assert calls == ["mlp"]
    state = json.loads((out / "comparison.json").read_text())
    assert {m: e["status"] for m, e in state["models"].items()} == {"pasa": "done", "cnn": "done", "mlp": "done"}
    # Resuming with other settings is refused.
    assert main([*args[:-1], "4e-3", "--resume"]) == 2
    # A changed image size trains every model again: the finished runs were kept and reported as the new size.
    calls.clear()
    resized = [*args[:args.index("--image-size") + 1], "40", *args[args.index("--image-size") + 2:]]
    assert main([*resized, "--resume"]) == 0
    assert calls == ["pasa", "cnn", "mlp"]
    assert {json.loads((out / m / "meta.json").read_text())["preprocessing"]["image_size"] for m in ("pasa", "cnn", "mlp")} == {40}


def test_compare_and_tune_follow_the_images_native_size(binary_data, tmp_path, monkeypatch, capsys):
    # Without --image-size train uses small images at their own size, but compare and tune trained the 48-px images at 224 px.
    import cxrkit.experiments.tune as tune

    sizes = []

    def record(cfg, **kw):
        sizes.append(cfg.image_size)
        raise RuntimeError("stop here")

    monkeypatch.setattr(cxrkit.training, "train", record)
    assert main(["compare", str(binary_data), "--models", "mlp,pasa", "--out", str(tmp_path / "cmp")]) == 1
    assert sizes == [48, 48] and "the images are 48 px" in capsys.readouterr().err
    seen = []

    def study(data, base, *args, **kwargs):
        seen.append(base.image_size)
        raise ValueError("stop here")

    monkeypatch.setattr(tune, "tune", study)
    assert main(["tune", str(binary_data), "--out", str(tmp_path / "tune")]) == 2
    assert seen == [48]


def test_runs_trained_on_other_data_are_not_paired(tiny_run, tmp_path):
    # A comparison resumed after images were replaced under the same names: same validation paths and labels, so the
    # DeLong test paired predictions on different images without a word. The dataset fingerprints tell them apart.
    import shutil

    from cxrkit.experiments.compare import STATE_FILE, summarise

    out = tmp_path / "cmp"
    for name in ("a", "b"):
        shutil.copytree(tiny_run, out / name, ignore=shutil.ignore_patterns("checkpoint", "plots", "report.html", "*.onnx"))
    row = {"status": "done", "roc_auc": 0.6, "sensitivity": 0.5, "specificity": 0.5, "parameters_total": 10, "inference_ms_batch1": 1.0}
    state = {"split": "val", "data": "d", "order": ["a", "b"], "models": {m: {**row, "run": m} for m in ("a", "b")}}
    (out / STATE_FILE).write_text(json.dumps(state))
    meta = json.loads((out / "b" / "meta.json").read_text())
    meta["data"]["fingerprint"] = "0123456789abcdef"
    (out / "b" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="b was trained on other data than a .*the comparison is not paired"):
        summarise(out)


def test_compare_never_replaces_runs_it_did_not_start(tiny_run, binary_data, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cxrkit.training, "train", lambda cfg, **kw: calls.append(cfg.model))
    # --out is a training run: its report.html was replaced by the comparison's and model runs were put inside it.
    assert main(["compare", str(binary_data), "--models", "pasa,mlp", "--out", str(tiny_run), *FAST]) == 2
    assert "is a training run; give the comparison a folder of its own" in capsys.readouterr().err and calls == []
    # A run of the user's under a model's name was replaced (a 15-epoch run by a 1-epoch one) without a word.
    out = tmp_path / "cmp"
    (out / "pasa").mkdir(parents=True)
    (out / "pasa" / "model.safetensors").write_bytes(b"weights")
    assert main(["compare", str(binary_data), "--models", "pasa,mlp", "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert "already holds pasa, which this comparison would replace" in err and calls == []
    assert (out / "pasa" / "model.safetensors").read_bytes() == b"weights"
    assert main(["compare", str(binary_data), "--models", "pasa,mlp", "--out", str(out), *FAST, "--resume"]) == 2  # not its own either
    assert calls == []


def test_a_model_without_an_auc_is_shown_as_a_dash(tmp_path):
    # A multi-label split with no finding seen on 5 images with it and 5 without has no mean AUC: the table's
    # f"{None:.3f}" was a TypeError, after every model had trained.
    from cxrkit.experiments.compare import _markdown
    from cxrkit.report.comparison import write_comparison_report

    row = {"model": "cnn", "status": "done", "roc_auc": None, "roc_auc_ci_low": None, "roc_auc_ci_high": None, "parameters_total": 1000,
           "model_file_mb": 0.1, "epochs_run": 1, "train_minutes": 0.1, "seconds_per_epoch": 2.0, "inference_ms_batch1": 1.0,
           "inference_ms_per_image_batch32": 0.5, "image_size": 32, "run": "runs/cnn", "parameters_trainable": 1000, "pretrained": "none",
           "best_epoch": 1, "tp": 0, "fp": 0, "tn": 0, "fn": 0}
    summary = {"split": "val", "data": "DATA", "rows": [row], "rule": "r", "notes": [], "recommendation": None}
    assert "| cnn | — (—–—) |" in _markdown(summary)
    html = write_comparison_report(tmp_path, summary).read_text()
    assert "<td class=\"num\">—</td>" in html and "cnn" in html


def test_paired_tests_count_patients_when_the_run_names_them(tiny_run, tmp_path):
    # Two films of one patient were two independent cases in compare's DeLong test, which made its p-values too small.
    import csv
    import shutil

    from cxrkit.experiments.compare import STATE_FILE, summarise
    from cxrkit.metrics.intervals import delong_paired

    out = tmp_path / "cmp"
    for name in ("a", "b"):
        shutil.copytree(tiny_run, out / name, ignore=shutil.ignore_patterns("checkpoint", "plots", "report.html", "*.onnx"))
    rows = list(csv.DictReader(open(out / "b" / "predictions.csv")))
    cols = list(rows[0])
    prob = [c for c in cols if c.startswith("prob_")]
    val = [r["path"] for r in rows if r["split"] == "val"]
    patient = {p: f"pt{i // 2}" for i, p in enumerate(val)}  # two validation films per patient
    noise = np.random.default_rng(0).normal(0, 0.3, len(val))
    for r in rows:  # model b: a's scores plus a quirk of each patient's, the same on both films
        p1 = min(1.0, max(0.0, float(r[prob[1]]) + (noise[int(patient[r["path"]][2:])] if r["path"] in patient else 0)))
        r[prob[0]], r[prob[1]] = str(1 - p1), str(p1)
    with open(out / "b" / "predictions.csv", "w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows(rows)
    row = {"status": "done", "roc_auc": 0.6, "roc_auc_ci_low": 0.5, "roc_auc_ci_high": 0.7, "sensitivity": 0.5, "specificity": 0.5,
           "parameters_total": 10, "inference_ms_batch1": 1.0, "model_file_mb": 0.1, "epochs_run": 1, "train_minutes": 0.1,
           "seconds_per_epoch": 2.0, "inference_ms_per_image_batch32": 0.5, "image_size": 32, "parameters_trainable": 10,
           "pretrained": "none", "best_epoch": 1, "tp": 0, "fp": 0, "tn": 0, "fn": 0}
    state = {"split": "val", "data": "d", "order": ["a", "b"], "models": {m: {**row, "run": m} for m in ("a", "b")}}
    (out / STATE_FILE).write_text(json.dumps(state))
    plain = summarise(out)
    assert not any("patients" in n for n in plain["notes"])  # splits.csv names no patient: images are the cases

    for name in ("a", "b"):
        split_rows = list(csv.DictReader(open(out / name / "splits.csv")))
        with open(out / name / "splits.csv", "w", newline="") as f:
            w = csv.DictWriter(f, [*split_rows[0], "patient"] if "patient" not in split_rows[0] else list(split_rows[0]))
            w.writeheader()
            w.writerows({**r, "patient": patient.get(r["path"], "")} for r in split_rows)
    s = summarise(out)
    assert f"the {len(val)} images come from {len(set(patient.values()))} patients" in " ".join(s["notes"])
    from cxrkit.record import split_predictions

    _, y, pa = split_predictions(out / "a", "val", ["healthy", "tb"] if "prob_tb" in cols else [c[5:] for c in prob], False)
    _, _, pb = split_predictions(out / "b", "val", ["healthy", "tb"] if "prob_tb" in cols else [c[5:] for c in prob], False)
    clusters = np.array([int(patient[p][2:]) for p in val])
    got = {r["model"]: r for r in s["rows"]}
    loser = "b" if s["best"] == "a" else "a"
    first, second = (pa, pb) if s["best"] == "a" else (pb, pa)
    assert got[loser]["delong_p_vs_best"] == pytest.approx(delong_paired(y, first[:, 1], second[:, 1], clusters)["p_value"])
    assert got[loser]["delong_p_vs_best"] != pytest.approx({r["model"]: r for r in plain["rows"]}[loser]["delong_p_vs_best"])


def test_averaged_aucs_are_compared_by_a_paired_bootstrap():
    # Multi-class and multi-label comparisons had no test at all: the recommendation rode on a 0.02 margin alone.
    from cxrkit.experiments.compare import _averaged_auc
    from cxrkit.metrics.intervals import paired_bootstrap_difference

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    good = rng.dirichlet(np.ones(3), 300) * 0.4
    good[np.arange(300), y] += 0.6
    noise = rng.dirichlet(np.ones(3), 300)
    macro = _averaged_auc("multiclass", y, {})
    far = paired_bootstrap_difference(lambda r: macro(r, good) - macro(r, noise), 300, n_resamples=500)
    same = paired_bootstrap_difference(lambda r: macro(r, good) - macro(r, good), 300, n_resamples=500)
    assert far["difference"] > 0.3 and far["p_value"] <= 0.01 and far["ci"][0] > 0.2
    assert same["difference"] == 0 and same["p_value"] == 1.0
    close = good * 0.9 + noise * 0.1
    plain = paired_bootstrap_difference(lambda r: macro(r, good) - macro(r, close), 300, n_resamples=500)
    tripled = paired_bootstrap_difference(lambda r: macro(r % 300, good) - macro(r % 300, close), 900, n_resamples=500,
                                          clusters=np.tile(np.arange(300), 3))  # each case three times: patients of three images
    assert tripled["ci"][1] - tripled["ci"][0] == pytest.approx(plain["ci"][1] - plain["ci"][0], rel=0.25)
    yml = (rng.random((300, 2)) < 0.3).astype(int)
    mean = _averaged_auc("multilabel", yml, {"classes": ["a", "b"], "findings_in_mean_auc": ["b"]})
    scores = np.clip(yml * 0.5 + rng.random((300, 2)) * 0.5, 0, 1)
    from cxrkit.metrics.classification import rank_auc

    assert mean(np.arange(300), scores) == pytest.approx(rank_auc(yml[:, 1], scores[:, 1]))  # over the best run's findings only
    assert _averaged_auc("multilabel", yml, {"classes": ["a", "b"], "findings_in_mean_auc": []}) is None
