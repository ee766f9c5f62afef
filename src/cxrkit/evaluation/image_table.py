"""A CSV with one row per image (subgroup columns for ``--by-table``, readers' calls for ``--readers``), matched to the
evaluated images by their path under the image root, else by a file name that only one row has."""

from __future__ import annotations

import csv
import re
from collections import Counter
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
            header = [c for c in reader.fieldnames or [] if c is not None]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"cannot read the {purpose} table {table}: {exc}") from None
    fields: dict[str, str] = {}
    for c in header:  # a repeated name kept only its last column: one reader's calls were silently dropped
        if norm_column(c) in fields:
            same = "twice" if c == fields[norm_column(c)] else f"as {fields[norm_column(c)]!r} and {c!r}"
            raise ValueError(f"the {purpose} table {table} names a column {same} (names are compared without case, spaces, "
                             "underscores or hyphens); give each column its own name")
        fields[norm_column(c)] = c
    for i, r in enumerate(rows, start=2):
        if any((v or "").strip() for v in r.get(None) or []):  # values past the last column belong to no column
            raise ValueError(f"the {purpose} table {table}, line {i}, has more values than the header has columns ({len(header)}); "
                             "a comma inside a value needs quotes")
    if not any(c in fields for c in PATH_COLUMNS):
        raise ValueError(f"the {purpose} table {table} needs a column naming each image ({', '.join(PATH_COLUMNS)}) to match its rows to the images; "
                         f"its columns: {', '.join(fields.values()) or 'none'}")
    return fields, rows


def _key(text: str) -> str:
    return text.strip().replace("\\", "/").removeprefix("./")


def _refuse_conflicting_spellings(table: str | Path, key: str, by_path: dict[str, dict[str, str]], columns: list[str]) -> None:
    """Refuse rows that name one image by different spellings of its path (test/tb/a.png, tb/a.png, a.png) with different values."""
    parts = key.split("/")
    rows = [(k, by_path[k]) for k in ("/".join(parts[i:]) for i in range(len(parts))) if k in by_path]
    for k, r in rows[1:]:
        first_key, first = rows[0]
        differ = [c for c in columns if (first.get(c) or "").strip() != (r.get(c) or "").strip()]
        if differ:
            shown = ", ".join(f"{c}: {(first.get(c) or '').strip()!r} and {(r.get(c) or '').strip()!r}" for c in differ)
            raise ValueError(f"{table} lists {key} as {first_key} and as {k} with different values ({shown}); keep one row per image")


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
    names = Counter(Path(_key(rel)).name for rel in relpaths)
    out: list[dict[str, str] | None] = []
    for rel in relpaths:
        key = _key(rel)
        _refuse_conflicting_spellings(table, key, by_path, columns)
        r = by_path.get(key)
        if r is None and names[Path(key).name] == 1:  # tb/0001.png and healthy/0001.png: a row naming 0001.png is neither's
            found = by_name.get(Path(key).name, {})
            r = next(iter(found.values())) if len(found) == 1 else None  # two rows of that name: which one this is is unknown
        out.append(r)
    distinct = {id(r) for r in by_path.values()}
    return out, len(distinct - {id(r) for r in out if r is not None})
