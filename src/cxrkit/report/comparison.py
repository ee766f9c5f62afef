"""Render ``report.html`` for a model comparison folder (self-contained, like a run's report)."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from cxrkit.record import atomic_write_text
from cxrkit.report.html import _img


def write_comparison_report(out: Path, summary: dict) -> Path:
    """Write the comparison's report.html: the table, overlaid ROC curves, confusion matrices, the recommendation."""
    env = Environment(loader=PackageLoader("cxrkit", "report/templates"), autoescape=select_autoescape(["html", "j2"]))
    html = env.get_template("comparison.html.j2").render(
        s=summary, words="validation" if summary["split"] == "val" else "test", roc=_img(out / "plots" / "roc_overlay.png"),
    )
    path = out / "report.html"
    atomic_write_text(path, html)
    return path
