"""The image files ``cxrkit predict`` and ``cxrkit explain`` read under a path, and the one line that says which files
they left out and why: not images (``notes.txt``), hidden (``.DS_Store``, ``.ipynb_checkpoints/``) or unreadable
(a damaged ``.png``). Folders are read as training reads them (:func:`cxrkit.data.sources.open_image_folder`):
names starting with ``.`` and folders starting with ``__`` (``__MACOSX``) are not images of the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cxrkit.data.decode import IMAGE_EXTENSIONS
from cxrkit.data.sources import walk_images

SHOWN_NAMES = 3  # examples named per kind of skipped file; the count says how many there are


@dataclass
class ImageFiles:
    """What a path given on the command line holds: the images to read and the files left out (relative to ``root``)."""

    root: Path
    paths: list[Path]
    not_images: list[str] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)

    def relative(self, path: str | Path) -> str:
        """``path`` as the user would name it inside the folder they gave (the path itself for a single file)."""
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def skipped(self) -> dict:
        """The files left out before reading, for a result document: ``{"not_images": [...], "hidden": [...]}``."""
        return {"not_images": list(self.not_images), "hidden": list(self.hidden)}


def find_images(target: str | Path) -> ImageFiles:
    """One image file, or every image file under a folder (sorted; hidden files and folders left out and counted).

    A folder without any image is a ValueError that says what it holds instead; a missing path a FileNotFoundError.
    """
    target = Path(target)
    if target.is_file():
        return ImageFiles(target.parent, [target])
    if not target.is_dir():
        raise FileNotFoundError(f"{target} does not exist")
    images, others, hidden = walk_images(target)
    found = ImageFiles(target, images, [], [])
    found.not_images = [found.relative(p) for p in others]
    found.hidden = [found.relative(p) + ("/" if p.is_dir() else "") for p in hidden]
    found.paths.sort()
    if not found.paths:
        held = (f"; it holds {len(found.not_images)} other file(s), e.g. {found.not_images[0]}" if found.not_images
                else "; it is empty" if not found.hidden else f"; it holds only hidden files and folders ({_names(found.hidden)})")
        raise ValueError(f"no image files ({' '.join(IMAGE_EXTENSIONS)}, or images without an extension) under {target}{held}")
    return found


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN_NAMES])
    return shown + (", …" if len(items) > SHOWN_NAMES else "")


def skipped_line(found: ImageFiles, unreadable: list[tuple[str, str]], unreadable_note: str = "") -> str | None:
    """``skipped 4 files: 2 not images (notes.txt, sub/readme.md), 1 hidden (.DS_Store), 1 unreadable (x.png: ...)``;
    None when nothing was left out. ``unreadable`` holds (path, reason) of the files that could not be decoded;
    ``unreadable_note`` follows them (where the full list is, e.g. the CSV's error column)."""
    parts = []
    if found.not_images:
        parts.append(f"{len(found.not_images)} not image{'s' if len(found.not_images) > 1 else ''} ({_names(found.not_images)})")
    if found.hidden:
        parts.append(f"{len(found.hidden)} hidden ({_names(found.hidden)})")
    if unreadable:
        shown = "; ".join(f"{found.relative(p)}: {why}" for p, why in unreadable[:2]) + ("; …" if len(unreadable) > 2 else "")
        parts.append(f"{len(unreadable)} unreadable ({shown}){unreadable_note}")
    n = len(found.not_images) + len(found.hidden) + len(unreadable)
    return f"skipped {n} file{'s' if n > 1 else ''}: " + ", ".join(parts) if parts else None
