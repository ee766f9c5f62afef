"""Write an audit: ``audit.json``, its figures and a self-contained ``audit.html``."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from cxrkit.audit.messages import audit_messages
from cxrkit.record import atomic_write_text


def _png(fig: plt.Figure) -> str:
    import io

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def audit_figures(audit: dict) -> dict[str, str]:
    """Base64 PNGs: class balance per split, per-class property histograms and the probe's feature AUCs."""
    figs = {}
    classes = audit["classes"]
    splits = list(audit["class_balance"])
    fig, ax = plt.subplots(figsize=(5, 3))
    x = np.arange(len(splits))
    w = 0.8 / len(classes)
    for i, c in enumerate(classes):
        ax.bar(x + i * w, [audit["class_balance"][s].get(c, 0) for s in splits], w, label=c)
    ax.set_xticks(x + 0.4 - w / 2, splits), ax.set_ylabel("images"), ax.set_title("class balance per split", fontsize=10), ax.legend(fontsize=8)
    figs["balance"] = _png(fig)
    per = audit.get("_per_file")
    if per:
        recs, labels = per["records"], per["labels"]
        props = [("width", "width (px)"), ("aspect", "aspect ratio (w/h)"), ("mean", "mean intensity"), ("std", "intensity std")]
        fig, axes = plt.subplots(1, 4, figsize=(13, 2.8))
        for ax, (key, title) in zip(axes, props):
            for i, c in enumerate(classes):
                v = [(r["width"] / r["height"] if key == "aspect" else r[key]) for r, lab in zip(recs, labels) if lab == c and not r["error"]]
                if v:
                    ax.hist(v, bins=30, alpha=0.5, color=f"C{i}", label=c, density=True)
            ax.set_title(title, fontsize=10)
        axes[0].legend(fontsize=7)
        figs["properties"] = _png(fig)
    feats = audit["shortcut_probe"].get("features", [])[:10]
    if feats:
        fig, ax = plt.subplots(figsize=(6.5, 0.3 * len(feats) + 1))
        ax.barh([f["feature"] for f in feats][::-1], [f["auc"] for f in feats][::-1], color=["C3" if f["auc"] > 0.75 else "C0" for f in feats][::-1])
        ax.axvline(0.5, color="grey", ls=":"), ax.axvline(0.75, color="C3", ls="--", lw=1)
        ax.set_xlim(0.4, 1), ax.set_xlabel("AUC of the feature alone"), ax.tick_params(labelsize=8)
        ax.set_title(f"shortcut probe: non-anatomical features (all together: AUC {audit['shortcut_probe']['auc']:.2f})", fontsize=10)
        figs["probe"] = _png(fig)
    return figs


def save_audit(audit: dict, out: str | Path, html: bool = True) -> Path:
    """Write ``audit.json`` (and ``audit.html``) into ``out``; returns the JSON path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    public = {k: v for k, v in audit.items() if not k.startswith("_")}
    public["messages"] = audit_messages(audit)
    atomic_write_text(out / "audit.json", json.dumps(public, indent=2, default=float))
    if html:
        from jinja2 import Environment, PackageLoader, select_autoescape

        env = Environment(loader=PackageLoader("cxrkit", "report/templates"), autoescape=select_autoescape(["html", "j2"]))
        page = env.get_template("audit.html.j2").render(audit=public, figs=audit_figures(audit), standalone=True)
        atomic_write_text(out / "audit.html", page)
    return out / "audit.json"
