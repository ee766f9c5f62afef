"""The report reads like a document: contents that link, background folded away, words rather than metrics.json keys."""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest

RAW_KEYS = re.compile(r"\b(roc_auc|pr_auc|ppv|npv|balanced_accuracy|macro_f1|mean_roc_auc|macro_roc_auc|detection_rate_\w+)\b|false alarm\(s\)")


class _Page(HTMLParser):
    """Collects ids, in-page links, visible text outside <code>/<pre>, and which splits sit inside a closed <details>."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.text: list[str] = []
        self.stack: list[tuple[str, dict]] = []
        self.closed_details_sections: set[str] = set()
        self.section: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "section":
            self.section = a.get("id")
        if tag == "a" and a.get("href", "").startswith("#"):
            self.links.append(a["href"][1:])
        if tag == "details" and "open" not in a and self.section:
            self.closed_details_sections.add(self.section)
        if tag not in ("br", "img", "meta", "input"):
            self.stack.append((tag, a))

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        if not any(t in ("code", "pre", "style", "title", "script") for t, _ in self.stack):
            self.text.append(data)


@pytest.fixture(scope="module")
def evaluated_run(tiny_run, binary_data, tmp_path_factory):
    from cxrkit.api import evaluate

    run = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(tiny_run, run)
    evaluate(run, binary_data, split="test")
    return run


def test_contents_resolve_validation_and_config_fold_and_no_raw_keys(evaluated_run):
    html = (evaluated_run / "report.html").read_text()
    page = _Page()
    page.feed(html)
    assert 'aria-label="Contents"' in html
    assert {"summary", "results-test", "results-val", "data", "reproducibility"} <= set(page.links)
    assert set(page.links) <= page.ids, f"contents links without a target: {set(page.links) - page.ids}"
    # the validation figures are folded away once a test evaluation exists; the test figures are not
    assert "results-val" in page.closed_details_sections
    assert "results-test" not in page.closed_details_sections
    assert "reproducibility" in page.closed_details_sections  # the config dump
    text = " ".join(page.text)
    leaks = sorted({m.group(0) for m in RAW_KEYS.finditer(text)}) + re.findall(r"\w+\(s\)", text)
    assert not leaks, f"raw metric keys in the report's visible text: {leaks}"
    assert "positive predictive value (ppv)" in text.lower() and "area under the roc curve (auc)" in text.lower()


def test_plural_words_not_parenthesised():
    from cxrkit.report.narrative import binary_sentences, plural

    assert plural(1, "false alarm") == "1 false alarm" and plural(3, "false alarm") == "3 false alarms" and plural(0, "file") == "0 files"
    e = {"value": 0.5, "ci": [0.1, 0.9], "numerator": 1, "denominator": 2}
    m = {"classes": ["healthy", "tb"], "confusion": {"tp": 1, "fn": 1, "tn": 4, "fp": 1}, "n_positive": 2, "n_negative": 5,
         "metrics": {k: e for k in ("sensitivity", "specificity", "ppv", "npv", "roc_auc")}}
    text = " ".join(binary_sentences(m, "test"))
    assert "raised 1 false alarm:" in text and "(s)" not in text


def test_reliability_marks_small_bins(tmp_path, monkeypatch):
    """Bins under the minimum count are drawn hollow grey and left out of the joined line; every bin's count is written."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    from cxrkit.metrics.calibration import reliability_bins
    from cxrkit.report import plots

    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(0, 0.1, 200), rng.uniform(0.9, 1.0, 200), [0.45, 0.55, 0.5]])
    y = (rng.uniform(size=p.size) < p).astype(int)
    bins = reliability_bins(y, np.stack([1 - p, p], 1))
    drawn = {}
    real_save = plots._save

    def keep(fig, path):
        ax = fig.axes[0]
        drawn["lines"] = [(ln.get_xdata(), to_hex(ln.get_markerfacecolor())) for ln in ax.get_lines()]
        drawn["texts"] = [t.get_text() for t in ax.texts]
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    plots.plot_reliability([("model", bins, 0.05)], "test", tmp_path / "r.png")
    plt.close("all")
    counts = [c for c in bins["count"] if c]
    assert sorted(drawn["texts"]) == sorted(str(c) for c in counts)
    joined = next(x for x, fc in drawn["lines"] if len(x) == sum(c >= plots.MIN_BIN_COUNT for c in counts))
    hollow = next(x for x, fc in drawn["lines"] if fc == "#ffffff" and len(x))
    assert len(joined) == 2 and len(hollow) == sum(0 < c < plots.MIN_BIN_COUNT for c in bins["count"]) >= 1
    assert (tmp_path / "r.png").stat().st_size > 5_000


def test_heat_maps_use_a_perceptually_uniform_map():
    from cxrkit.explain.overlay import DEFAULT_CMAP
    from cxrkit.report.plots import HEAT_CMAP, SEQUENTIAL_CMAP

    uniform = {"viridis", "magma", "cividis", "inferno", "plasma"}
    assert {DEFAULT_CMAP, HEAT_CMAP, SEQUENTIAL_CMAP} <= uniform


def test_dataset_names_and_metric_text():
    from cxrkit.report.narrative import dataset_name, metric_text

    assert dataset_name("runs/demo/data") == "demo"
    assert dataset_name("/work/shared/data/covid19_3class_640/") == "covid19_3class_640"
    assert dataset_name("x/pneumoniamnist_28_balanced.npz") == "pneumoniamnist_28_balanced"
    assert dataset_name("/data/images/train") == "train" and dataset_name(None) is None  # nothing better: the folder itself
    assert metric_text("ppv", {"value": 0.8, "ci": [0.5, 0.95]}) == "80.0% (95% CI 50.0–95.0%)"
    assert metric_text("roc_auc", {"value": 0.91234, "ci": [0.8, 0.97]}) == "0.912 (95% CI 0.800–0.970)"
    assert metric_text("npv", {"value": None}) == "n/a"


def test_model_card_speaks_words_and_percentages(tiny_run):
    from cxrkit.run import Run
    from cxrkit.serve.model_card import model_card

    card = model_card(Run.load(tiny_run, engine="torch"))
    val = card["metrics"]["val"]
    assert val["split_name"] == "validation"
    assert val["ppv"]["name"] == "positive predictive value (PPV)" and val["ppv"]["text"].endswith("%)")
    assert 0 <= val["ppv"]["value"] <= 1  # programs still get fractions
    assert card["training_data"]["dataset"] == "tb0"  # the binary_data fixture's folder, not "data"


def test_the_data_paragraph_names_the_layout_the_table_and_the_zip(evaluated_run, tmp_path):
    import json

    from cxrkit.report.html import render_report

    html = render_report(evaluated_run)
    assert "(layout <code>&lt;root&gt;/&lt;split&gt;/&lt;class&gt;/</code>), classes taken from folder names" in html  # "<root>/split>/<class>/"
    # The repeat command was refused as printed: its config's out is the run itself, which already holds a run.
    repeat = re.search(r"<code>(cxrkit train [^<]*)</code> repeats the run", html).group(1)
    config_path, out = repeat.split(" --config ")[1].split(" --out ")
    assert out == config_path.removesuffix("/config.yaml") + "-repeat"
    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    meta = json.loads((run / "meta.json").read_text())
    # A run trained from a label table was described as folders: "<root>/table>/", "classes taken from folder names".
    meta["data"].update(layout="table", table="/data/labels.csv", label_column="finding", given_splits=[])
    (run / "meta.json").write_text(json.dumps(meta))
    html = render_report(run)
    assert "labels from column <code>finding</code> of the table <code>/data/labels.csv</code>" in html
    assert "folder names" not in html and "the table gives no split, so" in html and "no test folder" not in html
    meta["data"].update(layout="class", given="/data/xrays.zip", table=None, label_column=None)
    (run / "meta.json").write_text(json.dumps(meta))
    html = render_report(run)  # the zip the user named, not the cache folder it was extracted to
    assert "Images from <code>/data/xrays.zip</code> (extracted to <code>" in html


def test_the_report_does_not_claim_averaging_or_an_epoch_choice_that_did_not_happen(evaluated_run, tmp_path):
    import json

    from cxrkit.report.html import render_report

    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    meta = json.loads((run / "meta.json").read_text())
    meta["training"].update(keep="last", weight_average={"epochs": 0.3, "decay": 0.0})
    (run / "meta.json").write_text(json.dumps(meta))
    html = render_report(run)
    # "an exponential moving average ... (decay 0.0000 per step), not the last step's weights": decay 0 is the last step's
    assert "so the saved weights are the last step's" in html and "decay 0.0000" not in html
    assert "chose the best epoch" not in html and "split chose the decision threshold, so its figures are optimistic" in html
    meta["training"].update(keep="best", weight_average={"epochs": 2, "decay": 0.9}, best_epoch=meta["training"].get("best_epoch", 1))
    (run / "meta.json").write_text(json.dumps(meta))
    html = render_report(run)
    assert "over about 2 epochs (decay 0.9000 per step), not the last step's weights" in html
    assert "split chose the kept epoch and the decision threshold" in html


def test_the_attention_sentence_says_how_many_maps_were_blank(evaluated_run, tmp_path):
    import json

    from cxrkit.report.html import render_report

    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    metrics = json.loads((run / "metrics.json").read_text())
    att = metrics["test"].get("attention")
    if not att or att.get("error"):
        pytest.skip("no heat maps in this evaluation")
    metrics["test"]["attention"] = {**att, "no_heat": 3}
    (run / "metrics.json").write_text(json.dumps(metrics))
    said = f"3 of them show no heat at all (nothing in the image raised the score), so the shares below are of the other {att['n'] - 3}"
    assert said in render_report(run)


def test_suggested_commands_name_the_run_by_its_full_path_and_calibrate_only_when_it_can(tiny_run, tmp_path):
    import csv

    import yaml

    from cxrkit.report.html import _data_path, render_report

    run = tmp_path / "work" / "runs" / "tb"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoint", "plots"))
    # config.yaml as `cxrkit train runs/tb/data --out runs/tb` from tmp_path/work wrote it: relative paths
    config = yaml.safe_load((run / "config.yaml").read_text())
    config.update(out="runs/tb", data="runs/tb/data")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert _data_path(config, run) == str(run.resolve() / "data")
    html = render_report(run)
    # "cxrkit evaluate runs/tb" worked only from the folder the training ran in
    assert f"<code>cxrkit evaluate {run.resolve()}</code>" in html and "cxrkit evaluate runs/tb" not in html
    assert f"cxrkit train {run.resolve() / 'data'} --config {run.resolve()}/config.yaml" in html
    assert f"<code>cxrkit calibrate {run.resolve()}</code> fits one on the validation split" in html
    # A validation split the model never gets wrong: calibrate refuses it, so the report does not offer it as it is.
    with open(run / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        if r["split"] == "val":
            p = 0.9 if r["true"] == "tb" else 0.1
            r.update(prob_tb=str(p), prob_healthy=str(1 - p))
    with open(run / "predictions.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    html = render_report(run)
    assert "none can be fitted on its validation split: every positive image has a higher probability than every negative one" in html
    assert f"<code>cxrkit calibrate {run.resolve()}</code> fits" not in html
