"""Which subgroup each evaluated image belongs to, for ``cxrkit evaluate --by``: a label-table column (sex, age,
view position, any column of a CSV) or a regular-expression group on the file name; then the per-group figures
of :mod:`cxrkit.metrics.subgroups`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from cxrkit.evaluation.image_table import match_rows, norm_column, read_image_table
from cxrkit.metrics.subgroups import AGE_BANDS, bin_numeric, binary_subgroups, multilabel_subgroups


def read_table_column(table: Path, column: str, relpaths: list[str]) -> list[str | None]:
    """The ``column`` value of each image (matched by its path under the image root, else by file name)."""
    fields, rows = read_image_table(table, "subgroup")
    key = fields.get(norm_column(column))
    if key is None:
        raise ValueError(f"{table} has no column {column!r}; its columns: {', '.join(fields.values())}")
    matched, _ = match_rows(table, fields, rows, [key], relpaths)
    return [((r.get(key) or "").strip() or None) if r is not None else None for r in matched]


def pattern_groups(spec: str, relpaths: list[str]) -> tuple[str, list[str | None]]:
    """``NAME=REGEX`` -> (NAME, the first capture group, or the whole match, of REGEX in each path; None if none)."""
    name, sep, pattern = spec.partition("=")
    if not sep or not name.strip() or not pattern:
        raise ValueError(f"--by-pattern {spec!r}: write NAME=REGEX, e.g. 'site=^(CHNCXR|MCUCXR)'")
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"--by-pattern {spec!r}: not a valid regular expression ({exc})") from None
    out = []
    for rel in relpaths:
        m = rx.search(rel)
        out.append(None if m is None else (m.group(1) if m.groups() and m.group(1) is not None else m.group(0)))
    return name.strip(), out


def binned(column: str, values: list[str | None], bands: tuple[float, ...] | None = None) -> tuple[list[str | None], str | None]:
    """Numeric columns become stated bands (age: 0-17, 18-39, 40-59, 60+; others at their tertiles); returns the
    values and a note saying how they were binned (None when the column is categorical)."""
    present = [v for v in values if v is not None]
    numeric = bool(present) and all(re.fullmatch(r"\s*-?\d+(\.\d+)?\s*[Yy]?\s*", v) for v in present)
    if not numeric or len(set(present)) <= 6:
        return values, None
    if bands is None:
        if "age" in norm_column(column).split("_"):
            bands = AGE_BANDS
        else:
            x = np.array([float(v.strip().rstrip("Yy")) for v in present])
            bands = tuple(sorted({float(np.round(q, 1)) for q in np.quantile(x, [1 / 3, 2 / 3])}))
    return bin_numeric(values, bands), f"binned at {', '.join(f'{b:g}' for b in bands)}"


def subgroup_analysis(run, y: np.ndarray, probs: np.ndarray, relpaths: list[str], by: list[str], table: Path | None,
                      patterns: list[str], seed: int = 0, sites: list[str] | None = None, patients: list[str] | None = None) -> dict:
    """{column: per-group figures and tests} for every ``--by`` column and ``--by-pattern``; ``--by site`` uses each
    image's site in a run trained on several sources (``sites``) when no table column of that name is asked for."""
    if run.task == "multiclass":
        raise ValueError("subgroup analysis covers binary and multi-label runs (multi-class decisions have no single threshold to compare)")
    columns: list[tuple[str, list[str | None], str | None]] = []
    for col in by:
        if norm_column(col) == "site" and sites is not None and table is None:
            columns.append(("site", list(sites), None))
            continue
        if table is None:
            raise ValueError(f"--by {col} needs a label table: the run was not trained from one; pass --by-table FILE.csv")
        values, note = binned(col, read_table_column(table, col, relpaths))
        columns.append((col, values, note))
    for spec in patterns:
        name, values = pattern_groups(spec, relpaths)
        columns.append((name, values, None))
    out = {}
    for name, values, note in columns:
        if all(v is None for v in values):
            raise ValueError(f"no evaluated image has a value for {name!r}; check the column or pattern")
        if run.task == "binary":
            res = binary_subgroups(y, probs[:, 1], values, run.threshold, name, seed=seed, patients=patients)
        else:
            res = multilabel_subgroups(y, probs, run.classes, run.thresholds, values, name, seed=seed, patients=patients)
        res["binning"] = note
        out[name] = res
    return out
