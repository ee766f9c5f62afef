"""Figures of the report: what they show must stay readable as the inputs grow."""

from __future__ import annotations

import numpy as np

from cxrkit.report import plots


def _roc_figure(monkeypatch, tmp_path, n_readers):
    kept = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: kept.setdefault("fig", fig) and path)
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(30), np.zeros(30)]
    readers = {f"Radiologist {i}": (float(rng.random() * 0.4), float(0.5 + rng.random() * 0.5)) for i in range(n_readers)}
    plots.plot_roc(y, rng.normal(y, 1.0), (0.2, 0.8), 0.75, "ROC", tmp_path / "roc.png", readers)
    return kept["fig"]


def test_roc_with_many_readers_keeps_the_legend_off_the_curve_and_every_reader_distinct(monkeypatch, tmp_path):
    fig = _roc_figure(monkeypatch, tmp_path, 12)
    ax = fig.axes[0]
    fig.canvas.draw()
    legend, frame = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= frame.x1  # beside the axes, not over the curve and the readers' points
    looks = [(ln.get_marker(), ln.get_color(), ln.get_markerfacecolor()) for ln in ax.lines if ln.get_label().startswith("reader ")]
    assert len(looks) == 12 and len(set(looks)) == 12
    assert ax.get_xlabel().startswith("1 \u2212 specificity")


def test_roc_with_few_readers_keeps_its_legend_inside(monkeypatch, tmp_path):
    fig = _roc_figure(monkeypatch, tmp_path, 2)
    ax = fig.axes[0]
    fig.canvas.draw()
    assert ax.get_legend().get_window_extent().x1 <= ax.get_window_extent().x1


def test_a_class_name_in_another_script_prints_no_glyph_warnings(tmp_path):
    import warnings

    rng = np.random.default_rng(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plots.plot_roc(np.r_[np.ones(10), np.zeros(10)], rng.random(20), None, 0.5, "结核 tuberculose", tmp_path / "roc.png")
    assert not [w for w in caught if "Glyph" in str(w.message)] and (tmp_path / "roc.png").stat().st_size > 0
