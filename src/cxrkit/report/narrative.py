"""Metrics in plain words, with their confidence intervals (HTML fragments; class names are escaped)."""

from __future__ import annotations

from markupsafe import escape

from cxrkit.metrics.classification import MIN_FINDING_CASES

SPLIT_WORDS = {"train": "training", "val": "validation", "test": "test"}

# What each metrics.json key is called wherever a person reads it (report, model card, web page).
METRIC_WORDS = {
    "sensitivity": "sensitivity (share of disease found)",
    "specificity": "specificity (share of healthy cleared)",
    "ppv": "positive predictive value (PPV)",
    "npv": "negative predictive value (NPV)",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "f1": "F1 score",
    "roc_auc": "area under the ROC curve (AUC)",
    "pr_auc": "area under the precision-recall curve (average precision)",
    "macro_f1": "macro-averaged F1 score",
    "macro_roc_auc": "mean one-vs-rest AUC over classes",
    "mean_roc_auc": "mean AUC over findings",
    "detection_rate_positive": "findings present that were detected (pooled sensitivity)",
    "detection_rate_negative": "findings absent that were cleared (pooled specificity)",
    "label_accuracy": "label-wise accuracy (misleading, see above)",
    "exact_match": "images with every finding right",
    "decided_share": "share decided without a reader",
    "npv_ruled_out": "NPV of the cases ruled out",
    "ppv_ruled_in": "PPV of the cases ruled in",
}
# Keys whose value is a probability-like score (0.5 = chance) rather than a share of images: shown as 0.xxx.
SCORE_KEYS = frozenset({"roc_auc", "pr_auc", "macro_roc_auc", "mean_roc_auc"})


def _zero_width_text(note: str | None, auc: float | None = None, pos: str = "positive", neg: str = "negative") -> str:
    """What a zero-width AUC interval means, for the sentence after the AUC ("" when the interval has width)."""
    from cxrkit.metrics.classification import DEGENERATE_NOTE, TIED_NOTE

    if note == TIED_NOTE:
        return (" Every image got the same score: the model does not tell the classes apart at all on this set "
                "(a model that collapsed or diverged in training gives one output for everything).")
    if note == DEGENERATE_NOTE and auc is not None and auc < 0.5:
        # AUC 0.000 read "on more cases the AUC may well be lower": it is separated the wrong way round.
        return (f" The interval has zero width only because these cases happen to be separated the wrong way round: every {neg} "
                f"image scored above every {pos} image. The model's outputs are inverted on this set (classes swapped, "
                "or a shortcut that points the other way here).")
    if note == DEGENERATE_NOTE:
        return " The interval has zero width only because these cases happen to be perfectly separated; on more cases the AUC may well be lower."
    return ""


def metric_words(key: str) -> str:
    """The words for a metrics key ('ppv' -> 'positive predictive value (PPV)'); unknown keys get their underscores dropped."""
    return METRIC_WORDS.get(key, key.replace("_", " "))


def metric_text(key: str, entry: dict) -> str:
    """A metric entry as read: '92.3% (95% CI 81.0–97.0%)' for shares, '0.912 (95% CI 0.850–0.960)' for AUCs."""
    value = entry.get("value")
    if value is None:
        return "n/a"
    percent = key not in SCORE_KEYS
    ci = ci_text(entry, percent=percent)
    return (pct(value) if percent else f"{value:.3f}") + (f" ({ci})" if ci else "")


def plural(n: float, one: str, many: str | None = None) -> str:
    """'1 false alarm', '3 false alarms' (n rounded to a whole number first)."""
    n = round(n)
    return f"{n} {one if n == 1 else (many or one + 's')}"


# Folder names that say nothing about the dataset: the name is looked for one level up.
_GENERIC_FOLDERS = {"data", "dataset", "datasets", "images", "image", "imgs", "img", "files", "raw", "train", "png", "jpg", "dicom"}


def dataset_name(root: str | None) -> str | None:
    """A dataset's name from its path: the folder or file stem, skipping generic folder names ('runs/demo/data' -> 'demo')."""
    if not root:
        return None
    parts = [p for p in str(root).replace("\\", "/").rstrip("/").split("/") if p]
    for part in reversed(parts):
        stem = part.rsplit(".", 1)[0] if part.lower().endswith((".zip", ".npz", ".csv")) else part
        if stem.lower() not in _GENERIC_FOLDERS:
            return stem
    return parts[-1] if parts else None


def validation_chose(training: dict) -> str:
    """What a run's validation split chose, from its meta.json ``training``: the threshold, and the checkpoint too
    unless the last epoch was kept (runs saved before ``keep`` existed kept the best)."""
    return "the checkpoint and threshold" if training.get("keep", "best") == "best" else "the threshold"


def split_words(key: str) -> str:
    """How a metrics key reads in sentences: "test" -> "test", "external:sakha" -> "external (sakha)"."""
    if key.startswith("external:"):
        return f"external ({key.split(':', 1)[1]})"
    return SPLIT_WORDS.get(key, key)


def against_threshold(p: float, threshold: float, digits: int = 3) -> tuple[str, str]:
    """A probability and its threshold as text, with up to 6 decimals so that one just below reads as below, not equal."""
    for d in range(digits, 7):
        a, b = f"{p:.{d}f}", f"{threshold:.{d}f}"
        if (a == b) == (p == threshold):
            break
    return a, b


def pct(x: float | None) -> str:
    """0.9234 -> '92.3%'; None -> 'n/a'."""
    return "n/a" if x is None else f"{100 * x:.1f}%"


def ci_text(entry: dict, percent: bool = True) -> str:
    """'95% CI 81.0–97.0%' for a metric entry, or '' when it has no interval."""
    ci = entry.get("ci")
    if not ci:
        return ""
    if percent:
        return f"95% CI {100 * ci[0]:.1f}–{100 * ci[1]:.1f}%"
    return f"95% CI {ci[0]:.3f}–{ci[1]:.3f}"


def ci_words(entry: dict, percent: bool = True) -> str:
    """:func:`ci_text` for a sentence: "no interval" where there is none (a sentence read "ROC-AUC 0.448 ():")."""
    note = str(entry.get("note") or "")
    why = note.removesuffix(": no interval") if note.endswith(": no interval") else ""
    return ci_text(entry, percent) or ("no interval: " + why if why else "no interval")


def binary_sentences(m: dict, split_words: str) -> list[str]:
    """Sentences a clinician can read for a binary evaluation."""
    neg, pos = (escape(c) for c in m["classes"])
    c, mm = m["confusion"], m["metrics"]
    p, n = m["n_positive"], m["n_negative"]
    out = []
    if p:
        out.append(
            f"Of the {p} images labelled <b>{pos}</b> in the {split_words} set, the model found {c['tp']} and missed {c['fn']}: "
            f"sensitivity {pct(mm['sensitivity']['value'])} ({ci_words(mm['sensitivity'])})."
        )
    if n:
        out.append(
            f"Of the {n} images labelled <b>{neg}</b>, it correctly cleared {c['tn']} and raised {plural(c['fp'], 'false alarm')}: "
            f"specificity {pct(mm['specificity']['value'])} ({ci_words(mm['specificity'])})."
        )
    if not (p and n):  # a one-class set: PPV and NPV would be 0% or 100% by construction
        out.append(f"This set has {'no' if not p else 'only'} {pos} images, so ROC-AUC, PPV and NPV cannot be measured on it.")
        return out
    if mm["ppv"]["value"] is None:
        out.append(f"The model never said {pos} on this set, so its PPV is undefined.")
    else:
        out.append(
            f"When it says {pos} it is right {pct(mm['ppv']['value'])} of the time (PPV, {ci_words(mm['ppv'])}); "
            + (
                f"when it says {neg} it is right {pct(mm['npv']['value'])} of the time (NPV, {ci_words(mm['npv'])})."
                if mm["npv"]["value"] is not None
                else f"it never said {neg}, so NPV is undefined."
            )
        )
    if mm["roc_auc"]["value"] is not None:
        out.append(
            f"ROC-AUC {mm['roc_auc']['value']:.3f} ({ci_words(mm['roc_auc'], percent=False)}): the chance that a random {pos} image "
            f"gets a higher score than a random {neg} image, whatever threshold is used."
            + _zero_width_text(mm["roc_auc"].get("note"), mm["roc_auc"]["value"], pos, neg)
        )
    prevalence = p / (p + n) if p + n else 0
    out.append(
        f"{pos} makes up {pct(prevalence)} of this set. PPV and NPV depend on that share: in a screening population where "
        f"{pos} is rarer, PPV will be lower and NPV higher than shown here."
    )
    return out


def multiclass_sentences(m: dict, split_words: str) -> list[str]:
    """One sentence per class for a multi-class evaluation, plus overall accuracy."""
    out = []
    for raw_name, e in m["per_class"].items():
        name = escape(raw_name)
        s = e["sensitivity"]
        if e["ppv"]["value"] is None:  # no image was called this class, so there is no share of right calls to give
            says = f"it never says {name}."
        else:
            says = f"when it says {name} it is right {pct(e['ppv']['value'])} of the time" + (f" ({ci_words(e['ppv'])})." if e["ppv"]["ci"] else ".")
        if not s["denominator"]:  # was "Of the 0 covid images ..., the model labelled 0 as covid (sensitivity n/a, )"
            out.append(f"The {split_words} set has no <b>{name}</b> images, so how well the model finds {name} is not measured here; {says}")
            continue
        out.append(
            f"Of the {s['denominator']} <b>{name}</b> images in the {split_words} set, the model labelled {s['numerator']} as {name} "
            f"(sensitivity {pct(s['value'])}, {ci_words(s)}); {says}"
        )
    acc = m["metrics"]["accuracy"]
    out.append(f"Overall {acc['numerator']} of {acc['denominator']} images were put in the right class: accuracy {pct(acc['value'])} ({ci_words(acc)}).")
    return out


def multilabel_sentences(m: dict, split_words: str) -> list[str]:
    """Sentences for a multi-label evaluation: mean AUC, detection rates, and why accuracy misleads."""
    mm, base = m["metrics"], m["all_negative_baseline"]
    out = []
    auc = mm["mean_roc_auc"]
    if auc["value"] is not None:
        measured = {k: e["roc_auc"]["value"] for k, e in m["per_label"].items() if e["roc_auc"]["value"] is not None}
        # The mean, best and worst are of the findings seen on enough images: one seen once "led" with 0.966.
        per = {k: v for k, v in measured.items() if k in m.get("findings_in_mean_auc", measured)}
        left = [k for k in measured if k not in per]
        best, worst = max(per, key=per.get), min(per, key=per.get)

        def named(k: str) -> str:
            # A finding's AUC from one or two images is noise; its count says so where the figure is read.
            e = m["per_label"][k]
            return f"<b>{escape(k)}</b> {per[k]:.3f} ({plural(e['support'], 'image')} with it{', no interval' if not e['roc_auc']['ci'] else ''})"

        unit = "patients" if m.get("intervals_by") == "patient" else "images"
        out.append(
            f"Mean ROC-AUC over the {len(per)} findings with at least {MIN_FINDING_CASES} {unit} with and without them in the "
            f"{split_words} set: {auc['value']:.3f} ({ci_words(auc, percent=False)}); best {named(best)}, worst {named(worst)}."
            + (f" Left out, seen on too few {unit} for a figure to mean much: {', '.join(escape(k) for k in left)}." if left else "")
        )
    elif auc.get("note"):
        out.append(f"No mean ROC-AUC over findings: {escape(auc['note'])}.")
    pos, neg = mm["detection_rate_positive"], mm["detection_rate_negative"]
    out.append(
        f"At the per-finding thresholds chosen on validation data, the model detected {pos['numerator']} of {pos['denominator']} "
        f"findings present ({pct(pos['value'])}, {ci_words(pos)}) and correctly cleared {neg['numerator']} of {neg['denominator']} "
        f"findings absent ({pct(neg['value'])}, {ci_words(neg)}); the table below gives these detection rates per finding."
    )
    cal = m.get("calibration_per_finding")
    if cal:
        own, after = cal["model"]["overall"], (cal.get("calibrated") or {}).get("overall")
        said = (f"The model's own probabilities average {own['mean_probability']:.3f} against {pct(own['share_with_it'])} of "
                f"image-finding pairs positive (mean ECE over findings {own['ece']:.3f})" if own["ece"] is not None else "")
        if said and after:
            out.append(f"{said}; calibrated, they average {after['mean_probability']:.3f} (mean ECE {after['ece']:.3f}).")
        elif said and own["mean_probability"] > 2 * own["share_with_it"]:  # class-weighted training inflates rare findings
            out.append(f"{said}: read them as scores, not chances; `cxrkit calibrate` fits a map per finding on validation images "
                       "without changing any decision.")
        elif said:
            out.append(f"{said}.")
    out.append(
        f"<b>Accuracy is meaningless here.</b> {m['n'] - m['n_with_finding']} of the {m['n']} images have no finding and most "
        f"image-finding pairs are negative, so predicting \"no finding\" everywhere scores a label-wise accuracy of "
        f"{pct(base['label_accuracy']['value'])} (exactly right on {pct(base['exact_match']['value'])} of images); this model "
        f"scores {pct(mm['label_accuracy']['value'])}. Judge it by the per-finding AUCs, sensitivities and specificities."
    )
    return out


def patients_sentence(m: dict) -> str | None:
    """Says that the intervals count patients, when some patient has several images in the evaluated set."""
    if m.get("intervals_by") != "patient":
        return None
    unnamed = m.get("images_without_patient_id")
    who = f"{m['n_patients']} patients" + (f" ({unnamed} of them images without a patient ID, each counted as its own)" if unnamed else "")
    return (f"These {m['n']} images come from {who}, some with several images; a patient's images are not "
            "independent evidence, so these intervals, and those of the operating points, the WHO check, the subgroups and the "
            "readers' comparison, the calibration figures and the threshold's transfer to another site, count patients, not "
            "images (never narrower than an image count would give).")


def evaluation_sentences(m: dict, split_words: str) -> list[str]:
    """The sentences of an evaluation of any task."""
    task = {"binary": binary_sentences, "multiclass": multiclass_sentences, "multilabel": multilabel_sentences}[m["task"]]
    return [*task(m, split_words), *filter(None, [patients_sentence(m)])]


def screening_sentences(s: dict, positive: str) -> list[str]:
    """What a threshold means per 1,000 people screened at a given prevalence (from ``screening_outcomes``)."""
    pos = escape(positive)
    n, prev = s["screened"], s["prevalence"]
    out = [
        f"In a population where {pct(prev)} have {pos}, of every {n:,} people screened about {s['with_disease']:.0f} have it: "
        f"the model finds {s['found']:.0f} and misses {s['missed']:.0f}, and raises {plural(s['false_alarms'], 'false alarm')} "
        f"among the {n - s['with_disease']:.0f} without it.",
        f"{s['confirmatory_tests']:.0f} confirmatory tests are needed per {n:,} screened"
        + (f" ({s['tests_per_case_found']:.1f} per case found)." if s["tests_per_case_found"] else "."),
        f"At this prevalence PPV is {pct(s['ppv']['value'])} (95% CI {pct(s['ppv']['ci'][0])}–{pct(s['ppv']['ci'][1])}) and "
        f"NPV {pct(s['npv']['value'])} ({pct(s['npv']['ci'][0])}–{pct(s['npv']['ci'][1])}), by Bayes' rule from the measured "
        "sensitivity and specificity.",
    ]
    return out


def threshold_spread_sentence(spread: dict | None, threshold: float | None, classes: list[str]) -> str | None:
    """How far another validation sample of the same size would move the threshold and this split's sensitivity and
    specificity (from :func:`cxrkit.metrics.thresholds.threshold_spread`); None when there is no spread to tell."""
    if not spread or not spread.get("threshold") or threshold is None:
        return None
    n, t, se, sp = spread["n_val"], spread["threshold"], spread["sensitivity"], spread["specificity"]
    moved = [f"{what} {pct(r[0])}–{pct(r[1])}" for what, r in (("sensitivity", se), ("specificity", sp)) if r]
    text = (f"The threshold {threshold:.3f} ({escape(spread['rule'])}) was chosen on {n['positive'] + n['negative']} validation images "
            f"({n['positive']} {escape(classes[1])}, {n['negative']} {escape(classes[0])}); another validation sample of that size "
            f"would have chosen {'–'.join(against_threshold(t[0], t[1]))}")
    if moved:
        text += ", giving " + " and ".join(moved) + " here"
    text += (f" (the central {spread['confidence']:.0%} of {spread['resamples']:,} bootstrap resamples of validation"
             + (", of its images and of its patients with all their images, the wider" if spread.get("by_patient") else "")
             + "; the intervals above hold the threshold fixed)")
    if spread.get("failed_resamples"):
        text += f"; in {spread['failed_resamples']} of them no threshold met the guarantee"
    return text + "."


def cases_to_confirm_sentence(who: dict | None, classes: list[str]) -> str | None:
    """How many cases would prove the WHO targets at the measured rates, when only the point estimates meet them."""
    need = (who or {}).get("cases_to_confirm")
    if not need:
        return None
    parts = []
    for key, metric, cls in (("positive", "sensitivity", classes[1]), ("negative", "specificity", classes[0])):
        if who[metric]["ci"][0] >= who["targets"][metric]:
            continue
        have = who[metric]["denominator"]
        if need[key] is None:
            beyond = who[metric]["value"] > who["targets"][metric]  # proven only by more cases than cases_to_confirm counts to
            parts.append(f"more than 100,000 {escape(cls)} images for {metric} ≥ {pct(who['targets'][metric])}" if beyond else
                         f"more {escape(cls)} images than any number ({metric} {pct(who[metric]['value'])} only equals its target)")
        else:
            parts.append(f"about {need[key]:,} {escape(cls)} images (this split has {have:,}) for {metric} ≥ {pct(who['targets'][metric])}")
    return ("To prove the targets at the rates measured here, the lower 95% bounds need " + " and ".join(parts) + ".") if parts else None


def _points(x: float) -> str:
    """0.079 -> '+7.9'; a difference in percentage points with its sign."""
    return f"{100 * x:+.1f}".replace("-", "−")


def reader_sentences(r: dict) -> list[str]:
    """The model against one reader on the same images (from :func:`cxrkit.metrics.readers.compare_with_reader`)."""
    out = []
    for key, missed, found in (("sensitivity", "missed", "found"), ("specificity", "flagged", "cleared")):
        e = r[key]
        if e["model"]["value"] is None:
            continue
        d = e["difference"]
        more, fewer = d["discordant"]
        out.append(f"{key.capitalize()}: the model {pct(e['model']['value'])} ({ci_words(e['model'])}), the reader {pct(e['reader']['value'])} "
                   f"({ci_words(e['reader'])}). The model {found} {more} that the reader {missed} and {missed} {fewer} that the reader "
                   f"{found}: model − reader {_points(d['value'])} points (95% CI {_points(d['ci'][0])} to {_points(d['ci'][1])}; "
                   f"{'p = ' if d.get('test') else 'McNemar p = '}{d['p_value']:.2g}).")
    out.append(f"They agree on {pct(r['agreement']['value'])} of the images ({ci_words(r['agreement'])}).")
    if r.get("n_patients"):  # the figures above are the patient-level ones, not Newcombe's and McNemar's alone
        out.append(f"These {r['n']} images come from {r['n_patients']} patients: each interval of a difference is the wider of "
                   "Newcombe's and a bootstrap of whole patients, and each p the larger of McNemar's exact test and Durkalski's "
                   "clustered McNemar test.")
    at_spec, at_sens = r.get("sensitivity_at_reader_specificity"), r.get("specificity_at_reader_sensitivity")
    if at_spec and at_sens:
        a, b = at_spec["difference"], at_sens["difference"]
        out.append(f"Set as specific as the reader ({pct(r['specificity']['reader']['value'])}), the model would find {pct(at_spec['value'])} "
                   f"of cases ({_points(a['value'])} points against the reader, 95% CI {_points(a['ci'][0])} to {_points(a['ci'][1])}); "
                   f"set as sensitive ({pct(r['sensitivity']['reader']['value'])}), it would clear {pct(at_sens['value'])} of the images "
                   f"without the disease ({_points(b['value'])}, {_points(b['ci'][0])} to {_points(b['ci'][1])}). Both thresholds are "
                   "chosen on these images: they place the reader against the model's ROC curve, they are not thresholds to deploy.")
        side = [1 if d["ci"][0] > 0 else -1 if d["ci"][1] < 0 else 0 for d in (a, b)]
        if side == [1, 1]:
            out.append("The reader's operating point lies below the model's ROC curve: at the reader's own trade-off the model does better.")
        elif side == [-1, -1]:
            out.append("The reader's operating point lies above the model's ROC curve: at the reader's own trade-off the reader does better.")
        elif side == [0, 0]:
            out.append("At the reader's own trade-off these images cannot tell the model and the reader apart (the intervals include no difference).")
        else:  # one comparison clear, the other not (e.g. both at 100% sensitivity): a verdict on both hid the clear one
            said = {1: "the model does better", -1: "the reader does better", 0: "these images cannot tell them apart"}
            out.append(f"As specific as the reader, {said[side[0]]}; as sensitive as the reader, {said[side[1]]} "
                       "(by whether each interval includes no difference).")
    return out
