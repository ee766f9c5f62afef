"""``cxrkit explain``: heat-map overlays for image files, one PNG per image and class."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cxrkit.data.decode import ImageDecodeError
from cxrkit.explain.cam import heatmaps
from cxrkit.explain.overlay import overlay_png
from cxrkit.record import atomic_write_csv
from cxrkit.run import Run

INDEX_FILE = "explained.csv"  # one row per image: its overlays, decision and probabilities, or why it could not be read


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def explain_files(run: Run, paths: list[Path], out: str | Path, method: str = "auto", batch_size: int = 16,
                  progress: bool = False) -> list[dict]:
    """Write ``<out>/<image stem>_<class>.png`` overlays for every class of the run, and ``<out>/explained.csv`` listing
    them; returns one row per image
    with its probabilities, decision, written files and ``no_heat`` (the classes whose map is zero everywhere), or the decode
    error. ``progress`` shows a bar per image
    (occlusion makes about 260 forward passes per image, so a folder can take minutes)."""
    out = Path(out)
    if out.exists() and not out.is_dir():  # was "afile: File exists" from mkdir
        raise FileExistsError(f"--out {out} is a file; give a folder for the overlays")
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    stems: dict[str, int] = {}
    with tqdm(total=len(paths), desc=f"explaining ({method})", unit="img", disable=not progress or None) as bar:
        for start in range(0, len(paths), batch_size):
            rows += _explain_batch(run, paths[start : start + batch_size], out, method, stems)
            bar.update(len(paths[start : start + batch_size]))
    # Which overlay belongs to which file (two sub-folders' x.png become x_... and x-2_...), and every file that could not
    # be read: the command's skipped line names two of them.
    prob_cols = [f"prob_{c}" for c in run.classes]
    atomic_write_csv(out / INDEX_FILE, [{**{k: r.get(k, "") for k in ("path", "prediction", *prob_cols, "error")},
                                         "overlays": ";".join(Path(f).name for f in r["files"]),
                                         "no_heat": ";".join(r.get("no_heat") or [])} for r in rows],
                     ["path", "prediction", *prob_cols, "overlays", "no_heat", "error"])
    return rows


def _explain_batch(run: Run, paths: list[Path], out: Path, method: str, stems: dict[str, int]) -> list[dict]:
    """Overlays for one batch of files; ``stems`` counts the file names written so far (same name in two sub-folders)."""
    rows: list[dict] = []
    batch, kept = [], []
    for p in paths:
        try:
            batch.append(run.preprocessing.load(p))
            kept.append(p)
        except ImageDecodeError as exc:
            rows.append({"path": str(p), "error": str(exc), "files": []})
    if not batch:
        return rows
    images = np.stack(batch)
    probs = run.predict_arrays(images)  # as predict and serve: one view against a threshold chosen on the run's views flipped 2 of 80
    decisions = run.decide(probs)
    maps = {c: heatmaps(run, images, class_index=c, method=method) for c in range(len(run.classes))}
    for j, p in enumerate(kept):
        stem = _safe(p.stem)
        stems[stem] = stems.get(stem, 0) + 1
        if stems[stem] > 1:  # same file name in two sub-folders
            stem = f"{stem}-{stems[stem]}"
        files, no_heat = [], []
        for c, name in enumerate(run.classes):
            f = out / f"{stem}_{_safe(name)}.png"
            f.write_bytes(overlay_png(images[j], maps[c][j]))
            files.append(str(f))
            if not np.any(maps[c][j] > 0):  # the overlay is the image alone: nothing in it raised that class's score
                no_heat.append(name)
        rows.append({"path": str(p), "prediction": run.classes[decisions[j]], "files": files, "error": "", "no_heat": no_heat,
                     **{f"prob_{c}": float(probs[j, i]) for i, c in enumerate(run.classes)}})
    return rows
