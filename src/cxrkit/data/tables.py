"""Labels from a CSV table: the NIH ChestX-ray14 ``Data_Entry_2017.csv`` format or a generic one.

Column names are matched ignoring case, spaces and underscores, so NIH's ``Image Index``,
``Finding Labels`` and ``Patient ID`` are the generic ``image_index``, ``finding_labels`` and
``patient_id``. A table names each image by ``path`` (relative to the image root) or by file name
(``Image Index``, found anywhere under the root, as in NIH's ``images_001/`` ... folders). Labels are
either one column of ``|``-separated findings ("No Finding" meaning none), one column of class names
(binary or multi-class), or several 0/1 columns (one per finding). NIH's split lists
``train_val_list.txt`` / ``test_list.txt`` beside the table (or under the root) and a ``split`` column
are honoured.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cxrkit.data.decode import is_image_file
from cxrkit.data.sources import NEGATIVE_NAMES, SPLIT_ALIASES, DatasetError, ImageFolderSource, Sample, canonical_name

NIH_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
    "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax",
)
PATH_COLUMNS = ("path", "image_index", "image", "file", "filename")
FINDINGS_COLUMNS = ("finding_labels", "findings", "labels")
CLASS_COLUMNS = ("label", "class")
PATIENT_COLUMNS = ("patient_id", "patient")
NIH_SPLIT_LISTS = {"test_list.txt": "test", "train_val_list.txt": "train"}
# Columns that are never label columns even when they hold only 0 and 1.
META_COLUMNS = {"patient_age", "age", "patient_gender", "sex", "gender", "view_position", "follow_up", "split"}


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "_", name.strip().lower())


@dataclass
class TableSource(ImageFolderSource):
    """Images listed in a CSV table under an image root, with their labels, splits and patient IDs."""

    table: Path | None = None
    label_column: str | None = None
    split_lists: tuple[str, ...] = ()


def _find_by_name(root: Path, names: set[str]) -> dict[str, Path]:
    """Map file names to paths for images anywhere under ``root`` (NIH spreads them over images_0xx/)."""
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if f in names and f not in found:
                found[f] = Path(dirpath) / f
    return found


def _split_lists(table: Path, root: Path) -> tuple[dict[str, str], list[str]]:
    """NIH's ``test_list.txt`` / ``train_val_list.txt``: file name -> split, from beside the table or the root."""
    out: dict[str, str] = {}
    used = []
    for fname, split in NIH_SPLIT_LISTS.items():
        for folder in dict.fromkeys((table.parent, root)):
            p = folder / fname
            if p.is_file():
                for line in p.read_text().split():
                    out.setdefault(line.strip(), split)
                used.append(str(p))
                break
    return out, used


def _choose_label_column(header: dict[str, str], rows: list[dict], label_column: str | None, task: str) -> tuple[str, list[str]]:
    """Return ('findings'|'class', [column]) or ('onehot', [columns])."""
    if label_column is not None:
        col = header.get(_norm(label_column))
        if col is None:
            raise DatasetError(f"--label-column {label_column!r} is not a column of the table; columns are {list(header.values())}")
        if task in ("binary", "multiclass"):
            return "class", [col]
        kind = "findings" if task == "multilabel" or any("|" in r[col] for r in rows) else "class"
        return kind, [col]
    for name in FINDINGS_COLUMNS:
        if name in header:
            return ("class" if task in ("binary", "multiclass") else "findings"), [header[name]]
    for name in CLASS_COLUMNS:
        if name in header:
            return ("findings" if task == "multilabel" else "class"), [header[name]]
    skip = set(PATH_COLUMNS) | set(PATIENT_COLUMNS) | META_COLUMNS
    onehot = [col for key, col in header.items() if key not in skip and rows and all(r[col].strip() in ("0", "1", "0.0", "1.0") for r in rows)]
    if onehot:
        return "onehot", onehot
    raise DatasetError(
        f"cannot tell which column holds the labels; columns are {list(header.values())}. Name it with --label-column, "
        f"or use a column called {' / '.join(FINDINGS_COLUMNS)} ('|'-separated findings), {' / '.join(CLASS_COLUMNS)}, "
        "or one 0/1 column per finding"
    )


def _findings(text: str) -> tuple[str, ...]:
    parts = [p.strip() for p in text.split("|") if p.strip()]
    return tuple(sorted({p for p in parts if canonical_name(p) not in NEGATIVE_NAMES}))


def open_label_table(table: str | Path, root: str | Path | None = None, label_column: str | None = None, task: str = "auto") -> TableSource:
    """Read a label table and check every image it lists exists under ``root`` (default: the table's folder).

    ``task`` ("auto", "binary", "multiclass" or "multilabel") decides how a single label column is read:
    multilabel splits it on ``|``; binary/multi-class take each value as one class name.
    """
    table = Path(table).expanduser()
    if not table.is_file():
        raise DatasetError(f"label table {table} does not exist")
    root = Path(root).expanduser() if root is not None else table.parent
    if root.is_file():
        root = root.parent
    if not root.is_dir():
        raise DatasetError(f"image root {root} is not a folder")
    root = root.resolve()
    with open(table, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        fields = reader.fieldnames or []
    if not rows:
        raise DatasetError(f"{table} has no rows")
    header = {_norm(c): c for c in fields}
    path_col = next((header[c] for c in PATH_COLUMNS if c in header), None)
    if path_col is None:
        raise DatasetError(f"{table} has no image column; expected one of {', '.join(PATH_COLUMNS)} (NIH: 'Image Index'); columns are {fields}")
    kind, label_cols = _choose_label_column(header, rows, label_column, task)
    patient_col = next((header[c] for c in PATIENT_COLUMNS if c in header), None)
    split_col = header.get("split")
    nih = "image_index" in header and "finding_labels" in header

    names = [r[path_col].strip() for r in rows]
    paths = [root / n for n in names]
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        by_name = _find_by_name(root, {Path(names[i]).name for i in missing})
        for i in missing:
            paths[i] = by_name.get(Path(names[i]).name, paths[i])
        missing = [i for i in missing if not paths[i].is_file()]
    if missing:
        shown = ", ".join(names[i] for i in missing[:5])
        raise DatasetError(f"{len(missing)} of {len(rows)} images listed in {table} are not under {root} (e.g. {shown}); "
                           "give the folder that holds them as DATA, or remove their rows")
    outside = [i for i, p in enumerate(paths) if not p.is_relative_to(root)]
    if outside:  # an absolute path elsewhere: the run records paths relative to the root (was pathlib's "is not in the subpath" error)
        raise DatasetError(f"{len(outside)} image path(s) in {table} are outside the image root {root} (e.g. row {outside[0] + 2}: "
                           f"{names[outside[0]]}); give a folder that holds every listed image as DATA with --labels {table.name}, "
                           "or write the paths relative to it")
    not_images = [names[i] for i, p in enumerate(paths) if not is_image_file(p) and p.suffix.lower() != ".dcm"]
    if not_images:
        raise DatasetError(f"{len(not_images)} entries of {table} are not image files (e.g. {not_images[0]})")

    lists, used_lists = _split_lists(table, root)
    samples = []
    seen: set[Path] = set()
    for i, (r, p) in enumerate(zip(rows, paths)):
        if p in seen:
            raise DatasetError(f"{table} lists {names[i]} twice (row {i + 2})")
        seen.add(p)
        split = None
        if split_col and r[split_col].strip():
            raw = r[split_col].strip().lower()
            if raw not in SPLIT_ALIASES:
                raise DatasetError(f"row {i + 2} of {table}: split {r[split_col]!r} is not one of train, val(id), test")
            split = SPLIT_ALIASES[raw]
        elif p.name in lists:
            split = lists[p.name]
        patient = r[patient_col].strip() if patient_col and r[patient_col].strip() else None
        if kind == "onehot":
            found = tuple(c for c in label_cols if r[c].strip() in ("1", "1.0"))
            samples.append(Sample(p, "|".join(found) or "No Finding", split, found, patient))
        elif kind == "findings":
            found = _findings(r[label_cols[0]])
            if nih:
                unknown = [f for f in found if f not in NIH_FINDINGS]
                if unknown:
                    raise DatasetError(f"row {i + 2} of {table}: unknown finding(s) {unknown}; NIH findings are {', '.join(NIH_FINDINGS)} and No Finding")
            samples.append(Sample(p, "|".join(found) or "No Finding", split, found, patient))
        else:
            value = r[label_cols[0]].strip()
            if not value:
                raise DatasetError(f"row {i + 2} of {table} has an empty label in column {label_cols[0]!r}")
            if "|" in value:
                raise DatasetError(f"row {i + 2} of {table} has several labels ({value!r}); use --task multilabel")
            samples.append(Sample(p, value, split, None, patient))
    if kind == "onehot":
        classes = list(label_cols)
    elif kind == "findings":
        classes = sorted({f for s in samples for f in (s.findings or ())})
    else:
        classes = sorted({s.label for s in samples})
    if len(classes) < (1 if kind != "class" else 2):
        raise DatasetError(f"{table}: found {len(classes)} label(s) ({classes}); need at least {1 if kind != 'class' else 2}")
    return TableSource(
        root=root, samples=samples, classes=classes, layout="nih table" if nih else "table", table=table.resolve(),
        label_column=label_cols[0] if len(label_cols) == 1 else None, split_lists=tuple(used_lists),
    )
