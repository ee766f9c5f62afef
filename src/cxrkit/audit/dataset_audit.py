"""Audit a dataset before training: class balance per split, per-class file properties, duplicates, patient
overlap between splits, corrupt files and the shortcut probe; the verdicts ``leakage`` and ``shortcut``."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from cxrkit.audit.duplicates import clusters, duplicate_report, near_pairs
from cxrkit.audit.exposure import exposure_probe
from cxrkit.audit.features import FEATURES_VERSION, read_cache_json, read_records
from cxrkit.audit.messages import audit_messages, count
from cxrkit.audit.report import save_audit
from cxrkit.audit.shortcut import shortcut_probe
from cxrkit.audit.split_shift import compare_splits, record_stats
from cxrkit.data.medmnist import ArraySource
from cxrkit.data.sources import DatasetError, ImageFolderSource, cache_root, file_stamp
from cxrkit.data.splits import OWN_ID_PREFIX, guess_patient_pattern, ids_in_several_splits, patient_ids
from cxrkit.record import atomic_write_text

# 2: near duplicates within 8 bits (was 16); 3: each class compared across splits; 4: exposure probe;
# 5: unreadable files are no copies; 6: a split shift needs a 0.02 difference; 7: patient ID findings, the label columns read
AUDIT_VERSION = 7
SPLITS = ("train", "val", "test")


class LeakageError(ValueError):
    """Raised when training would run on splits that share patients or images."""


def _describe(values: list[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    if len(a) == 0:
        return {}
    q = np.percentile(a, [0, 5, 50, 95, 100])
    return {"min": q[0], "p5": q[1], "median": q[2], "p95": q[3], "max": q[4], "mean": float(a.mean())}


def per_class_properties(records: list[dict], labels: list[str], classes: list[str]) -> dict:
    """For each class: distributions of width, height, aspect ratio, mean and std intensity, and counts of
    file format, colour mode, bit depth and channel count."""
    out = {}
    for c in classes:
        rs = [r for r, lab in zip(records, labels) if lab == c and not r["error"]]
        out[c] = {
            "n": len(rs),
            **{k: _describe([r[k] for r in rs]) for k in ("width", "height", "mean", "std")},
            "aspect": _describe([r["width"] / r["height"] for r in rs]),
            **{k: dict(Counter(str(r[k]) for r in rs).most_common()) for k in ("format", "mode", "bit_depth", "channels")},
            "colour_channels_differ": int(sum(r["channel_difference"] > 0.01 for r in rs)),
        }
    return out


def audit_source(
    source: ImageFolderSource, splits: list[str], groups: list[str] | None = None, cache_dir: Path | None = None,
    progress: bool = True, seed: int = 0,
) -> dict:
    """Audit the images of ``source`` with the split of each (as training will use it) and patient IDs if known."""
    t0 = time.perf_counter()
    key = _audit_key(source, splits, groups)
    store = (cache_dir or cache_root()) / "audit" / f"result-{key}.json"
    cached = read_cache_json(store)
    if cached is not None:
        cached["seconds"] = {"features": 0.0, "total": time.perf_counter() - t0, "files_computed": 0, "cached": True}
        return cached
    paths = [s.path for s in source.samples]
    labels = [s.label for s in source.samples]
    relpaths = [source.relpath(p) for p in paths]
    records, timing = read_records(paths, cache_dir, progress=progress)
    ok = [i for i, r in enumerate(records) if not r["error"]]
    # Multi-label images are grouped as with / without a finding for balance, properties and the probe.
    groups_of = (["any finding" if smp.findings else "no finding" for smp in source.samples] if source.multilabel else labels)
    group_names = ["no finding", "any finding"] if source.multilabel else source.classes
    balance = {s: dict(Counter(groups_of[i] for i in range(len(labels)) if splits[i] == s)) for s in SPLITS if s in splits}
    dup = duplicate_report(records, splits, labels, relpaths)
    patients = None
    if groups is not None:
        named = [g for g in groups if not g.startswith(OWN_ID_PREFIX)]
        by_split = {s: {g for g, sp in zip(groups, splits) if sp == s and not g.startswith(OWN_ID_PREFIX)} for s in SPLITS}
        shared = {f"{a}-{b}": sorted(by_split[a] & by_split[b]) for a, b in (("train", "val"), ("train", "test"), ("val", "test"))}
        patients = {"ids": len(set(named)), "files_with_id": len(named), "files_without_id": len(groups) - len(named),
                    "shared": {k: len(v) for k, v in shared.items()}, "examples": {k: v[:10] for k, v in shared.items() if v}}
        if named:  # one "patient" holding a third of the images (a placeholder, a ward) goes whole into one split
            top, top_n = Counter(named).most_common(1)[0]
            patients["largest"] = {"id": top, "images": top_n}
        if patients["files_without_id"]:
            patients["without_id_by_class"] = dict(Counter(groups_of[i] for i, g in enumerate(groups) if g.startswith(OWN_ID_PREFIX)))
        placeholders = getattr(source, "placeholder_patient_ids", None)
        if placeholders:
            patients["placeholders"] = dict(placeholders)
    corrupt = [{"path": relpaths[i], "split": splits[i], "reason": r["error"], "unusable": bool(r.get("unusable"))}
               for i, r in enumerate(records) if r["error"]]
    class_index = {c: i for i, c in enumerate(group_names)}
    probe = shortcut_probe([records[i] for i in ok], np.array([class_index[groups_of[i]] for i in ok]), group_names, seed=seed)
    stats, class_of = record_stats(records), np.array([class_index[g] for g in groups_of])
    across = compare_splits(stats, class_of, np.array(splits), group_names)
    sites = [smp.site for smp in source.samples]
    exposure = exposure_probe(stats["mean"], stats["std"], class_of, group_names, np.array(sites) if any(sites) else None, seed)
    leaks = []
    if dup["exact"]["across_splits"]:
        leaks.append(f"{count(dup['exact']['across_splits'], 'group')} of byte-identical images span two splits")
    near_only = dup["near"]["across_splits"] - dup["exact"]["across_splits"]
    if near_only > 0:
        leaks.append(f"{count(near_only, 'group')} of near-identical images (resized or re-encoded copies) span two splits")
    if patients and sum(patients["shared"].values()):
        shared = {pair: n for pair, n in patients["shared"].items() if n}
        total = sum(shared.values())
        where = ", ".join(f"{pair.replace('-', ' and ')}: {n}" for pair, n in shared.items())  # the raw dict was printed
        hit = "validation figures (which chose the kept epoch and the threshold)" if set(shared) == {"train-val"} else "test figures"
        leaks.append(f"{count(total, 'patient ID')} {'appears' if total == 1 else 'appear'} in two splits ({where}); {hit} would be inflated")
    verdict = {"leakage": bool(leaks), "leakage_reasons": leaks, "shortcut": probe["warning"], "exposure": exposure["warning"],
               "conflicting_labels": dup["exact"]["across_classes"] + dup["near"]["across_classes"]}
    result = {
        "version": AUDIT_VERSION, "root": str(source.root), "classes": source.classes, "multilabel": bool(source.multilabel),
        "labels_from": source.describe() if hasattr(source, "describe") else None,
        "n_files": len(paths), "n_decoded": len(ok),
        "class_balance": balance, "properties": per_class_properties(records, groups_of, group_names), "duplicates": dup,
        "patients": patients, "corrupt": corrupt, "shortcut_probe": probe, "exposure_probe": exposure, "split_shift": across, "verdict": verdict,
        "seconds": {"features": timing["seconds"], "total": time.perf_counter() - t0, "files_computed": timing["computed"]},
    }
    store.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(store, json.dumps(result, default=float))
    result["_per_file"] = {"relpaths": relpaths, "labels": labels, "records": records}
    return result


def _refuse_if_none_usable(paths: list[Path], records: list[dict]) -> None:
    """Stop with the reason when not one file is a usable image: the splits were refused as "only 1 group of copies" (junk
    files are byte-identical) or training found "no training images after the split", neither of which says why."""
    if records and all(r["error"] for r in records):
        blank = sum(bool(r.get("unusable")) for r in records)
        why = ", ".join(f"{n} {what}" for n, what in ((blank, "blank or tiny"), (len(records) - blank, "unreadable")) if n)
        raise DatasetError(f"none of the {len(records)} files is a usable image ({why}); e.g. {paths[0]}: {records[0]['error']}")


def _audit_key(source: ImageFolderSource, splits: list[str], groups: list[str] | None) -> str:
    """Changes with any file's content stamp, the split or patient assignment, or the audit's version."""
    h = hashlib.sha256(f"audit-v{AUDIT_VERSION}-features-v{FEATURES_VERSION}".encode())
    # What the result says about the source itself: another table over the same images printed the first one's columns.
    h.update(repr((source.describe() if hasattr(source, "describe") else None, getattr(source, "placeholder_patient_ids", None))).encode())
    for i, s in enumerate(source.samples):
        h.update(f"\n{s.path}|{file_stamp(s.path)}|{s.label}|{splits[i]}|{groups[i] if groups else ''}".encode())
    return h.hexdigest()[:24]


def audit_dataset(
    data: str | Path, group_pattern: str | None = None, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0,
    cache_dir: str | Path | None = None, progress: bool = True, labels: str | Path | None = None, label_column: str | None = None,
    task: str = "auto", resplit: bool = False,
) -> dict:
    """Audit a dataset (folder, zip, label table or sources file) with the split cxrkit would make for training: the same
    fractions, seed, patient IDs and grouping of copies, cut by the same code as :func:`cxrkit.data.dataset.load_dataset`."""
    from cxrkit.data.dataset import plan_dataset

    t0 = time.perf_counter()
    cache = Path(cache_dir) if cache_dir else None
    computed = 0

    def copies(paths: list[Path]) -> list[str | None]:
        # Every file's record is read once: counted here, then the grouping and the audit proper find it cached.
        nonlocal computed
        computed += read_records(list(paths), cache, progress=progress)[1]["computed"]
        return duplicate_group_ids(paths, cache, progress)

    if labels is None and Path(data).suffix.lower() == ".npz":
        raise DatasetError(f"{data} holds its images as arrays in one file: there are no per-file formats, sizes, bytes or patients "
                           "to audit (its own train/val/test splits are used as given)")
    plan = plan_dataset(data, None, val_fraction, test_fraction, seed, group_pattern, cache, labels=labels, label_column=label_column,
                        task=task, resplit=resplit, duplicate_groups=copies)
    source = plan.source
    records, timing = read_records([s.path for s in source.samples], cache, progress=progress)
    computed += timing["computed"]
    _refuse_if_none_usable([s.path for s in source.samples], records)
    splits = [str(s) for s in plan.splits]
    result = audit_source(source, splits, plan.patients, cache, progress, seed)
    result["seconds"] = {**result["seconds"], "total": time.perf_counter() - t0, "files_computed": computed}
    from cxrkit.data.sources import left_out_notes

    result["left_out"] = left_out_notes(source)  # 24 .webp files were neither audited nor named
    if group_pattern and result.get("patients") and all(s.patient is not None for s in source.samples):
        # the table's patient column named every image, so the pattern was never asked: it was dropped without a word
        result["patients"]["pattern_unused"] = group_pattern
    if plan.patients is None:
        names = [s.path.name for s in source.samples]
        single_label = all(s.findings is None for s in source.samples)  # a patient's findings differ from visit to visit
        pattern = guess_patient_pattern(names, [s.label for s in source.samples] if single_label else None)
        n, example = ids_in_several_splits(names, splits, pattern) if pattern else (0, None)
        if n:  # not a verdict: the IDs are a guess from the names, and the user says whether they are patients
            result["patient_ids_in_names"] = {"pattern": pattern, "ids_in_two_splits": n, "example": example,
                                              "splits_given": bool(source.given_splits) and not resplit}
    return result


def duplicate_group_ids(paths: list[Path], cache_dir: str | Path | None = None, progress: bool = True) -> list[str | None]:
    """A group ID per file for byte-identical and near-identical (perceptual hash) copies, None for a file without one.

    Training passes this to :func:`cxrkit.data.dataset.load_dataset` so that, when cxrkit cuts the splits, every copy
    lands in the same split as a patient's images would; the features are the audit's own, cached per file.
    """
    records, _ = read_records(list(paths), Path(cache_dir) if cache_dir else None, progress=progress)
    _refuse_if_none_usable(paths, records)
    by_sha: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        if r.get("sha1"):
            by_sha.setdefault(r["sha1"], []).append(i)
    exact = [(g[0], j, 0) for g in by_sha.values() for j in g[1:]]
    out: list[str | None] = [None] * len(records)
    for k, group in enumerate(clusters(len(records), near_pairs([r.get("phash") for r in records]) + exact)):
        for i in group:
            out[i] = f"copies-{k}"
    return out


def _leakage_advice(source: ImageFolderSource, resplit: bool) -> str:
    """What to do about leaking splits, for where the splits came from."""
    from cxrkit.data.tables import TableSource

    if isinstance(source, TableSource) and not resplit:
        # A table's patients are already known, so --group-pattern means nothing here: the given split is the problem.
        return ("The label table's own split (its split column or the train_val_list/test_list files) puts them in two splits: "
                "add --resplit to let cxrkit cut patient-level splits itself, keeping each patient and every copy in one split")
    if isinstance(source, TableSource):
        return "Remove the copies from the table"
    return ("The split folders given on disk put them on both sides: remove the copies, give patient IDs with --group-pattern, "
            "or merge the folders so cxrkit cuts the splits itself (it keeps copies together)")


def audit_before_training(ds: object, group_pattern: str | None, allow_leakage: bool, out: Path, seed: int = 0,
                          cache_dir: str | Path | None = None, progress: bool = True, resplit: bool = False,
                          intensity_choice: dict | None = None) -> dict:
    """Audit a loaded dataset (:class:`cxrkit.data.dataset.LabelledImages`) with its training split, write
    ``audit.json`` into the run folder and refuse leaking splits unless ``allow_leakage``; returns the summary for meta.json.
    ``intensity_choice``: what ``--intensity auto`` decided, so the audit's exposure finding is said against it."""
    source = ds.source
    if isinstance(source, ArraySource):
        # Arrays (MedMNIST .npz) have no files whose format, size or bytes could be audited. (Told by the source, not by
        # "are the first 50 samples files": one link to nothing among them skipped the whole audit as "arrays in one file".)
        return {"leakage": False, "leakage_reasons": [], "allowed": False, "shortcut": False, "shortcut_auc": None, "seconds": 0.0,
                "messages": ["not audited: the images are arrays in one file (no per-file properties, duplicates or patients to check)"],
                "skipped": True}
    # The dataset's own patient IDs (label table, or --group-pattern) are the ones its split used.
    groups = list(ds.patients) if getattr(ds, "patients", None) is not None else (
        patient_ids(source.samples, group_pattern) if group_pattern else None)
    audit = audit_source(source, [str(s) for s in ds.splits], groups, Path(cache_dir) if cache_dir else None, progress, seed)
    if not ds.multilabel:  # compare the images as the model sees them (size, --intensity), not the files
        from cxrkit.data.shift import image_stats

        ok = np.asarray(ds.cache.ok)
        stats = {k: np.where(ok, v, np.nan) if k in ("mean", "std", "p5", "p95", "border") else v
                 for k, v in image_stats(ds.images).items()}
        stats["counts"] = stats["counts"] * ok[:, None]
        audit["split_shift"] = compare_splits(stats, ds.labels, ds.splits, ds.class_names)
    if intensity_choice is not None:
        audit["intensity_choice"] = intensity_choice
    save_audit(audit, out, html=False)
    v = audit["verdict"]
    if v["leakage"] and not allow_leakage:
        raise LeakageError("the splits leak: " + "; ".join(v["leakage_reasons"]) + f". Details in {out / 'audit.json'}. "
                           + _leakage_advice(source, resplit) + "; or pass --allow-leakage to train anyway (recorded in the run)")
    return {"leakage": v["leakage"], "leakage_reasons": v["leakage_reasons"], "allowed": bool(v["leakage"] and allow_leakage),
            "shortcut": v["shortcut"], "shortcut_auc": audit["shortcut_probe"].get("auc"), "messages": audit_messages(audit),
            "seconds": audit["seconds"]["total"]}
