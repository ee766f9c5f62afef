"""A candidate run against a baseline run of the same seed and split: paired DeLong on the same images.

For each ``BASE:CANDIDATE`` pair, both runs score every image of EXTERNAL and the run's own test split (which must
be the same images: same data and split seed, checked). The candidate predicts as it would for a user (its own
test-time views). A baseline saved before ``tta_flips`` existed is scored as the round-7 default: its last-epoch
weights (from the final checkpoint when another epoch was kept) and the five views plus their mirror images. One
JSON line per pair is appended to ``--out``; pairs already there are skipped. BENCHMARKS.md, round 8.

    OMP_NUM_THREADS=1 python benchmarks/paired_runs.py --out pairs.jsonl --external ../shared/data/other_site \\
        runs/default_s0:runs/candidate_s0 …
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from cxrkit.metrics.intervals import delong_paired
from cxrkit.run import Run, load_run_dataset


def scores(run_dir: Path, external: Path, baseline: bool) -> dict[str, tuple[np.ndarray, np.ndarray, list[str]]]:
    """Labels, P(positive) and image names on EXTERNAL and on the run's test split."""
    from kept_epoch import last_epoch_weights

    run = Run.load(run_dir)
    meta = json.loads((run_dir / "meta.json").read_text())
    legacy = baseline and "tta_flips" not in meta
    training = meta["training"]
    if legacy and training["best_epoch"] != training["epochs_run"] and training.get("keep") != "last":
        run.model.load_state_dict(last_epoch_weights(run_dir), strict=True)
    ext, _ = load_run_dataset(run, external, progress=False)
    own, _ = load_run_dataset(run, progress=False)
    out = {}
    for name, ds, idx in (("external", ext, ext.index("all")), ("test", own, own.index("test"))):
        x = np.asarray(ds.images[idx])
        p = run.predict_arrays(x, tta=True, calibrated=False)[:, 1]
        if legacy:  # the round-7 default's ten views: five and their mirror images
            p = (p + run.predict_arrays(np.ascontiguousarray(x[..., ::-1]), tta=True, calibrated=False)[:, 1]) / 2
        out[name] = (ds.labels[idx], p, [ds.relpaths[j] for j in idx])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--external", type=Path, required=True, help="the other site's folder (every image is scored)")
    ap.add_argument("pairs", nargs="+", metavar="BASE:CANDIDATE")
    a = ap.parse_args()
    torch.set_num_threads(1)
    done = {json.loads(line)["candidate"] for line in a.out.open()} if a.out.exists() else set()
    for pair in a.pairs:
        base, cand = (Path(p) for p in pair.split(":"))
        if str(cand) in done:
            continue
        b, c = scores(base, a.external, True), scores(cand, a.external, False)
        record = {"base": str(base), "candidate": str(cand)}
        for name in ("external", "test"):
            (yb, pb, nb), (yc, pc, nc) = b[name], c[name]
            if nb != nc or not np.array_equal(yb, yc):
                raise SystemExit(f"{base} and {cand} scored different {name} images: not the same data and split seed")
            d = delong_paired(yc, pc, pb)
            record[name] = {"base": d["auc_b"], "candidate": d["auc_a"], "difference": d["difference"], "p": d["p_value"]}
        print(json.dumps(record), flush=True)
        with a.out.open("a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
