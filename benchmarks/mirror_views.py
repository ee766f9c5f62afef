"""Five test-time views against the five and their mirror images (ten), for models trained with flips.

For each ``RUN:EXTERNAL`` pair: the run's last-epoch weights (from its final checkpoint when another epoch was
kept, as in ``kept_epoch.py``), ROC-AUC with both view sets on EXTERNAL (every image) and on the run's own test
split, the paired DeLong test, and the milliseconds per image of each. Appends one JSON line per run to ``--out``
and skips runs already there. BENCHMARKS.md, round 7.

    OMP_NUM_THREADS=1 python benchmarks/mirror_views.py --out mirror.jsonl runs/a:../shared/data/other_site …
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from cxrkit.metrics.intervals import delong_paired
from cxrkit.run import Run, load_run_dataset


def score(run_dir: Path, external: Path) -> dict:
    """Five- and ten-view AUCs (paired) on EXTERNAL and on the run's test split."""
    from kept_epoch import last_epoch_weights

    run = Run.load(run_dir)
    training = json.loads((run_dir / "meta.json").read_text())["training"]
    if training.get("best_epoch") != training.get("epochs_run") and training.get("keep") != "last":
        run.model.load_state_dict(last_epoch_weights(run_dir), strict=True)
    ext, _ = load_run_dataset(run, external, progress=False)
    own, _ = load_run_dataset(run, progress=False)
    rec: dict = {"run": str(run_dir), "external_data": str(external)}
    for name, ds, idx in (("external", ext, ext.index("all")), ("test", own, own.index("test"))):
        x, y = np.asarray(ds.images[idx]), ds.labels[idx]
        probs, ms = {}, {}
        for flips in (False, True):
            run.record.tta_flips = flips  # in memory only: the run folder is not written
            t0 = time.perf_counter()
            probs[flips] = run.predict_arrays(x, tta=True, calibrated=False)[:, 1]
            ms[flips] = 1000 * (time.perf_counter() - t0) / len(idx)
        d = delong_paired(y, probs[True], probs[False])
        rec[name] = {"n": len(idx), "five": d["auc_b"], "ten": d["auc_a"], "difference": d["difference"], "p_value": d["p_value"],
                     "ms_per_image_five": ms[False], "ms_per_image_ten": ms[True]}
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", nargs="+", metavar="RUN:EXTERNAL")
    ap.add_argument("--out", required=True, type=Path, help="JSON lines, one per run (appended; finished runs are skipped)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    done = {json.loads(line)["run"] for line in a.out.open()} if a.out.exists() else set()
    for pair in a.pairs:
        run_dir, _, external = pair.partition(":")
        if run_dir in done:
            continue
        rec = score(Path(run_dir), Path(external))
        with a.out.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        e, t = rec["external"], rec["test"]
        print(f"{run_dir}: external {e['five']:.3f} -> {e['ten']:.3f} ({e['difference']:+.3f}, p {e['p_value']:.2g}); "
              f"test {t['five']:.3f} -> {t['ten']:.3f} ({t['difference']:+.3f}, p {t['p_value']:.2g}); "
              f"{e['ms_per_image_five']:.0f} -> {e['ms_per_image_ten']:.0f} ms/image", flush=True)


if __name__ == "__main__":
    main()
