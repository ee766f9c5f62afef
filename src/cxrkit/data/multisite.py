"""Several sources (hospitals, scanners) in one dataset, each image tagged with its site.

``cxrkit train A B C`` writes a small sources file into the run folder and trains on it; a hand-written
one works too::

    sites:
      shenzhen: /data/shenzhen        # <root>/<class>/* or <root>/<split>/<class>/*, as for one folder
      sakha: ../sakha/train           # relative to the YAML file

Class folders are matched across sites as for external data (same name, case, normal/healthy/negative),
so ``normal`` at one site and ``healthy`` at another are one class. Splits are stratified by site and
class, so validation and test hold images of every site.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml

from cxrkit.data.sources import SPLIT_ALIASES, DatasetError, ImageFolderSource, Sample, open_image_folder

SOURCES_SUFFIXES = (".yaml", ".yml")


def is_sources_file(data: str | Path) -> bool:
    """Whether DATA names a sources YAML file rather than an image folder."""
    p = Path(data)
    return p.suffix.lower() in SOURCES_SUFFIXES and p.is_file()


def site_name(root: Path) -> str:
    """A site's default name: its folder's name, or the parent's when the folder is a split (``sakha/train`` -> sakha)."""
    root = Path(root).resolve()
    return root.parent.name if root.name.lower() in SPLIT_ALIASES else root.name


def write_sources_file(roots: list[str | Path], path: Path) -> Path:
    """Write a sources YAML for several dataset folders (sites named after their folders) and return its path."""
    sites: dict[str, str] = {}
    for r in roots:
        root = Path(r).expanduser()
        if not root.is_dir():
            raise DatasetError(f"dataset path {root} is not a folder (several sources must be folders)")
        name, k = site_name(root), 2
        while name in sites:
            name, k = f"{site_name(root)}_{k}", k + 1
        sites[name] = str(root.resolve())
    _check_apart({k: Path(v) for k, v in sites.items()})  # before the run folder is made
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"sites": sites}, sort_keys=False))
    return path


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (it kept the last: a site silently dropped)."""

    def construct_mapping(self, node, deep=False):  # noqa: ANN001, ANN201 - PyYAML's signature
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` may be overridden, as YAML means
                continue
            k = self.construct_object(key_node, deep=True)
            if isinstance(k, str | int) and k in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {k!r} is given twice", key_node.start_mark)
            if isinstance(k, str | int):
                seen.add(k)
        return super().construct_mapping(node, deep)


def _site_name_error(name: object) -> str | None:
    """Why ``name`` cannot name a site (it is the first folder of every image path of the run), or None."""
    if not isinstance(name, str | int) or isinstance(name, bool):
        return f"a site name must be text, not {type(name).__name__}"
    text = str(name)
    if not text.strip() or text in (".", "..") or any(c in text for c in "/\\") or not text.isprintable():
        return f"the site name {text!r} cannot be a folder name in the run's image paths (no '/', '\\', '.', '..', line breaks or blanks)"
    return None


def read_sources_file(path: str | Path) -> dict[str, Path]:
    """Site name -> dataset folder, from a sources YAML (``sites:`` a mapping, or a list of folders)."""
    path = Path(path)
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except UnicodeDecodeError:
        raise DatasetError(f"{path} is not UTF-8 text; a sources file is YAML (sites: {{name: folder}})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise DatasetError(f"{path} is not valid YAML{where}: {str(exc).splitlines()[0]}") from exc
    sites = doc.get("sites") if isinstance(doc, dict) else None
    if isinstance(sites, list):
        bad = next((p for p in sites if not isinstance(p, str)), None)
        if bad is not None:  # its text could be a billion characters (nested aliases)
            raise DatasetError(f"{path}: 'sites:' lists a {type(bad).__name__} where a folder was expected")
        named: dict[str, str] = {}
        for folder in sites:  # two folders called data/ are data and data_2, as `cxrkit train A B` names them (one was dropped)
            name, k = site_name(path.parent / folder), 2
            while name in named:
                name, k = f"{site_name(path.parent / folder)}_{k}", k + 1
            named[name] = folder
        sites = named
    if not isinstance(sites, dict) or len(sites) < 1:
        raise DatasetError(f"{path}: expected 'sites:' with a name: folder mapping (or a list of folders)")
    out: dict[str, Path] = {}
    for name, folder in sites.items():
        why = _site_name_error(name)
        if why:
            raise DatasetError(f"{path}: {why}")
        if str(name) in out:  # 1 and '1'
            raise DatasetError(f"{path}: two sites are named {str(name)!r}")
        if not isinstance(folder, str) or not folder.strip():
            raise DatasetError(f"{path}: site {name}: expected a folder, got {type(folder).__name__ if folder is not None else 'nothing'}")
        p = Path(folder).expanduser()
        out[str(name)] = (p if p.is_absolute() else path.parent / p).resolve()
    _check_apart(out, f"{path}: ")
    return out


def _check_apart(roots: dict[str, Path], where: str = "") -> None:
    """Refuse two sites of one folder, or one inside another: each image would be in both, possibly train at one and test
    at the other."""
    for a, b in ((a, b) for a in roots for b in roots if a != b):
        if roots[a].is_relative_to(roots[b]):
            raise DatasetError(f"{where}site {a} ({roots[a]}) is {'the same folder as' if roots[a] == roots[b] else 'inside'} site {b}"
                               f" ({roots[b]}); give each site its own folder")


@dataclass
class MultiSiteSource(ImageFolderSource):
    """The images of several sites; relative paths read ``<site>/<path under that site's folder>``."""

    site_roots: dict[str, Path] = field(default_factory=dict)

    def relpath(self, path: Path) -> str:
        """``<site>/<path relative to the site's folder>``."""
        path = Path(path)
        for site, root in self.site_roots.items():
            if path.is_relative_to(root):
                return f"{site}/{path.relative_to(root).as_posix()}"
        raise ValueError(f"{path} is under none of the sites' folders")

    def content_stamp(self, rel: str) -> int:
        """Byte size of the image (``rel`` as :meth:`relpath` writes it)."""
        site, _, inner = rel.partition("/")
        try:
            return (self.site_roots[site] / inner).stat().st_size
        except OSError:  # a link to nothing: its reading fails and is reported
            return -1


def open_sites(path: str | Path, match_classes: Callable[[list[str], list[str]], dict[str, str]],
               cache_dir: Path | None = None) -> MultiSiteSource:
    """Open every site of a sources YAML, match their classes to the first site's with ``match_classes``
    (:func:`cxrkit.data.dataset.match_classes`) and tag each image with its site."""
    path = Path(path).resolve()
    roots = read_sources_file(path)
    samples: list[Sample] = []
    layouts, ignored = set(), []
    # A site may lack a class (a TB clinic's healthy/ folder alone): it was refused, though the sites together hold both.
    # The classes are those of the site with the most; every other site's must be among them.
    sources = {site: open_image_folder(root, cache_dir, min_classes=1) for site, root in roots.items()}
    for site, src in sources.items():
        if src.multilabel:
            raise DatasetError(f"site {site}: several sources are supported for class folders, not label tables")
    first = max(sources, key=lambda s: len(sources[s].classes))
    classes = sources[first].classes
    for site, src in sources.items():
        root = roots[site]
        try:
            mapping = match_classes(src.classes, classes)
        except DatasetError:
            # match_classes' advice names --class-map, which training and the audit do not have: sites share class names
            raise DatasetError(f"site {site} ({root}) has the classes {src.classes}, which are not among site {first}'s {classes}; "
                               "every site's class folders must be named as the others' (rename or move out the others)") from None
        roots[site] = src.root  # resolved (a zip is extracted)
        samples += [replace(s, label=mapping[s.label], site=site) for s in src.samples]
        layouts.add(src.layout)
        ignored += src.ignored_files
    if len(classes) < 2:
        raise DatasetError(f"{path}: the sites together hold one class ({classes[0] if classes else 'none'}); training needs at least 2")
    return MultiSiteSource(root=path, samples=samples, classes=list(classes), layout="sites: " + ", ".join(sorted(layouts)),
                           ignored_files=ignored, site_roots=dict(roots))


def site_factors(sites: np.ndarray) -> np.ndarray:
    """Repeat factors that give every site the same share of an epoch (the largest site is shown once)."""
    names, inverse, counts = np.unique(np.asarray(sites).astype(str), return_inverse=True, return_counts=True)
    return (counts.max() / counts)[inverse].astype(np.float64)
