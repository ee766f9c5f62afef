"""External validation on TB: train at one site, evaluate at another, for each intensity normalisation.

    python benchmarks/external_tb.py [--shared PATH] [--out runs/external_tb] [--modes none,zscore,...] [--no-sites]
                                     [--augment mild,robust] [--seeds 0,1,2] [--conditions none:mild,clahe:mild]

Directions: Shenzhen+Montgomery (tb_shenzhen_montgomery_128) -> Sakha-TB (tb_sakha_datacamp_224, all
images) and the reverse. For each `--intensity` option: internal test AUC (the run's own 15% test
split) vs external AUC on every image of the other dataset, sensitivity and specificity at the
internal (validation-chosen) threshold, and whether the shift check fired. Then the site effect:
Shenzhen-only vs Montgomery-only (file prefixes CHNCXR / MCUCXR), each evaluated on the other.
Model `cnn` at 128 px, 20 epochs at most, patience 6, seed 0.

With several seeds, intensity modes or augmentation presets, a paired table follows: for each seed
(same split, same initialisation) each condition's external AUC minus the baseline's (the first mode
with the first preset), with DeLong's paired test on the same external images, and the mean
difference over seeds. Augmentation presets: `mild` (the train default before issue 12) and `robust` (the default since) (stronger
brightness/contrast plus gamma, blur and noise, meant to cover another site's processing).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

import numpy as np

from cxrkit.config import TrainConfig
from cxrkit.data.augment import AugmentConfig
from cxrkit.evaluation.evaluate import evaluate_run
from cxrkit.metrics.intervals import delong_paired
from cxrkit.training import train

GROUP = r"((?:CHN|MCU)CXR_\d+)"
# The presets as this benchmark measured them (round 1), written out so that later preset changes do not alter it.
AUGMENT = {"mild": AugmentConfig(), "robust": AugmentConfig(brightness=0.2, contrast=0.3, gamma=0.4, blur=1.0, noise=0.03)}


def _fig(m: dict) -> dict:
    mm = m["metrics"]
    return {"auc": mm["roc_auc"]["value"], "auc_ci": mm["roc_auc"]["ci"], "sens": mm["sensitivity"]["value"],
            "spec": mm["specificity"]["value"], "shift": bool(m.get("shift") and m["shift"]["warning"]), "n": m["n"]}


def external_scores(out: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(paths, labels, P(positive)) of the external split, sorted by path, from the run's predictions.csv."""
    meta = json.loads((out / "meta.json").read_text())
    pos = meta["positive_class"]
    with open(out / "predictions.csv", newline="") as f:
        rows = sorted((r for r in csv.DictReader(f) if r["split"].startswith("external")), key=lambda r: r["path"])
    return [r["path"] for r in rows], np.array([r["true"] == pos for r in rows]), np.array([float(r[f"prob_{pos}"]) for r in rows])


def run_pair(train_data: Path, other: Path, out: Path, intensity: str, group: str | None, seed: int = 0,
             augment: str = "mild") -> dict:
    if not (out / "done.json").is_file():  # finished runs are reused, so an interrupted benchmark resumes
        cfg = TrainConfig(data=str(train_data), out=str(out), model="cnn", image_size=128, epochs=20, patience=6, seed=seed,
                          intensity=intensity, group_pattern=group, augment=AUGMENT[augment])
        train(cfg, progress=False, overwrite=True)
        internal = _fig(evaluate_run(out, split="test", progress=False, write_report=False))
        external = _fig(evaluate_run(out, other, progress=False))
        (out / "done.json").write_text(json.dumps({"internal": internal, "external": external}))
    return json.loads((out / "done.json").read_text())


def paired_table(out: Path, runs: dict[tuple, Path], seeds: list[int], conditions: list[tuple[str, str]]) -> str:
    """Markdown: each condition's external AUC minus the baseline's, per seed with DeLong's paired p, and the mean."""
    lines = ["| direction | intensity + augmentation | " + " | ".join(f"seed {s}: diff (p)" for s in seeds) + " | mean diff | wins |",
             "|" + "---|" * (len(seeds) + 4)]
    base = conditions[0]
    for direction in ("SM -> Sakha", "Sakha -> SM"):
        for cond in conditions[1:]:
            cells, diffs = [], []
            for s in seeds:
                pa, ya, a = external_scores(runs[(direction, *cond, s)])
                pb, yb, b = external_scores(runs[(direction, *base, s)])
                assert pa == pb and (ya == yb).all(), "external images differ between runs"
                d = delong_paired(ya, a, b)
                diffs.append(d["difference"])
                cells.append(f"{d['difference']:+.3f} ({d['p_value']:.2g})")
            lines.append(f"| {direction} | {' + '.join(cond)} vs {' + '.join(base)} | " + " | ".join(cells)
                         + f" | {np.mean(diffs):+.3f} | {sum(x > 0 for x in diffs)}/{len(diffs)} |")
    return "\n".join(lines)


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
    ap.add_argument("--augment", default="mild", help="comma-separated presets: " + ", ".join(AUGMENT))
    ap.add_argument("--seeds", default="0", help="comma-separated seeds (split and initialisation)")
    ap.add_argument("--conditions", default=None, metavar="MODE:PRESET,...",
                    help="explicit intensity:augmentation pairs instead of every --modes x --augment pair, e.g. none:mild,clahe:mild,none:robust")
    a = ap.parse_args()
    shared, out = Path(a.shared), Path(a.out)
    sm, sakha = shared / "tb_shenzhen_montgomery_128", shared / "tb_sakha_datacamp_224"
    head = "| run | internal test AUC (95% CI) | external AUC (95% CI) | external - internal | internal sens / spec % | external sens / spec % | shift check fired |"
    print(head + "\n|" + "---|" * 7, flush=True)
    results, runs = {}, {}
    seeds = [int(x) for x in a.seeds.split(",")]
    conditions = ([tuple(c.split(":")) for c in a.conditions.split(",")] if a.conditions
                  else [(m, g) for m in a.modes.split(",") for g in a.augment.split(",")])
    for seed in seeds:
        for mode, aug in conditions:
            for name, tr, ot, grp in (("SM -> Sakha", sm, sakha, GROUP), ("Sakha -> SM", sakha, sm, None)):
                key = f"{name}, {mode}" + (f", {aug}" if aug != "mild" else "") + (f", seed {seed}" if seed else "")
                run_dir = out / (f"{name[:2].lower()}_{mode}" + (f"_{aug}" if aug != "mild" else "") + (f"_s{seed}" if seed else ""))
                results[key] = run_pair(tr, ot, run_dir, mode, grp, seed, aug)
                runs[(name, mode, aug, seed)] = run_dir
                print(line(key, results[key]), flush=True)
    if len(conditions) > 1:
        print("\n" + paired_table(out, runs, seeds, conditions), flush=True)
    if not a.no_sites:
        sz = site_subset(sm, out / "sites" / "shenzhen", "CHNCXR")
        mc = site_subset(sm, out / "sites" / "montgomery", "MCUCXR")
        for name, tr, ot in (("Shenzhen -> Montgomery", sz, mc), ("Montgomery -> Shenzhen", mc, sz)):
            results[name] = run_pair(tr, ot, out / name.split()[0].lower(), "none", GROUP)
            print(line(name, results[name]), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
