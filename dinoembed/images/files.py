"""Local files: which are images, and finding them in folders."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from dinoembed.common.atomic import is_temp_file
from dinoembed.images.pathfilter import ALL, PathFilter

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".webp",
        ".gif",
        ".bmp",
        ".tif",
        ".tiff",
        ".mpo",
        ".avif",
        ".heic",
        ".heif",
    }
)


def looks_like_image(path: Path, suffix: str) -> bool:
    """Candidates when walking a folder: image extensions, never sidecars or temp files."""
    name = path.name
    if name.endswith(suffix) or is_temp_file(name):
        return False
    return path.suffix.lower() in IMAGE_EXTENSIONS


def walk_files(
    root: Path, *, recursive: bool, on_folder: Callable[[Path], None] | None = None
) -> Iterator[Path]:
    """Every file under ``root`` (``recursive``: in sub-folders too) in sorted order,
    never descending into symlinked folders; a folder that cannot be listed is logged
    and skipped. ``on_folder`` is called with each folder listed, before its files.

    The one folder walk: finding images (:func:`iter_images`), coverage
    (``results.coverage.list_folder``), collections (``FolderSource.listing``) and the
    watcher's scan all go through it, so they agree on what a folder holds.
    """
    for dirpath, dirnames, filenames in os.walk(root, onerror=_walk_error):
        if on_folder is not None:
            on_folder(Path(dirpath))
        if recursive:
            dirnames.sort()
        else:
            dirnames.clear()
        for name in sorted(filenames):
            yield Path(dirpath, name)


def _walk_error(err: OSError) -> None:
    log.warning("cannot list %s: %s", err.filename, err.strerror or err)


def iter_images(
    root: Path, suffix: str, *, recursive: bool, select: PathFilter = ALL
) -> Iterator[Path]:
    """Image files under ``root`` in a stable (sorted) order, not following symlinked dirs,
    that ``select`` accepts (by their path relative to ``root``)."""
    for path in walk_files(root, recursive=recursive):
        if path.is_file() and looks_like_image(path, suffix) and select.accepts_path(path, root):
            yield path


def subfolders(root: Path) -> int:
    """How many sub-folders ``root`` has (symlinked ones excluded: they are never followed)."""
    try:
        return sum(1 for e in os.scandir(root) if e.is_dir(follow_symlinks=False))
    except OSError:
        return 0


def expand_paths(
    paths: Iterable[Path], suffix: str, *, recursive: bool, select: PathFilter = ALL
) -> Iterator[Path]:
    """Files named explicitly are kept as given (even odd ones: they get an error result);
    folders are expanded to the images inside that ``select`` accepts."""
    for path in paths:
        if path.is_dir():
            yield from iter_images(path, suffix, recursive=recursive, select=select)
        else:
            yield path
