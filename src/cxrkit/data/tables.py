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
from dataclasses import dataclass, field
from pathlib import Path

from cxrkit.data.decode import is_image_file
from cxrkit.data.sources import NEGATIVE_NAMES, SPLIT_ALIASES, DatasetError, ImageFolderSource, Sample, canonical_name, check_utf8, one_spelling

NIH_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
    "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax",
)
PATH_COLUMNS = ("path", "image_index", "image", "file", "filename")
FINDINGS_COLUMNS = ("finding_labels", "findings", "labels")
CLASS_COLUMNS = ("label", "class")
# Hospital exports name the patient many ways (compared after _norm: lower case, spaces and hyphens as "_"); "PatientID",
# "MRN" or "subject_id" were ignored without a word and the split cut by image.
PATIENT_COLUMNS = ("patient_id", "patient", "patientid", "patient_number", "patient_no", "mrn", "subject_id", "subjectid", "subject",
                   "participant_id", "pid")
# What an anonymised export writes where the patient is not known: one "patient" holding every such image went whole into
# one split (60 ANON images became the entire test set).
PLACEHOLDER_PATIENT_IDS = {"anon", "anonymous", "anonymised", "anonymized", "unknown", "unk", "none", "redacted", "removed", "-", "--",
                           "?", "0", "x", "xx", "xxx"}
NIH_SPLIT_LISTS = {"test_list.txt": "test", "train_val_list.txt": "train"}
_NUMBER = re.compile(r"[+-]?\d+(\.\d*)?")
# What spreadsheets and pandas write for a value that is missing: never a class or a finding.
MISSING_VALUES = {"nan", "na", "n/a", "#n/a", "null"}
_YES_NO = {"yes", "no", "y", "n", "true", "false"}
# Columns that are never label columns even when they hold only 0 and 1.
META_COLUMNS = {"patient_age", "age", "patient_gender", "sex", "gender", "view_position", "follow_up", "split"}


def _zero_one(value: str) -> int | None:
    """0 or 1 for a cell that holds that number in any spelling (0, 1, 1.0, 1.00, +1), else None."""
    v = value.strip()
    return int(float(v)) if _NUMBER.fullmatch(v) and float(v) in (0.0, 1.0) else None


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "_", name.strip().lower())


@dataclass
class TableSource(ImageFolderSource):
    """Images listed in a CSV table under an image root, with their labels, splits and patient IDs."""

    table: Path | None = None
    label_column: str | None = None
    split_lists: tuple[str, ...] = ()
    unlisted_images: list[Path] = field(default_factory=list)  # images under the root that the table does not list
    placeholder_patient_ids: dict[str, int] = field(default_factory=dict)  # "ANON" and the like: read as no ID, counted here
    label_columns: tuple[str, ...] = ()  # the column(s) the labels were read from
    patient_column: str | None = None

    def describe(self) -> str:
        """Which columns the labels and patients were read from, in words: an HIV 0/1 column beside TB became a finding."""
        cols = ", ".join(self.label_columns)
        what = (f"multi-label, findings {', '.join(self.classes)}" if self.multilabel
                else f"{'binary' if len(self.classes) == 2 else 'multi-class'}, classes {', '.join(self.classes)}")
        return (f"labels: {what} (from column{'s' if len(self.label_columns) > 1 else ''} {cols} of {self.table.name if self.table else 'the table'}); "
                + (f"patients from column {self.patient_column}" if self.patient_column else
                   "no patient column (read under patient_id, PatientID, MRN, subject_id and the like)")
                + ("; --label-column names another" if len(self.label_columns) > 1 else ""))


def _unlisted(root: Path, listed: list[Path]) -> list[Path]:
    """Image files under ``root`` (hidden folders aside) that no row names: left out of the task, which said nothing."""
    from cxrkit.data.decode import IMAGE_EXTENSIONS

    named = {os.path.normcase(os.path.realpath(p)) for p in listed}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        if "meta.json" in filenames and "config.yaml" in filenames:  # a cxrkit run kept beside the data: its plots are no images
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                p = os.path.join(dirpath, f)
                if os.path.normcase(os.path.realpath(p)) not in named:
                    out.append(Path(p))
    return out


def _find_by_name(root: Path, names: set[str]) -> dict[str, list[Path]]:
    """Map file names to every path of that name anywhere under ``root`` (NIH spreads them over images_0xx/)."""
    found: dict[str, list[Path]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if f in names:
                found.setdefault(f, []).append(Path(dirpath) / f)
    return found


def _split_lists(table: Path, root: Path) -> tuple[dict[str, str], list[str]]:
    """NIH's ``test_list.txt`` / ``train_val_list.txt``: file name -> split, from beside the table or the root."""
    out: dict[str, str] = {}
    used = []
    for fname, split in NIH_SPLIT_LISTS.items():
        for folder in dict.fromkeys((table.parent, root)):
            p = folder / fname
            if p.is_file():
                try:
                    names = p.read_text(encoding="utf-8").split()
                except UnicodeDecodeError:
                    raise DatasetError(f"{p} is not UTF-8 text; NIH's split lists name one image file per line") from None
                for name in names:
                    if out.setdefault(name, split) != split:  # test_list.txt won without a word
                        raise DatasetError(f"{name} is in both {used[0]} and {p}; an image belongs to one split")
                used.append(str(p))
                break
    return out, used


def _read_table(table: Path) -> tuple[list[str], list[dict[str, str]], list[int]]:
    """The table's column names, its rows as dicts and each row's line number; every defect that would shift, drop or
    misread a value is a one-line error naming the table and the line."""
    rows, lines = [], []
    try:
        with open(table, newline="", encoding="utf-8-sig") as f:
            first = f.readline()
            f.seek(0)
            # A spreadsheet set to a European locale separates with ';' (or exports tabs): one column named 'path;label' said nothing.
            reader = csv.reader(f, delimiter=next((d for d in ";\t" if d in first), ",") if "," not in first else ",")
            fields = next(reader, [])
            if not any(c.strip() for c in fields):
                raise DatasetError(f"{table}: its first line is empty; it must name the columns (e.g. path,label)")
            named = max(j for j, c in enumerate(fields) if c.strip()) + 1  # unnamed columns at the end ("path,label,") may be left out
            start = reader.line_num + 1  # the line a row starts on (a quoted value may span lines)
            for values in reader:
                if not any(v.strip() for v in values):
                    start = reader.line_num + 1
                    continue  # a blank line (or one of empty cells, as spreadsheets leave at the end): no row
                if len(values) < named or any(v.strip() for v in values[len(fields):]):
                    # A row cut short lacks a value (was AttributeError: 'NoneType' ...); a longer one shifted its values or
                    # holds one its header does not name (e.g. a path with an unquoted comma), and its extra values were dropped.
                    raise DatasetError(f"line {start} of {table} has {len(values)} values but its header names {named} "
                                       f"columns ({', '.join(fields[:named])}); quote values holding a comma, and give every row every column")
                rows.append(dict(zip(fields, values + [""] * (len(fields) - len(values)))))
                lines.append(start)
                start = reader.line_num + 1
    except UnicodeDecodeError:
        data = table.read_bytes()  # the decoder's offset counts from its last buffer, not from the file's start
        try:
            data.decode("utf-8")
            at = 0
        except UnicodeDecodeError as exc:
            at = exc.start
        line = data[:at].count(b"\n") + 1
        raise DatasetError(f"{table} is not UTF-8 text (line {line} has the byte 0x{data[at]:02x}); save it as "
                           "'CSV UTF-8' (or give the table, not another file)") from None
    except csv.Error as exc:  # a NUL byte, a field over csv's size limit: was "unexpected Error ... a bug in cxrkit"
        raise DatasetError(f"line {reader.line_num} of {table} cannot be read as CSV: {exc}") from None
    column_at: dict[str, int] = {}
    for j, c in enumerate(fields):
        if c.strip() and column_at.setdefault(_norm(c), j) != j:
            # csv.DictReader kept the last of two same-named columns: labels were read from whichever came last.
            other = fields[column_at[_norm(c)]]
            raise DatasetError(f"{table} has two columns named {other!r}{'' if other == c else f' and {c!r}'}; rename or remove one")
    if not rows:
        raise DatasetError(f"{table} has no rows")
    return fields, rows, lines


def _choose_label_column(header: dict[str, str], rows: list[dict], label_column: str | None, task: str,
                         lines: list[int]) -> tuple[str, list[str]]:
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
            col = header[name]
            # One name per row and no '|' anywhere ("normal", "tb", "pneumonia") is a class column, as --label-column reads it:
            # as findings, "normal" was dropped as no finding and a three-class table trained as two findings.
            single = task == "auto" and name != "finding_labels" and not any("|" in r[col] for r in rows)
            return ("class" if task in ("binary", "multiclass") or single else "findings"), [col]
    for name in CLASS_COLUMNS:
        if name in header:
            return ("findings" if task == "multilabel" else "class"), [header[name]]
    skip = set(PATH_COLUMNS) | set(PATIENT_COLUMNS) | META_COLUMNS
    onehot, yes_no = [], []
    for key, col in header.items():
        if key in skip:
            continue
        values = [r[col].strip().lower() for r in rows]
        bits = [_zero_one(v) for v in values]
        if all(b is not None for b in bits):
            onehot.append(col)
        elif any(b is not None for b in bits) and (
                all(b is not None or v in MISSING_VALUES or v in ("", "-1", "-1.0") for v, b in zip(values, bits))
                or sum(b is not None for b in bits) >= 0.8 * len(bits)):
            # A finding column with a blank, NaN, -1 (CheXpert's "uncertain"), or a stray 2 or 0.5 in it was silently not a
            # label column at all: the finding vanished from the task.
            i = bits.index(None)
            raise DatasetError(f"column {col!r} of the table holds 0/1 labels but line {lines[i]} has {rows[i][col]!r}; write 0 or 1 in "
                               "every row (map blanks and -1 'uncertain' yourself), or remove the column")
        elif values and all(v in _YES_NO for v in values):
            yes_no.append(col)
    if onehot and yes_no:  # read as a finding or dropped, either way a guess about a label column
        raise DatasetError(f"column {yes_no[0]!r} of the table holds yes/no values beside the 0/1 label columns ({', '.join(onehot)}); "
                           "write it as 0/1 if it is a finding, or remove it")
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


def open_label_table(table: str | Path, root: str | Path | None = None, label_column: str | None = None, task: str = "auto",
                     min_classes: int = 2) -> TableSource:
    """Read a label table and check every image it lists exists under ``root`` (default: the table's folder).

    ``task`` ("auto", "binary", "multiclass" or "multilabel") decides how a single label column is read:
    multilabel splits it on ``|``; binary/multi-class take each value as one class name. One 0/1 column is a binary task
    (classes "no X" and "X"). ``min_classes=1`` accepts a table of one class, for evaluating a model on it.
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
    check_utf8(root)
    check_utf8(table.resolve())
    fields, rows, lines = _read_table(table)
    header = {_norm(c): c for c in fields if c.strip()}
    path_col = next((header[c] for c in PATH_COLUMNS if c in header), None)
    if path_col is None:
        raise DatasetError(f"{table} has no image column; expected one of {', '.join(PATH_COLUMNS)} (NIH: 'Image Index'); columns are {fields}")
    kind, label_cols = _choose_label_column(header, rows, label_column, task, lines)
    none_col = None
    if kind == "onehot":  # a "No Finding" column is the absence of every finding, not a finding of its own
        none_col = next((c for c in label_cols if canonical_name(c) in NEGATIVE_NAMES), None)
        label_cols = [c for c in label_cols if c != none_col]
        if len(label_cols) == 1 and task in ("auto", "binary"):
            # One 0/1 column (a "tb" column) is a binary task: it was read as one finding, and training then stopped after the
            # audit with "a multilabel run needs at least 2 classes, got 1".
            kind = "binary01"
    elif (kind == "class" and task in ("auto", "binary") and _norm(label_cols[0]) not in CLASS_COLUMNS + FINDINGS_COLUMNS
          and all(_zero_one(r[label_cols[0]]) is not None for r in rows)):
        kind = "binary01"  # --label-column tb names the same classes as the table read on its own ("0" and "1" were a guess)
    patient_col = next((header[c] for c in PATIENT_COLUMNS if c in header), None)
    split_col = header.get("split")
    nih = "image_index" in header and "finding_labels" in header

    names = [r[path_col].strip() for r in rows]
    if not all(names):
        raise DatasetError(f"line {lines[names.index('')]} of {table} names no image (its {path_col!r} is empty)")
    # One spelling per file ('./a/b.png', 'a//b.png' and 'a/x/../b.png' are a/b.png), so a file listed twice is caught and a '..'
    # that leaves the root is seen.
    paths = [Path(os.path.normpath(root / n)) for n in names]
    for i, n in enumerate(names):  # a table written on Windows ('sub\\x.png'): its folders, as in a zip from there
        if "\\" in n and not paths[i].is_file():
            names[i] = n.replace("\\", "/")
            paths[i] = Path(os.path.normpath(root / names[i]))
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    bare = [i for i in missing if "/" not in os.path.normpath(names[i])]
    if bare:  # a file name alone (NIH's Image Index) is looked for anywhere under the root; a path names its folder
        by_name = _find_by_name(root, {names[i] for i in bare})
        for i in bare:
            found = by_name.get(os.path.normpath(names[i]), [])
            if len(found) > 1:
                raise DatasetError(f"line {lines[i]} of {table} names {names[i]}, which is in {len(found)} folders under {root} "
                                   f"({', '.join(str(f.relative_to(root)) for f in found[:3])}); write its folder in the table")
            paths[i] = found[0] if found else paths[i]
        missing = [i for i in missing if not paths[i].is_file()]
    if missing:
        shown = ", ".join(names[i] for i in missing[:5])
        raise DatasetError(f"{len(missing)} of {len(rows)} images listed in {table} are not under {root} (e.g. {shown}); "
                           "give the folder that holds them as DATA, or remove their rows")
    outside = [i for i, p in enumerate(paths) if not p.is_relative_to(root)]
    if outside:  # an absolute path elsewhere: the run records paths relative to the root (was pathlib's "is not in the subpath" error)
        raise DatasetError(f"{len(outside)} image path(s) in {table} are outside the image root {root} (e.g. line {lines[outside[0]]}: "
                           f"{names[outside[0]]}); give a folder that holds every listed image as DATA with --labels {table.name}, "
                           "or write the paths relative to it")
    not_images = [names[i] for i, p in enumerate(paths) if not is_image_file(p) and p.suffix.lower() != ".dcm"]
    if not_images:
        raise DatasetError(f"{len(not_images)} entries of {table} are not image files (e.g. {not_images[0]})")

    lists, used_lists = _split_lists(table, root)
    samples = []
    placeholders: dict[str, int] = {}
    seen: dict[Path, int] = {}
    for i, (r, p) in enumerate(zip(rows, paths)):
        if seen.setdefault(p, i) != i:
            raise DatasetError(f"{table} lists {p.relative_to(root).as_posix()} twice (lines {lines[seen[p]]} and {lines[i]})")
        split = None
        if split_col and r[split_col].strip():
            raw = r[split_col].strip().lower()
            if raw not in SPLIT_ALIASES:
                raise DatasetError(f"line {lines[i]} of {table}: split {r[split_col]!r} is not one of train, val(id), test")
            split = SPLIT_ALIASES[raw]
        elif p.name in lists:
            split = lists[p.name]
        patient = r[patient_col].strip() if patient_col else None
        if patient and (patient.lower() in PLACEHOLDER_PATIENT_IDS or (patient.isdigit() and not patient.strip("0"))):  # 0, 000
            placeholders[patient] = placeholders.get(patient, 0) + 1
            patient = None
        if not patient or patient.lower() in MISSING_VALUES:  # NaN from pandas was one "patient" holding every image without an ID
            patient = None
        if kind == "onehot":
            found = tuple(c for c in label_cols if _zero_one(r[c]) == 1)
            if none_col is not None and (_zero_one(r[none_col]) == 1) == bool(found):
                raise DatasetError(f"line {lines[i]} of {table}: {none_col!r} is {r[none_col].strip()} but the findings marked 1 are "
                                   f"{', '.join(found) or 'none'}; a row holds either {none_col} or findings")
            samples.append(Sample(p, "|".join(found) or "No Finding", split, found, patient))
        elif kind == "binary01":
            absent = none_col or f"no {label_cols[0]}"
            if none_col is not None and (_zero_one(r[none_col]) == 1) == (_zero_one(r[label_cols[0]]) == 1):
                raise DatasetError(f"line {lines[i]} of {table}: {none_col!r} and {label_cols[0]!r} are both {r[none_col].strip()}; "
                                   "a row holds one of them")
            samples.append(Sample(p, label_cols[0] if _zero_one(r[label_cols[0]]) == 1 else absent, split, None, patient))
        elif kind == "findings":
            found = _findings(r[label_cols[0]])
            if found and any(canonical_name(p) in NEGATIVE_NAMES for p in r[label_cols[0]].split("|")):
                raise DatasetError(f"line {lines[i]} of {table} has {r[label_cols[0]]!r}: a finding and 'No Finding' together; a row "
                                   "holds either No Finding or findings")
            if any(f.lower() in MISSING_VALUES for f in found):
                raise DatasetError(f"line {lines[i]} of {table} has no findings but {r[label_cols[0]]!r} (a missing value); "
                                   "write 'No Finding' for an image without findings")
            if nih:
                unknown = [f for f in found if f not in NIH_FINDINGS]
                if unknown:
                    # A table in NIH's layout with its own classes (Tuberculosis/Normal) has a fix the message did not give.
                    raise DatasetError(f"line {lines[i]} of {table}: unknown finding(s) {unknown}; NIH findings are {', '.join(NIH_FINDINGS)} "
                                       f"and No Finding. If {label_cols[0]!r} holds classes of your own, one per image, pass "
                                       f"--label-column '{label_cols[0]}'")
            samples.append(Sample(p, "|".join(found) or "No Finding", split, found, patient))
        else:
            value = r[label_cols[0]].strip()
            if not value or value.lower() in MISSING_VALUES:  # 'nan' was a class of its own
                raise DatasetError(f"line {lines[i]} of {table} has an empty label ({value!r}) in column {label_cols[0]!r}")
            if any(c in value for c in "\r\n\t"):  # a quoted cell spanning lines: a class 't\nb' beside 'tb'
                raise DatasetError(f"line {lines[i]} of {table} has a label with a line break or tab in it ({value!r})")
            if re.fullmatch(r"[+-]?\d+(\.0*)?", value):  # 1.0 or 01 (a spreadsheet's number) is the class 1, not a class of its own
                value = str(int(value.split(".")[0]))
            if "|" in value:
                raise DatasetError(f"line {lines[i]} of {table} has several labels ({value!r}); use --task multilabel")
            samples.append(Sample(p, value, split, None, patient))
    if kind == "onehot":
        classes = list(label_cols)
    elif kind == "binary01":
        classes = sorted({s.label for s in samples}, key=lambda c: c == label_cols[0])  # the absence first, as binary tasks order them
    elif kind == "findings":
        classes = sorted({f for s in samples for f in (s.findings or ())})
    else:
        classes = sorted({s.label for s in samples})
    one_spelling(classes, f"{table}: labels")  # 'TB' and 'tb' were two classes (or findings), each with part of the images
    if kind == "binary01" and len(classes) < min_classes:
        raise DatasetError(f"{table}: column {label_cols[0]!r} is {1 if classes == label_cols else 0} on every row; training needs "
                           "images with 0 and with 1")
    need = 1 if kind in ("onehot", "findings") else min_classes
    if len(classes) < need:
        raise DatasetError(f"{table}: found {len(classes)} label(s) ({classes}); need at least {need}")
    return TableSource(
        root=root, samples=samples, classes=classes, layout="nih table" if nih else "table", table=table.resolve(),
        label_column=label_cols[0] if len(label_cols) == 1 else None, split_lists=tuple(used_lists),
        unlisted_images=_unlisted(root, [s.path for s in samples]), placeholder_patient_ids=placeholders,
        label_columns=tuple(label_cols), patient_column=patient_col,
    )
