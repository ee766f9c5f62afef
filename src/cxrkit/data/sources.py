"""Find labelled images on disk: ``<root>/<split>/<class>/*``, ``<root>/<class>/*`` or a ``.zip`` of either."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import unicodedata
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrkit.data.decode import is_image_file

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
NEGATIVE_NAMES = {"normal", "healthy", "negative", "no finding", "nofinding", "no_finding", "no-finding", "none"}


class DatasetError(ValueError):
    """Raised when a dataset folder does not have a layout cxrkit can read."""


@dataclass(frozen=True)
class Sample:
    """One labelled image: its path, its class name, the split its folder (or table) names (or None),
    its findings when the task is multi-label (``label`` then joins them with ``|``), its patient ID
    when the source records one and its site when the data come from several (:mod:`cxrkit.data.multisite`)."""

    path: Path
    label: str
    split: str | None = None
    findings: tuple[str, ...] | None = None
    patient: str | None = None
    site: str | None = None


@dataclass
class ImageFolderSource:
    """Images found under a root folder, with class names taken from folder names."""

    root: Path
    samples: list[Sample]
    classes: list[str]
    layout: str  # "split/class" or "class"
    ignored_files: list[Path] = field(default_factory=list)
    given: Path | None = None  # what the user named when it is not ``root``: a .zip, extracted under ``root``
    # Images lying in the root or in a split folder, outside any class folder: they have no label and are left out.
    unlabelled_images: list[Path] = field(default_factory=list)

    @property
    def shown(self) -> Path:
        """The dataset as the user named it (``data.zip``, not the cache folder it was extracted to)."""
        return self.given or self.root

    @property
    def given_splits(self) -> list[str]:
        """Split names present in the folder layout, in train/val/test order."""
        present = {s.split for s in self.samples if s.split}
        return [s for s in ("train", "val", "test") if s in present]

    @property
    def multilabel(self) -> bool:
        """Whether samples carry several findings each (tables and MedMNIST arrays can; folders cannot)."""
        return any(s.findings is not None for s in self.samples)

    def relpath(self, path: Path) -> str:
        """Path of an image relative to the dataset root, with forward slashes."""
        return Path(path).relative_to(self.root).as_posix()

    def content_stamp(self, rel: str) -> int:
        """A number that changes when an image's file changes: its byte size."""
        try:
            return (self.root / rel).stat().st_size
        except OSError:  # a link to nothing: its reading fails and is reported
            return -1


def file_stamp(path: str | Path) -> str:
    """``size|mtime_ns`` of a file, for cache keys; ``missing`` for a link to nothing, whose reading then fails and is reported
    (the stat itself stopped a whole training, audit or evaluation at one dangling link)."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}|{st.st_mtime_ns}"


def cache_root() -> Path:
    """Folder for cxrkit's caches: $CXRKIT_CACHE, else $XDG_CACHE_HOME/cxrkit, else ~/.cache/cxrkit."""
    var = "CXRKIT_CACHE" if os.environ.get("CXRKIT_CACHE") else "XDG_CACHE_HOME" if os.environ.get("XDG_CACHE_HOME") else None
    base = Path(os.environ.get("CXRKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cxrkit"
    ))
    if base.exists() and not base.is_dir():  # was "<file>/audit: Not a directory", naming neither the variable nor the cache
        fix = f"point ${var} at a folder" if var else "move that file away"
        raise ValueError(f"cxrkit's cache folder {base}{f' (from ${var})' if var else ''} is a file; {fix}, or give --cache-dir")
    return base


def extract_zip(zip_path: Path, cache_dir: Path | None = None) -> Path:
    """Extract a zip archive once into the cache and return the folder holding its dataset.

    The extraction is keyed by the archive's absolute path, size and modification time, written to a
    temporary folder and renamed when complete, so an interrupted extraction is never mistaken for a
    finished one. A single top-level folder inside the archive is descended into.
    """
    st = zip_path.stat()
    stamp = f"{zip_path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    try:  # an archive with Windows separators was once extracted as flat files: a new key, not that unusable folder
        with zipfile.ZipFile(zip_path) as zf:
            stamp += "|/" if any("\\" in n for n in zf.namelist()) else ""
    except (zipfile.BadZipFile, OSError, EOFError):
        pass  # said when it is extracted
    key = hashlib.sha1(stamp.encode()).hexdigest()[:16]
    dest = (cache_dir or cache_root()) / "zips" / f"{zip_path.stem}-{key}"
    if not dest.exists():
        tmp = dest.with_name(dest.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            with zipfile.ZipFile(zip_path) as zf:
                members = zf.infolist()
                for m in members:  # Windows tools (PowerShell 5's Compress-Archive) write 'normal\\a.png': one file, no folders
                    m.filename = m.filename.replace("\\", "/")
                members = [m for m in members if not m.filename.startswith("__MACOSX/")]
                # zipfile would strip an absolute path or '..' and extract the member inside tmp anyway: '/abs/x.png' became a
                # class 'abs', and 'tb/../../x.png' an image of tb. Such an archive was not made from a dataset folder.
                unsafe = [m.filename for m in members if m.filename.startswith("/") or ".." in m.filename.split("/")
                          or re.match(r"^[A-Za-z]:", m.filename)]
                if unsafe:
                    raise DatasetError(f"{zip_path} holds {unsafe[0]!r}{f' and {len(unsafe) - 1} more' if len(unsafe) > 1 else ''}: "
                                       "paths that are absolute or climb out with '..' are not a dataset's files; "
                                       "re-create the archive from the dataset folder (e.g. `zip -r data.zip folder/`)")
                _check_names(zip_path, members)
                _check_extractable(zip_path, members, tmp)
                zf.extractall(tmp, members=members)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DatasetError(f"{zip_path} is not a readable zip archive: {exc}") from exc
        except (RuntimeError, NotImplementedError) as exc:  # a password, or a method zipfile lacks (Deflate64, LZMA variants)
            shutil.rmtree(tmp, ignore_errors=True)
            raise DatasetError(f"{zip_path} cannot be extracted: {exc}; re-create it unencrypted with plain deflate "
                               f"(e.g. `zip -r data.zip folder/`) or give the folder itself") from exc
        except BaseException:  # a full disk or Ctrl-C: no half-extracted folder left in the cache
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        tmp.rename(dest)
    entries = [p for p in dest.iterdir() if not p.name.startswith(".")]
    while len(entries) == 1 and entries[0].is_dir() and entries[0].name.lower() not in SPLIT_ALIASES:
        dest = entries[0]
        entries = [p for p in dest.iterdir() if not p.name.startswith(".")]
    return dest


def _check_names(zip_path: Path, members: list[zipfile.ZipInfo]) -> None:
    """Refuse names that would not come out as written: one name twice (the second file silently replaced the first, a tb
    image by a healthy one), and non-ASCII names without the archive's UTF-8 flag (decoded as cp437: 'tuberculosé' became
    a class 'tuberculosΘ')."""
    seen: set[str] = set()
    for m in members:
        name = m.filename.rstrip("/")
        if name in seen and not m.is_dir():
            raise DatasetError(f"{zip_path} holds {name!r} twice: extracting it keeps one of the two files; re-create the archive "
                               "from the dataset folder (e.g. `zip -r data.zip folder/`)")
        seen.add(name)
    guessed = [m.filename for m in members if not m.flag_bits & 0x800 and not m.filename.isascii()]
    if guessed:
        raise DatasetError(f"{zip_path} names {len(guessed)} file(s) in an unstated encoding (e.g. {guessed[0]!r}, read as cp437): "
                           "re-create it with UTF-8 names (`zip -r`, 7-Zip or Python's zipfile write them), or give the folder itself")


def _check_extractable(zip_path: Path, members: list[zipfile.ZipInfo], dest: Path) -> None:
    """Refuse a password-protected archive, or one whose contents would not fit on the cache's disk, before writing any of it."""
    locked = [m.filename for m in members if m.flag_bits & 0x1]
    if locked:
        raise DatasetError(f"{zip_path} is password-protected ({len(locked)} file(s), e.g. {locked[0]}); "
                           f"extract it yourself and give the folder, or re-create it without a password")
    total = sum(m.file_size for m in members)
    free = shutil.disk_usage(dest).free
    if total > free:
        raise DatasetError(f"{zip_path} holds {total / 1e9:.1f} GB uncompressed but the cache at {dest.parent} has {free / 1e9:.1f} GB free; "
                           f"extract it yourself somewhere larger and give that folder, or set CXRKIT_CACHE to a larger disk")


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def walk_images(folder: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """Every file under ``folder``, sorted, as (images, other files, hidden): names starting with ``.`` and folders
    starting with ``__`` (``__MACOSX``) are hidden and not entered; the one folder walk of training, evaluation,
    prediction and explanation, so that they all read the same files of a folder."""
    images, others, hidden = [], [], []
    _walk(Path(folder), images, others, hidden, None)
    return images, others, hidden


def _walk(folder: Path, images: list[Path], others: list[Path], hidden: list[Path], reals: dict[str, Path] | None) -> None:
    """Depth-first, sorted walk of ``folder`` into the three lists (``reals``: each image's real path -> its path here).

    Linked sub-folders are entered like others (they were silently left out, unlike a linked class folder); a link back
    to a folder above it (a loop) is not, its files are listed once already. A folder that cannot be read is an error:
    leaving its images out without a word would train on part of a class (or none of it).
    """
    stack = [(folder, os.path.realpath(folder))]
    while stack:
        here, real = stack.pop()
        try:
            with os.scandir(here) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise DatasetError(f"the folder {here} cannot be read ({exc.strerror or exc}), so its images would be left out; "
                               "make it readable, or move it out of the dataset") from None
        subdirs, hidden_files = [], []
        for e in entries:
            p = here / e.name
            try:
                is_dir = e.is_dir()
            except OSError:  # a link cxrkit may not follow: listed as a file, whose reading then fails and is reported
                is_dir = False
            if is_dir:
                if e.name.startswith((".", "__")):
                    hidden.append(p)  # a folder's hidden sub-folders before its hidden files, as os.walk listed them
                else:
                    subdirs.append(e)
            elif e.name.startswith("."):
                hidden_files.append(p)
            elif is_image_file(p):
                images.append(p)
                if reals is not None:  # the same file reached twice through links would be two images, maybe of two classes
                    key = os.path.realpath(p) if e.is_symlink() else os.path.join(real, e.name)
                    if reals.setdefault(key, p) != p:
                        raise DatasetError(f"{reals[key]} and {p} are the same file (reached through a link), so it would be "
                                           "counted twice; remove the link that makes the second name")
            else:
                others.append(p)
        hidden += hidden_files
        for e in reversed(subdirs):  # pushed in reverse: popped, and so listed, in name order
            sub = os.path.realpath(e.path) if e.is_symlink() else os.path.join(real, e.name)
            if not Path(real).is_relative_to(sub):
                stack.append((here / e.name, sub))


# Image formats cxrkit does not read: a class folder of nothing else would vanish from the classes without a word.
UNREAD_IMAGE_SUFFIXES = (".webp", ".gif", ".jp2", ".j2k", ".heic", ".heif", ".avif", ".nii", ".gz", ".pgm", ".ppm")


def left_out_notes(source: Any) -> list[str]:
    """Sentences about images a dataset source left out: in formats cxrkit does not read (.webp, .gif ...), or lying outside
    any class folder (no label)."""
    unread = [p for p in getattr(source, "ignored_files", []) if Path(p).suffix.lower() in UNREAD_IMAGE_SUFFIXES]
    loose = getattr(source, "unlabelled_images", [])
    out = []
    if unread:
        out.append(f"{len(unread)} image(s) in a format cxrkit does not read were left out (e.g. {unread[0]}); convert them to PNG "
                   "(or JPEG) to use them")
    if loose:
        out.append(f"{len(loose)} image(s) outside any class folder were left out, having no label (e.g. {loose[0]}); move each "
                   "into its class folder to use it")
    unlisted = getattr(source, "unlisted_images", [])
    if unlisted:  # a table of part of the folder: the rest dropped without a word
        out.append(f"{len(unlisted)} image(s) under {source.root} are not listed in {Path(source.table).name} and were left out "
                   f"(e.g. {unlisted[0]}); add rows for them to use them")
    return out


def _images_under(folder: Path, ignored: list[Path], reals: dict[str, Path] | None = None) -> list[Path]:
    images, others = [], []
    _walk(folder, images, others, [], reals)
    unread = [p for p in others if p.suffix.lower() in UNREAD_IMAGE_SUFFIXES]
    if unread and not images:
        raise DatasetError(f"the class folder {folder} holds {len(unread)} image(s) in a format cxrkit does not read (e.g. {unread[0].name}) "
                           "and none it reads (PNG, JPEG, BMP, TIFF, DICOM), so the class would be left out; convert them, or move the folder out")
    ignored += others
    return images


def _check_nesting(found: dict[Path, list[Path]]) -> None:
    """Refuse class folders whose sub-folders look like another level of the layout, not parts of one class: a sub-folder
    named like a class or a split (``normal/tb/``), a mask folder (``COVID/masks/``), or classes inside sites (``hospA/{normal,tb}``
    and ``hospB/{normal,tb}``). Every image under a class folder takes its name, so these trained a hospital (or a split)
    classifier, read masks as radiographs, or labelled tb images normal, without a word."""
    classes = {label_key(d.name) for d in found}
    inner: dict[Path, set[str]] = {}
    for d, images in found.items():
        inner[d] = {p.relative_to(d).parts[0] for p in images if len(p.relative_to(d).parts) > 1}
        odd = sorted(n for n in inner[d] if label_key(n) in classes or n.lower() in SPLIT_ALIASES)
        wrapper = len([n for n in inner[d] if n.lower() in SPLIT_ALIASES]) >= 2 or len(found) == 1
        if odd and odd[0].lower() in SPLIT_ALIASES and wrapper:
            # A wrapper folder (Kaggle's chest_xray/{train,val,test}/...): "the level whose sub-folders are the classes" was
            # read as chest_xray/train, which loses the val and test folders.
            raise DatasetError(f"{d / odd[0]} is named like a split but lies inside {d.name}/, which would be taken for a class: "
                               f"point cxrkit at {d}, the folder that holds the split folders")
        if odd and len(found) == 1 and odd[0] == d.name:
            # Kaggle's chest_xray/chest_xray/{train,test}/... given two levels up: said without the folder to use.
            raise DatasetError(f"{d / odd[0]} repeats its parent's name, as a downloaded archive's wrapper folder does: point cxrkit "
                               f"at {d / odd[0]}, or at the level inside it whose sub-folders are the splits or the classes")
        if odd:
            kind = "a split" if odd[0].lower() in SPLIT_ALIASES else "a class"
            raise DatasetError(f"{d / odd[0]} is named like {kind} but lies inside the class folder {d.name}/, so its images would be "
                               f"labelled {d.name}; move it out, or point cxrkit at the level whose sub-folders are the classes")
        masks = sorted(n for n in inner[d] if "mask" in n.lower() or "segmentation" in n.lower())
        if masks:
            raise DatasetError(f"{d / masks[0]} lies inside the class folder {d.name}/, so its masks would be read as radiographs of "
                               f"{d.name}; move the mask folders out of the dataset")
    # Sites inside classes (normal/{siteA,siteB}, tb/{siteA,siteB}) are a dataset's own organisation; classes inside sites
    # (hospA/{normal,tb}) are not: told apart by a class name that says "normal" inside, and none outside.
    outer_negative = any(canonical_name(d.name) in NEGATIVE_NAMES for d in found)
    shared = [d for d in found if len(inner[d]) >= 2 and sum(inner[e] == inner[d] for e in found) >= 2
              and any(canonical_name(n) in NEGATIVE_NAMES for n in inner[d]) and not outer_negative]
    if shared:
        names = ", ".join(f"{n}/" for n in sorted(inner[shared[0]]))
        raise DatasetError(f"{', '.join(d.name + '/' for d in shared[:3])} each hold the same folders ({names}), which look like another "
                           f"level (the classes inside sites), not parts of one class: every image under "
                           f"{shared[0].name}/ would be labelled {shared[0].name}. Point cxrkit at the folder whose sub-folders are the "
                           f"classes (several sites: `cxrkit train {shared[0].name} {shared[1].name}` on those folders), or move the other folders out")


def open_image_folder(root: str | Path, cache_dir: Path | None = None, min_classes: int = 2) -> ImageFolderSource:
    """Read a dataset folder (or zip) whose class names are folder names.

    ``min_classes=1`` accepts a folder with one class, for evaluating a model on a one-class external
    set (e.g. normal images only, to measure specificity at a screening site).
    Layouts: ``<root>/<split>/<class>/*`` with splits named train, val|valid|validation, test; or
    ``<root>/<class>/*``. Files in nested sub-folders of a class folder belong to that class.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"dataset path {root} does not exist")
    check_utf8(root.resolve())
    given = None
    if root.is_file():
        if root.suffix.lower() != ".zip":
            raise DatasetError(f"{root} is a file; give a folder of class folders or a .zip of one")
        given = root.resolve()
        root = extract_zip(root, cache_dir)
    root = root.resolve()
    subdirs = _visible_dirs(root)
    if not subdirs:
        raise DatasetError(f"{given or root} has no sub-folders; expected <root>/<class>/ or <root>/<split>/<class>/")
    ignored: list[Path] = []
    samples: list[Sample] = []
    reals: dict[str, Path] = {}
    split_dirs = [d for d in subdirs if d.name.lower() in SPLIT_ALIASES]
    if split_dirs:
        layout = "split/class"
        others = [d.name for d in subdirs if d not in split_dirs]
        if others:
            raise DatasetError(
                f"{root} mixes split folders ({', '.join(d.name for d in split_dirs)}) with other folders "
                f"({', '.join(others)}); use either <root>/<split>/<class>/ or <root>/<class>/"
            )
        seen: dict[str, Path] = {}
        for d in split_dirs:
            split = SPLIT_ALIASES[d.name.lower()]
            if split in seen:
                raise DatasetError(f"{root} has two folders for the {split} split: {seen[split].name} and {d.name}")
            seen[split] = d
            found = {class_dir: _images_under(class_dir, ignored, reals) for class_dir in _visible_dirs(d)}
            _check_nesting(found)
            samples += [Sample(p, class_dir.name, split) for class_dir, images in found.items() for p in images]
        if "train" not in seen and min_classes > 1:  # evaluating a model needs no training images: an external test/ is enough
            raise DatasetError(f"{root} has split folders but no train/ folder")
    else:
        layout = "class"
        found = {class_dir: _images_under(class_dir, ignored, reals) for class_dir in subdirs}
        _check_nesting(found)
        samples += [Sample(p, class_dir.name, None) for class_dir, images in found.items() for p in images]
    unlabelled = [p for d in [root, *split_dirs] for p in sorted(d.iterdir())
                  if not p.name.startswith(".") and p.is_file() and is_image_file(p)]
    for smp in samples:
        if not str(smp.path).isascii():  # the common case costs no encoding
            check_utf8(smp.path.relative_to(root), f"{root}: ")
    classes = sorted({s.label for s in samples})
    one_spelling(classes, f"{root}: class folders")
    if len(classes) == 1 and min_classes > 1:
        raise DatasetError(f"{root}: only one class folder has images ({classes[0]}/); to train you need at least 2, one folder per "
                           f"class beside it (e.g. normal/ and tb/); a one-class folder can be evaluated: `cxrkit evaluate RUN {root}`")
    if len(classes) < min_classes:
        raise DatasetError(f"{root}: found {len(classes)} class folder(s) with images ({classes}); need at least {min_classes}")
    train_classes = {s.label for s in samples if s.split in (None, "train")}
    missing = [c for c in classes if c not in train_classes]
    if missing and min_classes > 1:
        raise DatasetError(f"{root}: classes {missing} have no training images")
    return ImageFolderSource(root=root, samples=samples, classes=classes, layout=layout, ignored_files=ignored, given=given,
                             unlabelled_images=unlabelled)


def check_utf8(path: str | Path, where: str = "") -> None:
    """Refuse a name that is not UTF-8 text (Latin-1 from an old system): the cache's keys and the run's files could not
    record it, and training stopped at the first of them with "'utf-8' codec can't encode character '\\udce9'"."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise DatasetError(f"{where}the name {os.fsencode(text)!r} is not UTF-8 text (written by a system using another encoding, "
                           "e.g. Latin-1), so the run's files could not record it; rename it (e.g. `convmv -f latin1 -t utf8 -r --notest "
                           "FOLDER`)") from None


def label_key(name: str) -> str:
    """What two spellings of one class or finding name share: their case, spaces, '_' or '-' between words and Unicode form
    aside ('Pleural_Thickening' is 'pleural thickening')."""
    return re.sub(r"[\s_\-]+", " ", unicodedata.normalize("NFC", name)).strip().casefold()


def one_spelling(names: Iterable[str], what: str) -> None:
    """Refuse two names of ``what`` that :func:`label_key` makes one ('TB' and 'tb', 'Viral Pneumonia' and 'viral_pneumonia'):
    they would be two classes that are one."""
    first: dict[str, str] = {}
    for name in names:
        other = first.setdefault(label_key(name), name)
        if other == name:
            continue
        if unicodedata.normalize("NFC", other) == unicodedata.normalize("NFC", name):
            how = f"are one name written in two Unicode forms ({ascii(other)} and {ascii(name)}, e.g. from a Mac and from Linux)"
        elif other.strip() == name.strip():
            how = f"{other!r} and {name!r} differ only in spaces around them"
        elif other.casefold() == name.casefold():
            how = f"{other!r} and {name!r} differ only in case"
        else:
            how = f"{other!r} and {name!r} differ only in case or in the spaces, '_' or '-' between words"
        raise DatasetError(f"{what} {how}, so they would be two classes; write each class one way")


def canonical_name(name: str) -> str:
    """Lower-case class name without a leading number and with spaces for underscores ("0_Normal" -> "normal")."""
    return re.sub(r"^[0-9]+[_\- ]*", "", name.strip().lower()).replace("_", " ")


def choose_positive_class(classes: list[str], positive: str | None = None) -> str:
    """Pick the positive (disease) class of a binary task.

    An explicit ``positive`` must match a class name (case-insensitively). Otherwise the class that
    is not called normal/healthy/negative/no finding wins; then the one not named as another's absence ("No_Effusion",
    "Non-COVID"); failing that, the second alphabetically (:func:`positive_is_guessed`: training then says so).
    """
    if len(classes) != 2:
        raise ValueError(f"a positive class applies to binary tasks; got {len(classes)} classes")
    if positive is not None:
        matches = [c for c in classes if c.lower() == positive.lower()]
        if not matches:
            raise DatasetError(f"--positive {positive!r} is not a class; classes are {classes}")
        return matches[0]
    for says_negative in (lambda c: canonical_name(c) in NEGATIVE_NAMES, _negated):
        negatives = [c for c in classes if says_negative(c)]
        if len(negatives) == 1:
            return next(c for c in classes if c != negatives[0])
    return sorted(classes)[1]


def _negated(name: str) -> bool:
    """A class named as the absence of another ("No_Effusion", "Non-COVID", "without TB"): the second alphabetically made
    "No_Effusion" the disease class, and every sensitivity was then the healthy images' share."""
    return re.match(r"(no|non|not|without)[ \-]", canonical_name(name)) is not None


def absence_of(name: str, other: str) -> bool:
    """Whether class ``name`` names the absence of class ``other`` ("no tb" of "tb", "Non-COVID" of "COVID")."""
    m = re.match(r"(no|non|not|without)[ \-]+(.+)", canonical_name(name))
    return m is not None and canonical_name(m.group(2)) == canonical_name(other)


def positive_is_guessed(classes: list[str]) -> bool:
    """True when neither rule of :func:`choose_positive_class` names the negative class, so it fell back to the alphabet."""
    return len(classes) == 2 and not any(sum(map(says, classes)) == 1 for says in (lambda c: canonical_name(c) in NEGATIVE_NAMES, _negated))
