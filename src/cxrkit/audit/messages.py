"""The audit's findings in plain sentences (for the terminal, the run record and the reports)."""

from __future__ import annotations


def count(n: int, word: str, many: str | None = None) -> str:
    """'1 group', '3 groups': counts in sentences without '(s)'."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def patient_names_message(n: int, example: str, pattern: str, splits_given: bool = False) -> str:
    """The warning for patient-like IDs in file names that an image-level split (``splits_given``: the data's own) put in two splits."""
    has = "has" if n == 1 else "have"
    if splits_given:  # --group-pattern alone changes nothing here: cxrkit did not cut these splits
        return (f"the file names look like they carry patient IDs, and {n} of these IDs (e.g. {example}) {has} images in two of "
                f"the splits the data gives; if they are patients, add --resplit --group-pattern '{pattern}' so cxrkit cuts "
                "patient-level splits itself, or move those images so each patient sits in one split")
    return (f"the file names look like they carry patient IDs, and {n} of these IDs (e.g. {example}) "
            f"{has} images in two splits, because the images were split one by one; if they are patients, "
            f"add --group-pattern '{pattern}' so each patient stays in one split")


# The tags of findings that say the figures or the model may be wrong; `train --quiet` still prints them.
WARNING_TAGS = ("LEAKAGE", "POSSIBLE LEAKAGE", "SHORTCUT", "EXPOSURE SHORTCUT", "SPLIT SHIFT", "PATIENT IDS", "LABELS")


def is_warning(message: str) -> bool:
    """Whether a training or audit message warns (a tagged audit finding, or "warning: ..."), rather than informs."""
    text = message.removeprefix("audit: ")
    # the trainer's own patient-ID finding ("splits: the file names look like they carry patient IDs ...") is the audit's
    # POSSIBLE LEAKAGE, said before the audit runs
    return (message.startswith("warning:") or any(text.startswith(f"{tag}:") for tag in WARNING_TAGS)
            or message.startswith("splits: the file names look like they carry patient IDs"))


def patient_messages(audit: dict) -> list[str]:
    """What the audit found about patient IDs: images without one, placeholders, one ID holding a large share."""
    pat = audit.get("patients")
    if not pat:
        return []
    total = pat["files_with_id"] + pat["files_without_id"]
    out = []
    held = pat.get("placeholders") or {}
    if held:
        which = ", ".join(f"{k} ({v})" for k, v in held.items())
        out.append(f"PATIENT IDS: {sum(held.values())} image(s) carry a placeholder patient ID ({which}), read as no ID: each counts "
                   "as its own patient")
    if pat["files_without_id"]:
        by = ", ".join(f"{k} {v}" for k, v in (pat.get("without_id_by_class") or {}).items())
        out.append(f"PATIENT IDS: {pat['files_without_id']} of {total} images have no patient ID{f' ({by})' if by else ''}: they are "
                   "split and counted one by one, so a patient among them can sit in two splits; give every image its patient's ID")
    big = pat.get("largest")
    if big and big["images"] >= 10 and big["images"] > 0.1 * total:
        out.append(f"PATIENT IDS: one ID, {big['id']}, holds {big['images']} of {total} images ({100 * big['images'] / total:.0f}%): they "
                   "all go to one split and count as one patient; if they are not one person (a placeholder, a ward), give them their own IDs")
    if pat.get("pattern_unused"):
        out.append(f"patients: --group-pattern '{pat['pattern_unused']}' was not used: the label table's patient column names every "
                   "image's patient (the pattern only names images the table leaves without an ID)")
    if not any(m.startswith("PATIENT IDS") for m in out):
        shared = sum((pat.get("shared") or {}).values())
        out.append(f"patients: {pat['ids']} patient IDs on {total} images" + ("; no patient in two splits" if not shared else ""))
    return out


def label_messages(audit: dict) -> list[str]:
    """Classes so small beside a near-identical name that they look like a misspelling ("Nromal", 1 image, beside "Normal")."""
    if audit.get("multilabel"):
        return []
    from difflib import get_close_matches

    totals: dict[str, int] = {}
    for counts in (audit.get("class_balance") or {}).values():  # audits read back from older files may lack it
        for c, n in counts.items():
            totals[c] = totals.get(c, 0) + n
    out = []
    for c, n in sorted(totals.items()):
        others = [o for o in totals if o != c and totals[o] > 5 * n]
        twin = get_close_matches(c.casefold(), [o.casefold() for o in others], n=1, cutoff=0.7)
        if n <= 5 and twin:
            name = next(o for o in others if o.casefold() == twin[0])
            out.append(f"LABELS: class {c!r} has {n} image(s), beside {name!r} with {totals[name]}: a misspelling? Correct the label, or it "
                       "trains as a class of its own")
    return out


def audit_messages(audit: dict) -> list[str]:
    """The audit's findings as plain sentences, most serious first."""
    out = []
    v = audit["verdict"]
    for reason in v["leakage_reasons"]:
        out.append(f"LEAKAGE: {reason}" + ("" if reason.endswith("inflated") else "; test figures would be inflated"))
    named = audit.get("patient_ids_in_names")
    if named:
        out.append("POSSIBLE LEAKAGE: " + patient_names_message(named["ids_in_two_splits"], named["example"], named["pattern"],
                                                                named.get("splits_given", False)))
    out += patient_messages(audit) + label_messages(audit)
    p = audit["shortcut_probe"]
    if p.get("warning"):
        g = ", ".join(f"{f['feature']} (AUC {f['auc']:.2f}, {f['direction']} in {f['class']})" for f in p["giveaways"])
        out.append(f"SHORTCUT: a classifier that never sees anatomy separates the classes with cross-validated AUC {p['auc']:.2f} "
                   f"(> {p['threshold']}); the giveaways: {g}. A model can learn these instead of the disease: after training, "
                   "`cxrkit stress RUN` (binary runs) and the report's \"where does it look\" show whether yours did")
    e = audit.get("exposure_probe") or {}  # audits saved before the exposure probe have none
    chosen = audit.get("intensity_choice") or {}  # a training's --intensity auto, decided on training + validation only
    if e.get("warning") and chosen.get("intensity") == "none" and chosen.get("auc") is not None:
        # Said alone, beside "intensity: ... do not tell the classes apart; images kept as they are", it read as a contradiction.
        out.append(f"EXPOSURE SHORTCUT on all the images, test split included: {e['message']}. On the training and validation images "
                   f"alone the probe's AUC is {chosen['auc']:.3f}, below the shortcut threshold, so --intensity auto kept the images as "
                   "they are: the test split's exposure differs from theirs, and its figures may partly reflect exposure; `cxrkit stress "
                   "RUN` measures whether the model relies on it (or train with --intensity histeq)")
    elif e.get("warning") and audit.get("multilabel"):  # --intensity auto decides nothing for multi-label tasks
        out.append(f"EXPOSURE SHORTCUT: {e['message']}. For a multi-label task `cxrkit train` keeps the images as they are unless "
                   "told otherwise: train with --intensity histeq to take exposure away from the model")
    elif e.get("warning"):
        out.append(f"EXPOSURE SHORTCUT: {e['message']}. `cxrkit train` histogram-equalises each image when it finds this in the "
                   "training images (--intensity auto, the default); `cxrkit stress RUN` measures whether a model relies on exposure")
    for f in audit.get("split_shift", []):
        out.append(f"SPLIT SHIFT: {f['message']}")
    if v["conflicting_labels"]:
        out.append(f"{count(v['conflicting_labels'], 'group')} of identical or near-identical images carry different labels")
    d = audit["duplicates"]
    if d["exact"]["redundant_files"] or d["near"]["redundant_files"]:
        out.append(f"duplicates: {count(d['exact']['clusters'], 'group')} of byte-identical files ({d['exact']['redundant_files']} redundant), "
                   f"{count(d['near']['clusters'], 'group')} of near-identical images ({d['near']['redundant_files']} redundant)")
    if audit["corrupt"]:
        blank = sum(bool(c.get("unusable")) for c in audit["corrupt"])
        broken = len(audit["corrupt"]) - blank
        out += [f"{count(broken, 'file')} cannot be decoded"] if broken else []
        out += [f"{count(blank, 'image')} {'is' if blank == 1 else 'are'} blank (one grey level, or nearly: fewer than 8 levels apart) "
                f"or too small to be a radiograph: left out of training and evaluation, e.g. {next(c['path'] for c in audit['corrupt'] if c.get('unusable'))}"
                ] if blank else []
    out += audit.get("left_out", [])  # audits saved before it have none
    if p.get("auc") is not None and not p["warning"]:
        out.append(f"shortcut probe: AUC {p['auc']:.2f} from non-anatomical features (threshold {p['threshold']}), no strong shortcut found")
    if e.get("auc") is not None and not e["warning"]:
        out.append(f"exposure probe{' (all images, test split included)' if chosen else ''}: {e['message']}")
    return out
