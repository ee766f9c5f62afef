"""Classify many files into one CSV that survives interruption: checkpointed atomically, resumed by path.

The CSV has one row per image: ``path``, ``prob_<class>`` for every class, ``prediction`` (the
run's decision, :meth:`cxrkit.run.Run.decide`), ``error`` (why a file could not be decoded), ``ood_warning`` /
``ood_findings`` (the image lies outside the training images' range, and why) and ``model``
(:attr:`cxrkit.run.Run.model_id`: the weights, threshold and calibration that made the row).
Every ``checkpoint_seconds`` the whole CSV is rewritten through a temporary file and a rename, so a
killed job leaves the last complete checkpoint, never half a row. Run again with the same ``out``
and files that already have a result are skipped; files that failed are tried again.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cxrkit.prediction.results import ood_findings
from cxrkit.record import atomic_write_csv
from cxrkit.run import Run


def csv_fields(run: Run) -> list[str]:
    """The CSV columns for a run's classes."""
    return ["path", *[f"prob_{c}" for c in run.classes], "prediction", "error", "ood_warning", "ood_findings", "model"]


def read_finished(out: Path, fields: list[str], model_id: str | None = None) -> dict[str, dict]:
    """Rows of an earlier (possibly interrupted) output, by path; a ValueError when it was written for another model."""
    if out.exists() and not out.is_file():
        raise ValueError(f"--out {out} is a directory; give a CSV file name")
    if not out.is_file():
        return {}
    try:
        with open(out, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames != fields:
                raise ValueError(f"{out} exists with other columns ({', '.join(reader.fieldnames or [])}), "
                                 "so it was written for another model; give another --out or delete it")
            rows = {r["path"]: r for r in reader}
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{out} exists and is not a prediction CSV ({exc}); give another --out or delete it") from None
    others = sorted({r["model"] for r in rows.values()} - {model_id}) if model_id else []
    if others:
        raise ValueError(f"{out} holds predictions of another model ({others[0]}; this run is {model_id}): "
                         "resuming would mix two models' results; give another --out or delete it")
    return rows


def result_row(run: Run, path: Path, probs: np.ndarray | None, decision: str | None, error: str = "", ood: list[str] | None = None,
               checked: bool = True) -> dict:
    """One CSV row: probabilities, the decision as text (:meth:`Run.decision_labels`) and the out-of-distribution findings, or empty cells and the error.

    ``ood_warning`` of a predicted image is ``yes``, ``no``, or ``unchecked`` (``checked=False``: the run has no shift reference);
    empty for a file that could not be read."""
    row = {"path": str(path)}
    # Unrounded (shortest exact text): at 6 decimals a probability within 5e-7 of the threshold read as the other side of the decision beside it.
    row.update({f"prob_{c}": "" if probs is None else repr(float(probs[j])) for j, c in enumerate(run.classes)})
    row["prediction"] = decision or ""
    row["error"] = error
    # "no" for an image checked and in range: a blank cell read as "not checked" beside JSON's false
    row["ood_warning"] = "" if probs is None else "yes" if ood else "no" if checked else "unchecked"
    row["ood_findings"] = "; ".join(ood or [])
    row["model"] = run.model_id
    return row


def predict_to_csv(
    run: Run, paths: list[Path], out: str | Path, batch_size: int = 32, workers: int = 4, progress: bool = True,
    checkpoint_seconds: float = 30.0, on_batch: Callable[[np.ndarray], None] | None = None,
) -> dict:
    """Classify ``paths`` into ``out`` (resuming an earlier run of the same command); returns counts.

    Returns ``{"total", "skipped" (already done), "predicted", "errors", "ood" (flagged out of distribution), "seconds",
    "unreadable"}``; ``unreadable`` lists (path, reason) of the files that could not be decoded (their rows carry the reason).
    """
    from cxrkit.data.sources import check_utf8

    out = Path(out)
    for p in paths:  # the CSV could not record such a name: it failed at the end, after every prediction, with the codec's message
        check_utf8(p, "predict --out: ")
    fields = csv_fields(run)
    earlier = read_finished(out, fields, run.model_id)
    rows = {k: r for k, r in earlier.items() if not r["error"]}
    todo = [p for p in paths if str(p) not in rows]
    order = [str(p) for p in paths] + [k for k in earlier if k not in {str(p) for p in paths}]

    def save() -> None:
        atomic_write_csv(out, [rows[k] for k in order if k in rows], fields)

    # Written once before any work: a folder that does not exist (or cannot be written) failed at the first checkpoint,
    # after its 30 s of predictions (all of a smaller job's) were done and thrown away.
    save()
    t0 = last = time.perf_counter()
    n_errors = 0
    reference = run.shift_reference()
    with tqdm(total=len(todo), desc="predicting", unit="img", disable=not progress or None) as bar:
        for where, probs, images, errors in run.iter_predict(todo, batch_size, workers):
            decisions = run.decision_labels(probs) if len(where) else []
            for k, (j, found) in enumerate(zip(where, ood_findings(reference, images))):
                rows[str(todo[j])] = result_row(run, todo[j], probs[k], decisions[k], ood=found, checked=reference is not None)
            for j, err in errors.items():
                rows[str(todo[j])] = result_row(run, todo[j], None, None, err)
            n_errors += len(errors)
            if on_batch is not None and len(images):
                on_batch(images)
            bar.update(len(where) + len(errors))
            if time.perf_counter() - last >= checkpoint_seconds:
                save()
                last = time.perf_counter()
    save()
    return {"total": len(paths), "skipped": len(paths) - len(todo), "predicted": len(todo) - n_errors, "errors": n_errors,
            "ood": sum(1 for p in paths if rows.get(str(p), {}).get("ood_warning") == "yes"), "seconds": time.perf_counter() - t0,
            "unreadable": [(str(p), rows[str(p)]["error"]) for p in todo if rows.get(str(p), {}).get("error")]}
