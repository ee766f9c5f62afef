"""A CSV with one row per image (subgroup columns for ``--by-table``, readers' calls for ``--readers``), matched to the
evaluated images by their path under the image root, else by a file name that only one row has."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from cxrkit.data.tables import PATH_COLUMNS


def norm_column(name: str) -> str:
    """Column names compare without case, spaces, underscores or hyphens ("Patient Age" = "patient_age")."""
    return re.sub(r"[\s_\-]+", "_", name.strip().lower())


def read_image_table(table: str | Path, purpose: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """({normalised column name: column name}, rows) of ``table``; a table that cannot be read, or names no image, is a ValueError."""
    try:
        with open(table, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = {norm_column(c): c for c in reader.fieldnames or [] if c is not None}
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"cannot read the {purpose} table {table}: {exc}") from None
    if not any(c in fields for c in PATH_COLUMNS):
        raise ValueError(f"the {purpose} table {table} needs a column naming each image ({', '.join(PATH_COLUMNS)}) to match its rows to the images; "
                         f"its columns: {', '.join(fields.values()) or 'none'}")
    return fields, rows


def _key(text: str) -> str:
    return text.strip().replace("\\", "/").removeprefix("./")


def match_rows(table: str | Path, fields: dict[str, str], rows: list[dict[str, str]], columns: list[str],
               relpaths: list[str]) -> tuple[list[dict[str, str] | None], int]:
    """The row of each image (None when no row names it) and how many of the table's paths name no image. A path listed twice with
    different values in ``columns`` is a ValueError; a file name that two paths share matches by full path only."""
    path_cols = [fields[c] for c in PATH_COLUMNS if c in fields]
    by_path: dict[str, dict[str, str]] = {}
    by_name: dict[str, dict[int, dict[str, str]]] = {}  # file name -> the distinct rows whose paths end in it
    for r in rows:
        for name in {_key(r.get(c) or "") for c in path_cols} - {""}:
            seen = by_path.get(name)
            if seen is not None and any((seen.get(c) or "").strip() != (r.get(c) or "").strip() for c in columns):
                shown = ", ".join(f"{c}: {(seen.get(c) or '').strip()!r} and {(r.get(c) or '').strip()!r}" for c in columns
                                  if (seen.get(c) or "").strip() != (r.get(c) or "").strip())
                raise ValueError(f"{table} lists {name} twice with different values ({shown}); keep one row per image")
            kept = by_path.setdefault(name, r)
            by_name.setdefault(Path(name).name, {})[id(kept)] = kept
    out: list[dict[str, str] | None] = []
    for rel in relpaths:
        r = by_path.get(_key(rel))
        if r is None:
            found = by_name.get(Path(rel).name, {})
            r = next(iter(found.values())) if len(found) == 1 else None  # two images of that name: which one this is is unknown
        out.append(r)
    distinct = {id(r) for r in by_path.values()}
    return out, len(distinct - {id(r) for r in out if r is not None})
