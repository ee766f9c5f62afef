"""What `--intensity auto` decides on each shared dataset: the exposure probe as `cxrkit train` runs it.

For each dataset the images are decoded as training decodes them (default split, seed 0, no intensity
normalisation) and :func:`cxrkit.audit.exposure.choose_intensity` is run on the training and validation
images: the largest cross-validated AUC of brightness and contrast alone (over all images, each site of a
several-site run, each class against the rest) and the mode it picks. The leave-one-site-out training sets are
the ones `benchmarks/sites.py` trains on (two sites as a sources file), plus all three sites together. The
planted rows are the synthetic sites of tests/test_robust_default.py (one class 0.18 brighter at one site)
and the same two sites without the offset.

    python benchmarks/exposure_probe.py [--shared ../shared/data] [--out runs/exposure_probe] [--sizes 128,224]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sites import SITES, site_folders  # noqa: E402

from cxrkit.audit.exposure import choose_intensity  # noqa: E402
from cxrkit.data.dataset import load_dataset  # noqa: E402
from cxrkit.data.multisite import write_sources_file  # noqa: E402
from cxrkit.data.synthetic import make_synthetic_site  # noqa: E402


def datasets(shared: Path, out: Path) -> dict[str, Path]:
    """Name -> data argument of `cxrkit train`, for every dataset found."""
    found: dict[str, Path] = {}
    if (shared / "tb_shenzhen_montgomery_128").is_dir() and (shared / "tb_sakha_datacamp_224").is_dir():
        folders = site_folders(shared, out / "sites")
        for held in SITES:
            rest = [folders[s] for s in SITES if s != held]
            found[f"TB sites without {held}"] = write_sources_file(rest, out / f"without_{held}.sources.yaml")
        found["TB, all three sites"] = write_sources_file([folders[s] for s in SITES], out / "all_sites.sources.yaml")
    for name in ("tb_shenzhen_montgomery_128", "tb_sakha_datacamp_224", "kermany_pneumonia_224", "covid19_3class_640"):
        if (shared / name).is_dir():
            found[name] = shared / name
    if (shared / "pneumoniamnist_28_balanced.npz").is_file():
        found["pneumoniamnist_28_balanced"] = shared / "pneumoniamnist_28_balanced.npz"
    for name, bright in (("planted (test_robust_default)", 0.18), ("same sites, nothing planted", 0.0)):
        a = make_synthetic_site(out / name / "alpha", n_per_class=48, size=64, seed=21, exposure=(0.0, bright), signal=0.8)
        b = make_synthetic_site(out / name / "beta", n_per_class=48, size=64, seed=22, exposure=(0.05, 0.05), signal=0.8)
        found[name] = write_sources_file([a, b], out / f"{name.split()[0]}.sources.yaml")
    return found


def main() -> None:
    """Print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path("runs/exposure_probe"))
    ap.add_argument("--sizes", default="128,224", help="decode sizes, one column each (training's default: 224, or the images' own size when smaller)")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    sizes = [int(x) for x in a.sizes.split(",")]
    print("| data | images (train+val) | " + " | ".join(f"largest AUC at {z} px: where, auto picks" for z in sizes) + " | seconds |")
    print("|---|---|" + "---|" * len(sizes) + "---|")
    for name, data in datasets(a.shared, a.out).items():
        t0 = time.perf_counter()
        cells, n = [], 0
        for size in sizes:
            size = 64 if "planted" in name or "nothing planted" in name else 28 if name.startswith("pneumoniamnist") else size
            ds = load_dataset(data, size, cache_dir=a.out / "cache", progress=False)
            if ds.multilabel:
                break
            index = np.concatenate([ds.index("train"), ds.index("val")])
            mode, r = choose_intensity(ds.images, ds.labels, ds.class_names, index, ds.sites, np.asarray(ds.cache.ok))
            where = "none checked" if r["auc"] is None else f"{r['class']}" + (f" at {r['site']}" if r["site"] else ", all images")
            cells.append(("—" if r["auc"] is None else f"{r['auc']:.3f}") + f": {where}, **{mode}**")
            n = len(index)
        if cells:
            print(f"| {name} | {n} | {' | '.join(cells)} | {time.perf_counter() - t0:.0f} |", flush=True)

if __name__ == "__main__":
    main()
