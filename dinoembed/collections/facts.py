"""What a collection knows of each image's bytes: size, sha256, width and height.

New sidecars record them (SPEC §4 ``source``); older ones do not. Commands that
need them (``dupes`` for exact copies and the keep choice, ``report``) call
:func:`complete_facts` for just the rows they use: it reads each image through its
source (:meth:`~dinoembed.collections.collection.SidecarSource.open_image`), measures what is
missing (the header for the size in pixels, every byte only when a sha256 is
needed), and keeps the answers in the collection's cache, so a fact is measured
once per sidecar version.

Width and height are those after EXIF orientation (a portrait photo stored
landscape with orientation 6 is reported portrait), as the pipeline records them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import BinaryIO

from dinoembed.collections.collection import Collection, CollectionCache, Entry, SidecarSource
from dinoembed.errors import DinoEmbedError
from dinoembed.images.decode import header_size

log = logging.getLogger(__name__)

CHUNK = 1 << 20
WORKERS = 4


@dataclass(frozen=True, slots=True)
class ImageFacts:
    size: int | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None


def measure(fh: BinaryIO, *, digest: bool) -> ImageFacts:
    """Size and pixel dimensions of an image stream; its sha256 too when ``digest``."""
    size = fh.seek(0, 2)
    fh.seek(0)
    sha256 = None
    if digest:
        h = hashlib.sha256()
        while chunk := fh.read(CHUNK):
            h.update(chunk)
        sha256 = h.hexdigest()
        fh.seek(0)
    dims = header_size(fh)
    width, height = dims if dims else (None, None)
    return ImageFacts(size=size, sha256=sha256, width=width, height=height)


def _missing(entry: Entry, digest: bool) -> bool:
    return entry.size is None or entry.width is None or (digest and entry.sha256 is None)


def _measure_entry(source: SidecarSource, entry: Entry, digest: bool) -> Entry:
    try:
        with source.open_image(entry.sidecar) as fh:
            facts = measure(fh, digest=digest and entry.sha256 is None)
    except (DinoEmbedError, OSError) as err:
        log.info("%s: cannot measure the image (%s)", entry.path, err)
        return entry
    return replace(
        entry,
        size=entry.size if entry.size is not None else facts.size,
        sha256=entry.sha256 or facts.sha256,
        width=entry.width if entry.width is not None else facts.width,
        height=entry.height if entry.height is not None else facts.height,
    )


def complete_facts(
    collection: Collection,
    source: SidecarSource,
    rows: Iterable[int],
    *,
    digest: Iterable[int] = (),
    cache: CollectionCache | None = None,
) -> Collection:
    """``collection`` with size and dimensions filled in for ``rows``, and the sha256 too
    for the rows in ``digest``, where the sidecars did not record them. Images that are
    gone or unreadable keep their gaps. Saved to ``cache`` when anything was measured."""
    needs_digest = set(digest)
    wanted = sorted(set(rows) | needs_digest)
    by_row = {e.row: i for i, e in enumerate(collection.entries) if e.row >= 0}
    todo = [
        (by_row[r], r in needs_digest)
        for r in wanted
        if _missing(collection.entries[by_row[r]], r in needs_digest)
    ]
    if not todo:
        return collection
    entries = list(collection.entries)
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="dinoembed-facts") as pool:
        measured = pool.map(lambda job: _measure_entry(source, entries[job[0]], job[1]), todo)
        for (index, _), entry in zip(todo, measured, strict=True):
            entries[index] = entry
    log.info("%s: measured %d images the sidecars said nothing about", source.location, len(todo))
    updated = replace(collection, entries=tuple(entries))
    if cache is not None:
        cache.save(updated)
    return updated
