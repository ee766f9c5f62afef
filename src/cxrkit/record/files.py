"""The files of a run folder: their names, atomic writers, and readers for metrics, predictions and history.

Everything that reads or writes a run folder's files goes through here, so the format has one owner.
No torch: the server, the report and scripts read runs without loading a model library.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

META_FILE = "meta.json"
MODEL_FILE = "model.safetensors"
SHIFT_FILE = "shift_reference.json"
CALIBRATION_FILE = "calibration.json"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
HISTORY_FILE = "history.csv"
CONFIG_FILE = "config.yaml"
SPLITS_FILE = "splits.csv"
SKIPPED_FILE = "skipped.csv"
AUDIT_FILE = "audit.json"
REPORT_FILE = "report.html"
PLOTS_DIR = "plots"
CHECKPOINT_DIR = "checkpoint"  # the resumable training state (cxrkit.training.checkpoint writes it)
# What a run predicts with: its safetensors weights (torch) or the ONNX files `cxrkit export` wrote.
ENGINES = ("auto", "torch", "onnx", "onnx-int8")

# Everything training writes; a new run in the same folder removes these first.
RUN_OUTPUTS = (META_FILE, MODEL_FILE, SHIFT_FILE, CALIBRATION_FILE, AUDIT_FILE, METRICS_FILE, PREDICTIONS_FILE,
               HISTORY_FILE, SPLITS_FILE, SKIPPED_FILE, REPORT_FILE, CONFIG_FILE)


# What a writer leaves beside a run's files until it finishes, named after its process id: all_or_nothing's rollback
# copies ("<file>.bak-<pid>"), replacing()'s and the checkpoint's temporary file or folder ("<name>.tmp-<pid>"), and the
# ONNX quantiser's pre-processed graph ("<name>.pre-<pid>").
_LEFTOVER_NAME = re.compile(r"\.(?:bak|tmp|pre)-(\d+)$")


class RunRecordError(ValueError):
    """A run folder, or one of its files, is missing, unreadable or inconsistent; the message is one line."""


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path`` to write its new content to; renamed over ``path`` once written whole.

    A failed write (full disk, read-only folder, quota) removes the temporary file, keeps the previous ``path`` as it
    was and raises an :class:`OSError` whose filename is ``path`` itself (not the temporary name), so the one-line
    error says which of the run's files could not be written and why.
    """
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:  # Ctrl-C mid-write too: no half file is left behind
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if not isinstance(exc, OSError):
            raise
        why = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
        kept = "the previous version is kept" if path.exists() else "nothing was written"
        raise OSError(exc.errno, f"cannot be written ({why}); {kept}", str(path)) from None


@contextlib.contextmanager
def all_or_nothing(paths: list[Path], folders: Sequence[Path] = ()) -> Iterator[None]:
    """Files that change together (metrics.json, predictions.csv, meta.json of one evaluation): if the body fails
    half-way, e.g. on a full disk, each is put back as it was, not left with the new metrics but the old predictions.

    ``folders`` (plots/) are kept whole: files the body adds to them are removed again and those it changes put back.
    The old versions are kept as hard links (``NAME.bak-PID``, a folder's in ``FOLDER.bak-PID/``), so putting them back
    is a rename that needs no disk space. On a file system without hard links each file is still written atomically,
    only not rolled back together.
    """
    kept: dict[Path, Path | None] = {}
    kept_folders: dict[Path, Path | None] = {}
    journal: Path | None = None
    try:
        for p in map(Path, paths):
            bak = p.with_name(p.name + f".bak-{os.getpid()}")
            with contextlib.suppress(FileNotFoundError):
                bak.unlink()
            try:
                os.link(p, bak)
                kept[p] = bak
            except FileNotFoundError:
                kept[p] = None  # new: removed again on failure
            except OSError:
                pass  # no hard links here: this file is not rolled back
        for d in map(Path, folders):
            with contextlib.suppress(OSError):  # no hard links here: this folder is not rolled back
                kept_folders[d] = _keep_folder(d)
        journal = _write_journal(kept, kept_folders)
        yield
        _drop_journal(journal)  # the update is whole from here on: a kill after this keeps it
    except BaseException:
        for p, bak in kept.items():
            with contextlib.suppress(OSError):
                if bak is None:
                    p.unlink(missing_ok=True)
                else:
                    os.replace(bak, p)
        for d, bak in kept_folders.items():
            with contextlib.suppress(OSError):
                _restore_folder(d, bak)
        _drop_journal(journal)
        raise
    finally:
        for bak in kept.values():
            if bak is not None:
                with contextlib.suppress(OSError):
                    bak.unlink(missing_ok=True)
        for bak in kept_folders.values():
            if bak is not None:
                shutil.rmtree(bak, ignore_errors=True)


# An update in progress: what all_or_nothing kept, so that the next command can finish the rollback of a writer that
# was killed (kill -9, power cut) between its first change and the end. Its presence means "not done".
_JOURNAL_NAME = re.compile(r"^\.cxrkit-update-(\d+)\.json$")


def _write_journal(kept: dict[Path, Path | None], kept_folders: dict[Path, Path | None]) -> Path | None:
    """Write the journal of an all_or_nothing update into the run folder (None when nothing is kept to roll back)."""
    where = next(iter(kept or kept_folders), None)
    if where is None:
        return None
    journal = where.parent / f".cxrkit-update-{os.getpid()}.json"
    record = {
        "files": {p.name: ("kept" if bak is not None else "new") for p, bak in kept.items()},
        "folders": {d.name: (sorted(f.name for f in bak.iterdir()) if bak is not None else None) for d, bak in kept_folders.items()},
    }
    try:
        atomic_write_text(journal, json.dumps(record))
    except OSError:
        return None  # the update still rolls back in this process; only a kill -9 would not be undone
    return journal


def _drop_journal(journal: Path | None) -> None:
    if journal is not None:
        with contextlib.suppress(OSError):
            journal.unlink(missing_ok=True)


def roll_back_interrupted_updates(run_dir: Path) -> list[int]:
    """Finish the rollback of every all_or_nothing update whose process died before it ended; returns their process ids.

    Each kept file goes back from its ``NAME.bak-PID`` link, each file the update created is removed, and a kept folder
    gets back exactly the files it had. Every step can be repeated, so a rollback that is itself cut off is finished by
    the next call. Call it while holding the run's lock, before :func:`remove_stale_leftovers` deletes the links.
    """
    done = []
    run_dir = Path(run_dir)
    if os.name != "posix" or not run_dir.is_dir():
        return done
    for journal in sorted(run_dir.iterdir()):
        m = _JOURNAL_NAME.match(journal.name)
        if m is None or _process_alive(int(m.group(1))):
            continue
        pid = m.group(1)
        try:
            record = json.loads(journal.read_text())
            for name, state in record["files"].items():
                p, bak = run_dir / Path(name).name, run_dir / f"{Path(name).name}.bak-{pid}"
                if state == "new":
                    p.unlink(missing_ok=True)
                elif bak.exists():
                    os.replace(bak, p)
            for name, names in record["folders"].items():
                folder, bak = run_dir / Path(name).name, run_dir / f"{Path(name).name}.bak-{pid}"
                if names is None:
                    shutil.rmtree(folder, ignore_errors=True)
                    continue
                folder.mkdir(exist_ok=True)
                for f in folder.iterdir():
                    if f.is_file() and f.name not in names:
                        f.unlink(missing_ok=True)
                for f in bak.iterdir() if bak.is_dir() else ():
                    os.replace(f, folder / f.name)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # tried again by the next command; the leftovers stay until then
        journal.unlink(missing_ok=True)
        done.append(int(pid))
    return done


def _keep_folder(folder: Path) -> Path | None:
    """Hard links to the files in ``folder`` in a folder beside it (None: ``folder`` does not exist yet)."""
    if not folder.is_dir():
        return None
    bak = folder.with_name(folder.name + f".bak-{os.getpid()}")
    shutil.rmtree(bak, ignore_errors=True)
    bak.mkdir()
    try:
        for f in folder.iterdir():
            if f.is_file() and not f.is_symlink():
                os.link(f, bak / f.name)
    except BaseException:
        shutil.rmtree(bak, ignore_errors=True)  # a partial copy would delete the files it lacks on rollback
        raise
    return bak


def _restore_folder(folder: Path, bak: Path | None) -> None:
    """Put ``folder`` back as :func:`_keep_folder` kept it: the files added since removed, the others renamed back."""
    if bak is None:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for f in folder.iterdir() if folder.is_dir() else ():
        if f.is_file() and not f.is_symlink() and not (bak / f.name).exists():
            f.unlink(missing_ok=True)
    folder.mkdir(exist_ok=True)
    for f in bak.iterdir():
        os.replace(f, folder / f.name)


def remove_stale_leftovers(run_dir: Path) -> list[Path]:
    """Remove what a writer killed half-way (``kill -9``, a power cut) left in the run folder and its plots/ for good:
    rollback copies of :func:`all_or_nothing` (``NAME.bak-PID``) and temporary files or folders (``NAME.tmp-PID``).

    Only those whose process is gone from this machine: a live one may still rename its temporary file or need its
    copies to roll back. Call it while holding the run's lock, so that no other cxrkit process is writing the run
    (processes on other machines are told apart by the lock alone). Returns what went.
    """
    if os.name != "posix":  # os.kill(pid, 0) terminates the process on Windows instead of asking whether it lives
        return []
    removed = []
    run_dir = Path(run_dir)
    for folder in (run_dir, run_dir / PLOTS_DIR):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            m = _LEFTOVER_NAME.search(p.name)
            if m is None or _process_alive(int(m.group(1))):
                continue
            with contextlib.suppress(OSError):  # best effort: a leftover that stays is harmless, it is tried again next time
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed.append(p)
    return removed


def _process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (another user's counts: it may be one of ours under sudo)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OverflowError:  # no process can have this id
        return False
    except OSError:  # EPERM: it exists; anything else: not sure, so keep its files
        return True
    return True


def _write_file(path: Path, text: str, newline: str | None = None) -> None:
    """Write ``text`` into a new file ``path`` (where a full disk shows: tests fill the disk here)."""
    with open(path, "w", newline=newline) as f:
        f.write(text)


def atomic_write_text(path: Path, text: str, newline: str | None = None) -> None:
    """Write a text file via a temporary file and rename, so a crash or a full disk never leaves half a file."""
    with replacing(path) as tmp:
        _write_file(tmp, text, newline)


def json_safe(data: Any) -> Any:
    """``data`` with NaN and infinities as None: JSON has no such numbers, and strict parsers refused a run's bare ``NaN``."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    if hasattr(data, "tolist") and not isinstance(data, (str, bytes)):  # NumPy arrays and scalars
        return json_safe(data.tolist())
    return data


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (indented, so a person can read it; NaN as null)."""
    atomic_write_text(path, json.dumps(json_safe(data), indent=2, allow_nan=False))


def atomic_write_csv(path: Path, rows: list[dict], fieldnames: list[str]) -> None:
    """Write dict rows as CSV via a temporary file and rename, so readers never see half a file."""
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fieldnames)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue(), newline="")


def read_json(path: Path, what: str | None = None) -> Any:
    """Parse a JSON file, or raise :class:`RunRecordError` naming the file and the problem."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RunRecordError(f"{path} does not exist{f' ({what})' if what else ''}") from None
    except OSError as exc:
        raise RunRecordError(f"{path} cannot be read: {exc.strerror or exc}") from None
    return parse_json(data, path)


def parse_json(data: bytes, path: Path) -> Any:
    """Parse the bytes read from ``path``, or raise :class:`RunRecordError` naming the file and the problem."""
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunRecordError(f"{path} is not valid JSON ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None


def read_metrics(run_dir: Path) -> dict:
    """metrics.json of a run as {split key: metrics}; {} when nothing was evaluated yet."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return {}
    data = read_json(path)
    if not isinstance(data, dict):
        raise RunRecordError(f"{path} must hold a JSON object of splits, got {type(data).__name__}")
    for split, m in data.items():
        # Every reader (the report, the model card, the command's summary) takes these as given: a damaged entry was an
        # "unexpected TypeError" blamed on cxrkit. The numbers themselves are as the evaluation wrote them.
        problem = _split_metrics_problem(m)
        if problem:
            raise RunRecordError(f"{path}: the {split!r} results are damaged ({problem}); remove that entry (or the file) and run "
                                 f"`cxrkit evaluate` again for the splits you need")
    return data


def _split_metrics_problem(m: Any) -> str | None:
    """What makes one split's entry of metrics.json unreadable, or None."""
    if not isinstance(m, dict):
        return f"an object was expected, got {type(m).__name__}"
    if m.get("task") not in ("binary", "multiclass", "multilabel"):
        return f"task must be binary, multiclass or multilabel, got {m.get('task')!r}"
    if not isinstance(m.get("classes"), list) or not all(isinstance(c, str) for c in m["classes"]):
        return f"classes must be a list of names, got {m.get('classes')!r}"
    if not isinstance(m.get("metrics"), dict) or not all(isinstance(e, dict) for e in m["metrics"].values()):
        return "metrics must be an object of {value, ci} entries"
    if isinstance(m.get("n"), bool) or not isinstance(m.get("n"), int):
        return f"n must be the number of images, got {m.get('n')!r}"
    # The entries every reader formats (the summary, the report, plan): a damaged one was a TypeError after the whole
    # evaluation had run, or a plan that left the figure out without a word.
    for name, e in m["metrics"].items():
        if "value" in e and e["value"] is not None and not _is_number(e["value"]):
            return f"metrics.{name}.value must be a number or null, got {e['value']!r}"
        ci = e.get("ci")
        if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and all(map(_is_number, ci)) and ci[0] <= ci[1]):
            return f"metrics.{name}.ci must be null or [low, high], got {ci!r}"
    for key in ("n_positive", "n_negative"):
        if key in m and (isinstance(m[key], bool) or not isinstance(m[key], int) or m[key] < 0):
            return f"{key} must be a number of images, got {m[key]!r}"
    if m["task"] == "binary" and "confusion" in m and not (
            isinstance(m["confusion"], dict) and all(isinstance(m["confusion"].get(k), int) for k in ("tp", "fp", "tn", "fn"))):
        return f"confusion must hold the counts tp, fp, tn and fn, got {m['confusion']!r}"[:200]
    for key, kind in (("calibration", dict), ("operating_points", list), ("who_triage", dict)):
        if m.get(key) is not None and not isinstance(m[key], kind):
            return f"{key} must be {'an object' if kind is dict else 'a list'}, got {type(m[key]).__name__}"
    if "threshold" in m and m["threshold"] is not None and not _is_number(m["threshold"]):
        return f"threshold must be a number, got {m['threshold']!r}"
    return None


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def split_metrics(run_dir: Path, split: str) -> dict:
    """The metrics of one split, or :class:`RunRecordError` naming the splits that exist."""
    metrics = read_metrics(run_dir)
    if split not in metrics:
        have = ", ".join(metrics) or "none"
        raise RunRecordError(f"{Path(run_dir) / METRICS_FILE} has no {split!r} results (evaluated: {have}); run `cxrkit evaluate`")
    return metrics[split]


def update_metrics(run_dir: Path, split: str, metrics: dict) -> None:
    """Store one split's metrics in metrics.json, keeping the others."""
    all_metrics = read_metrics(run_dir)
    all_metrics[split] = metrics
    atomic_write_json(Path(run_dir) / METRICS_FILE, all_metrics)


def read_csv_rows(path: Path) -> list[dict]:
    """Rows of a CSV file as dicts ([] when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as exc:  # the bare codec message named no file
        raise RunRecordError(f"{path} is not a readable CSV file ({type(exc).__name__}: {' '.join(str(exc).split())}); restore it "
                             "from a copy of the run, or train again") from None


def read_predictions(run_dir: Path, split: str | None = None) -> list[dict]:
    """Rows of predictions.csv (split, path, true, prob_<class>..., pred), all or those of one split."""
    path = Path(run_dir) / PREDICTIONS_FILE
    rows = read_csv_rows(path)
    if rows and not {"split", "path", "true"} <= set(rows[0]):
        raise RunRecordError(f"{path} lacks its split, path and true columns (it has {', '.join(map(str, rows[0]))}); restore it, "
                             "or delete it and run `cxrkit evaluate` again for each split you need")
    return rows if split is None else [r for r in rows if r["split"] == split]


def split_predictions(run_dir: Path, split: str, classes: list[str], multilabel: bool = False) -> tuple[list[str], Any, Any]:
    """One split of predictions.csv as arrays, sorted by path: (paths, labels, probabilities (N, K)).

    Labels are class indices, or an (N, K) 0/1 matrix for a multi-label run (``true`` holds ``|``-joined findings).
    """
    import numpy as np

    rows = sorted(read_predictions(run_dir, split), key=lambda r: r["path"])
    try:
        if multilabel:
            y = np.array([[c in r["true"].split("|") for c in classes] for r in rows], dtype=int).reshape(len(rows), len(classes))
        else:
            y = np.array([classes.index(r["true"]) for r in rows], dtype=int)
        probs = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows]).reshape(len(rows), len(classes))
    except (KeyError, ValueError, TypeError) as exc:  # TypeError: a row cut short has None in its last cells
        raise RunRecordError(f"{Path(run_dir) / PREDICTIONS_FILE} does not match the run's classes ({exc})") from None
    bad = ~(np.isfinite(probs) & (probs >= 0) & (probs <= 1)).all(axis=1)
    if bad.any():  # float() reads "nan", "inf" and 1.5 alike: a referral band or threshold chosen on them would be silently off
        first = int(np.argmax(bad))
        raise RunRecordError(f"{Path(run_dir) / PREDICTIONS_FILE}: {int(bad.sum())} {split} row(s) hold probabilities that are not numbers "
                             f"from 0 to 1 (first {rows[first]['path']}: {probs[first].tolist()}); restore the file, or run "
                             f"`cxrkit evaluate --split {split}` to write those rows again")
    return [r["path"] for r in rows], y, probs


def replace_predictions(run_dir: Path, split: str, rows: list[dict], classes: list[str]) -> None:
    """Replace one split's rows in predictions.csv, keeping the other splits' rows."""
    kept = [r for r in read_predictions(run_dir) if r["split"] != split]
    atomic_write_csv(Path(run_dir) / PREDICTIONS_FILE, kept + rows, ["split", "path", "true", *[f"prob_{c}" for c in classes], "pred"])


def read_splits(run_dir: Path) -> dict[str, str]:
    """splits.csv as {path relative to the data root: split}; empty when the run has none."""
    path = Path(run_dir) / SPLITS_FILE
    if not path.is_file():
        return {}
    rows = read_csv_rows(path)
    try:
        return {r["path"]: r["split"] for r in rows}
    except KeyError as exc:
        raise RunRecordError(f"{path} lacks its {exc.args[0]} column; restore it from a copy of the run, or train again") from None


def read_split_patients(run_dir: Path) -> dict[str, str]:
    """splits.csv as {path: patient ID} for the images whose patient the data named; empty for a run trained before
    splits.csv recorded patients."""
    path = Path(run_dir) / SPLITS_FILE
    return {r["path"]: r["patient"] for r in read_csv_rows(path) if r.get("patient") and r.get("path")} if path.is_file() else {}


def read_split_hashes(run_dir: Path) -> dict[str, str]:
    """splits.csv as {pixel hash: split}; an image in several splits counts as train, else val, else test. Empty for a
    run trained before splits.csv recorded the hashes."""
    rank = {"train": 0, "val": 1}
    out: dict[str, str] = {}
    for r in sorted(read_csv_rows(Path(run_dir) / SPLITS_FILE), key=lambda r: rank.get(r.get("split"), 2), reverse=True):
        if r.get("pixels"):
            out[r["pixels"]] = r.get("split", "")
    return out


def read_history(run_dir: Path) -> list[dict]:
    """history.csv as one dict per epoch, numbers as floats (the ``stage`` column stays text)."""
    path = Path(run_dir) / HISTORY_FILE
    rows = read_csv_rows(path)
    try:
        return [{k: (v if k == "stage" else float(v)) for k, v in r.items()} for r in rows]
    except (ValueError, TypeError) as exc:  # a cell that is no number, or a row cut short (None)
        raise RunRecordError(f"{path} holds a value that is not a number ({exc}); restore it from a copy of the run, or train again") from None


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
