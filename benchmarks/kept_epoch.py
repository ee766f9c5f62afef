"""The kept (best-validation) epoch against the last epoch of the same finished run, on the same images.

Training does not depend on which epoch is kept, so a run's final checkpoint (``checkpoint/tensors.safetensors``:
the last epoch's weights, averaged when the run averages them) scores the last epoch exactly, without training
again. For each ``RUN:EXTERNAL`` pair this prints the ROC-AUC of both (with the run's test-time views: five, or ten
for a flip-trained run since round 7) on EXTERNAL (every image) and on the run's own test split, with the paired
DeLong test, and appends the record (with the last epoch's probabilities) to ``--out`` as JSON lines. BENCHMARKS.md,
round 6.

    python benchmarks/kept_epoch.py --out kept.jsonl runs/a:../shared/data/other_site runs/b:…
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from cxrkit.metrics.intervals import delong_paired
from cxrkit.run import Run, load_run_dataset


def last_epoch_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The network's weights after the final epoch, from the run's checkpoint (the averaged copy when there is one)."""
    tensors = load_file(str(run_dir / "checkpoint" / "tensors.safetensors"))
    prefix = "ema.module." if any(k.startswith("ema.module.") for k in tensors) else "model."
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def score(run_dir: Path, external: Path) -> dict:
    """Test-time-view probabilities and paired AUCs, kept vs last epoch, on EXTERNAL and on the run's test split."""
    meta = json.loads((run_dir / "meta.json").read_text())["training"]
    run = Run.load(run_dir)
    ext, _ = load_run_dataset(run, external, progress=False)
    own, _ = load_run_dataset(run, progress=False)
    sets = {"external": (ext, ext.index("all")), "test": (own, own.index("test"))}
    kept = {k: run.predict_arrays(np.asarray(ds.images[i]), tta=True, calibrated=False)[:, 1] for k, (ds, i) in sets.items()}
    if meta["best_epoch"] != meta["epochs_run"]:
        run.model.load_state_dict(last_epoch_weights(run_dir), strict=True)
        last = {k: run.predict_arrays(np.asarray(ds.images[i]), tta=True, calibrated=False)[:, 1] for k, (ds, i) in sets.items()}
    else:
        last = kept
    record = {"run": str(run_dir), "kept_epoch": meta["best_epoch"], "epochs_run": meta["epochs_run"]}
    for k, (ds, i) in sets.items():
        y = ds.labels[i]
        d = delong_paired(y, last[k], kept[k])
        record[k] = {"auc_last": d["auc_a"], "auc_kept": d["auc_b"], "difference": d["difference"], "p_value": d["p_value"],
                     "n": int(len(y)), "paths": list(np.array(ds.relpaths)[i]), "y": y.tolist(), "p_last": last[k].tolist()}
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pairs", nargs="+", metavar="RUN:EXTERNAL", help="a finished run folder and another site's dataset")
    ap.add_argument("--out", type=Path, required=True, help="JSON lines to append to; runs already in it are skipped")
    a = ap.parse_args()
    torch.set_num_threads(1)
    done = {json.loads(line)["run"] for line in a.out.read_text().splitlines()} if a.out.exists() else set()
    for pair in a.pairs:
        run_dir, _, external = pair.partition(":")
        if not external:
            ap.error(f"{pair}: expected RUN:EXTERNAL")
        if run_dir in done:
            continue
        r = score(Path(run_dir), Path(external))
        print(f"{run_dir}: kept epoch {r['kept_epoch']} of {r['epochs_run']}; " + "; ".join(
            f"{k} {r[k]['auc_kept']:.3f} -> last {r[k]['auc_last']:.3f} ({r[k]['difference']:+.3f}, p {r[k]['p_value']:.2g})"
            for k in ("external", "test")), flush=True)
        with a.out.open("a") as f:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
