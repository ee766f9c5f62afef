"""``cxrkit evaluate --readers READS.csv``: a binary run against human readers who read the same images. The table has
a column naming each image and one column per reader holding that reader's call; the figures are those of
:mod:`cxrkit.metrics.readers` on the images each reader read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrkit.data.tables import CLASS_COLUMNS, FINDINGS_COLUMNS, META_COLUMNS, MISSING_VALUES, PATH_COLUMNS, PATIENT_COLUMNS
from cxrkit.evaluation.image_table import match_rows, norm_column, read_image_table
from cxrkit.metrics.readers import compare_with_reader

# Columns of a label table that are not a reader's calls (the labels themselves, the patient, the image's own facts).
# A column naming the truth under another name ("diagnosis") was compared as a reader who is never wrong.
TRUTH_COLUMNS = {"diagnosis", "ground_truth", "truth", "target", "outcome", "reference", "reference_standard", "gold_standard"}
NOT_READERS = {*PATH_COLUMNS, *CLASS_COLUMNS, *FINDINGS_COLUMNS, *PATIENT_COLUMNS, *META_COLUMNS, *TRUTH_COLUMNS, "site"}
POSITIVE_WORDS = {"1", "1.0", "positive", "pos", "yes", "true"}
NEGATIVE_WORDS = {"0", "0.0", "negative", "neg", "no", "false"}


def read_calls(table: str | Path, classes: list[str], relpaths: list[str], columns: list[str] | None = None) -> tuple[dict[str, list[bool | None]], int]:
    """({reader: each image's call, True for ``classes[1]``, None where that reader has no call}, table paths naming no
    evaluated image). ``columns`` names the readers; by default every column that is not a path, label, patient or
    image fact. A call is a class name, 1/0, positive/negative, yes/no or true/false; blank or NA means not read."""
    fields, rows = read_image_table(table, "readers")
    if columns:
        missing = [c for c in columns if norm_column(c) not in fields]
        if missing:
            raise ValueError(f"{table} has no column {', '.join(map(repr, missing))}; its columns: {', '.join(fields.values())}")
        names = [fields[norm_column(c)] for c in columns]
    else:
        names = [name for key, name in fields.items() if key not in NOT_READERS]
        if not names:
            raise ValueError(f"{table} has no reader column (its columns: {', '.join(fields.values())}); add one column per reader holding "
                             f"that reader's call ({classes[0]} or {classes[1]}), or name them with --reader-columns")
    negative, positive = classes[0].strip().lower(), classes[1].strip().lower()
    words = {**{w: False for w in NEGATIVE_WORDS | {negative}}, **{w: True for w in POSITIVE_WORDS | {positive}}}
    matched, unmatched = match_rows(table, fields, rows, names, relpaths)
    calls: dict[str, list[bool | None]] = {}
    for name in names:
        out: list[bool | None] = []
        for rel, r in zip(relpaths, matched):
            text = "" if r is None else (r.get(name) or "").strip()
            if not text or text.lower() in MISSING_VALUES:
                out.append(None)
            elif text.lower() in words:
                out.append(words[text.lower()])
            else:
                raise ValueError(f"{table}, reader {name!r}, image {rel}: {text!r} is not a call; write {classes[0]} or {classes[1]} "
                                 "(or 0/1, negative/positive), or leave it blank where this reader did not read the image")
        if all(c is None for c in out):
            raise ValueError(f"reader {name!r} of {table} has no call on any of the {len(relpaths)} evaluated images; its path column must "
                             "name them by their path under the data folder (e.g. tb/x.png) or by file name")
        calls[name] = out
    return calls, unmatched


def reader_comparison(run, y: np.ndarray, probs: np.ndarray, table: str | Path, calls: dict[str, list[bool | None]], unmatched: int,
                      seed: int = 0, patients: list[str] | None = None) -> dict:
    """The binary run at its threshold against each reader's ``calls`` (from :func:`read_calls` of ``table``) on the images that
    reader read, with notes on what was not matched."""
    n = len(y)
    out: dict = {"table": str(table), "readers": {}, "notes": []}
    for name, per_image in calls.items():
        read = np.array([c is not None for c in per_image])
        reader = np.array([bool(c) for c in per_image])[read]
        res = compare_with_reader(y[read], probs[read, 1], run.threshold, reader, seed=seed,
                                  patients=None if patients is None else [p for p, k in zip(patients, read) if k])
        res["read"] = int(read.sum())
        if read.sum() < n:
            out["notes"].append(f"reader {name} read {read.sum()} of the {n} evaluated images; the comparison uses those")
        if read.sum() >= 20 and np.array_equal(reader, y[read] == 1):
            out["notes"].append(f"reader {name}'s calls equal the labels on all {read.sum()} images: check that the column is a reader's "
                                "reading and not the labels")
        out["readers"][name] = res
    if unmatched:
        out["notes"].append(f"{unmatched} image(s) of {table} are not among the evaluated images")
    return out
