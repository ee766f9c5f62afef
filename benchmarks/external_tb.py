"""External validation on TB: train at one site, evaluate at another, for each intensity normalisation.

    python benchmarks/external_tb.py [--shared PATH] [--out runs/external_tb] [--modes none,zscore,...] [--no-sites]

Directions: Shenzhen+Montgomery (tb_shenzhen_montgomery_128) -> Sakha-TB (tb_sakha_datacamp_224, all
images) and the reverse. For each `--intensity` option: internal test AUC (the run's own 15% test
split) vs external AUC on every image of the other dataset, sensitivity and specificity at the
internal (validation-chosen) threshold, and whether the shift check fired. Then the site effect:
Shenzhen-only vs Montgomery-only (file prefixes CHNCXR / MCUCXR), each evaluated on the other.
Model `cnn` at 128 px, 20 epochs at most, patience 6, seed 0.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from cxrkit.config import TrainConfig
from cxrkit.evaluation.evaluate import evaluate_run
from cxrkit.training import train

GROUP = r"((?:CHN|MCU)CXR_\d+)"


def _fig(m: dict) -> dict:
    mm = m["metrics"]
    return {"auc": mm["roc_auc"]["value"], "auc_ci": mm["roc_auc"]["ci"], "sens": mm["sensitivity"]["value"],
            "spec": mm["specificity"]["value"], "shift": bool(m.get("shift") and m["shift"]["warning"]), "n": m["n"]}


def run_pair(train_data: Path, other: Path, out: Path, intensity: str, group: str | None) -> dict:
    cfg = TrainConfig(data=str(train_data), out=str(out), model="cnn", image_size=128, epochs=20, patience=6, seed=0,
                      intensity=intensity, group_pattern=group)
    train(cfg, progress=False, overwrite=True)
    internal = _fig(evaluate_run(out, split="test", progress=False, write_report=False))
    external = _fig(evaluate_run(out, other, progress=False))
    return {"internal": internal, "external": external}


def site_subset(src: Path, dst: Path, prefix: str) -> Path:
    for cls in ("normal", "tb"):
        (dst / cls).mkdir(parents=True, exist_ok=True)
        for p in (src / "train" / cls).iterdir():
            link = dst / cls / p.name
            if prefix in p.name and not link.exists():
                os.symlink(p.resolve(), link)
    return dst


def line(name: str, r: dict) -> str:
    i, e = r["internal"], r["external"]
    return (f"| {name} | {i['auc']:.3f} ({i['auc_ci'][0]:.3f}-{i['auc_ci'][1]:.3f}) | {e['auc']:.3f} ({e['auc_ci'][0]:.3f}-{e['auc_ci'][1]:.3f}) "
            f"| {e['auc'] - i['auc']:+.3f} | {100 * i['sens']:.1f} / {100 * i['spec']:.1f} | {100 * e['sens']:.1f} / {100 * e['spec']:.1f} "
            f"| {'yes' if e['shift'] else 'no'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared/data"))
    ap.add_argument("--out", default="runs/external_tb")
    ap.add_argument("--modes", default="none,zscore,percentile,histeq,clahe")
    ap.add_argument("--no-sites", action="store_true")
    a = ap.parse_args()
    shared, out = Path(a.shared), Path(a.out)
    sm, sakha = shared / "tb_shenzhen_montgomery_128", shared / "tb_sakha_datacamp_224"
    head = "| run | internal test AUC (95% CI) | external AUC (95% CI) | external - internal | internal sens / spec % | external sens / spec % | shift check fired |"
    print(head + "\n|" + "---|" * 7, flush=True)
    results = {}
    for mode in a.modes.split(","):
        for name, tr, ot, grp in (("SM -> Sakha", sm, sakha, GROUP), ("Sakha -> SM", sakha, sm, None)):
            key = f"{name}, {mode}"
            results[key] = run_pair(tr, ot, out / f"{name[:2].lower()}_{mode}", mode, grp)
            print(line(key, results[key]), flush=True)
    if not a.no_sites:
        sz = site_subset(sm, out / "sites" / "shenzhen", "CHNCXR")
        mc = site_subset(sm, out / "sites" / "montgomery", "MCUCXR")
        for name, tr, ot in (("Shenzhen -> Montgomery", sz, mc), ("Montgomery -> Shenzhen", mc, sz)):
            results[name] = run_pair(tr, ot, out / name.split()[0].lower(), "none", GROUP)
            print(line(name, results[name]), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
