"""Collections: every sidecar under a folder or an S3 prefix as one float32 matrix.

A :class:`SidecarSource` lists sidecars with a *stamp* that changes whenever the
sidecar does (``mtime_ns:size`` for files, the object's ETag on S3) and reads
them. :func:`load_collection` turns that into a :class:`Collection`: the
successful results as L2-normalised rows, error results and unreadable sidecars
left out (and counted). Embeddings of different models or preprocessing are
never mixed: :class:`MixedModelsError` names one sidecar of each.

With a :class:`CollectionCache` only the sidecars whose stamp changed are read
again; the rest come from a ``.npy`` matrix and a JSON index of sidecar names,
stamps, image paths, source ETags and image facts (size, sha256, width, height:
from the sidecar, or measured later by :mod:`dinoembed.collections.facts`). The cache lives in
the dinoembed cache dir, keyed by the collection's location (see docs/use.md for why).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import astuple, dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
from filelock import FileLock

from dinoembed.common.atomic import is_temp_file, write_atomic
from dinoembed.common.vectors import Matrix, normalize_rows
from dinoembed.errors import PermanentError, SourceGoneError
from dinoembed.images.files import walk_files
from dinoembed.images.pathfilter import ALL, PathFilter
from dinoembed.results.schema import EmbeddingResult, ModelInfo
from dinoembed.results.sidecars import image_name, same_space

log = logging.getLogger(__name__)

INDEX_FORMAT = 3  # 2: entries carry size, sha256, width, height; 3: and the image's mtime
NOT_A_ROW = -1


class MixedModelsError(PermanentError):
    """Sidecars made by different models (or preprocessing) in one collection."""


class EmptyCollectionError(PermanentError):
    """A collection without a single successful embedding."""


class SidecarSource(Protocol):
    """Where sidecars live: a folder, an S3 prefix, ..."""

    @property
    def location(self) -> str: ...

    def listing(self) -> dict[str, str]:
        """Sidecar name -> stamp (changes whenever the sidecar does)."""
        ...

    def read(self, names: Sequence[str]) -> Iterator[tuple[str, bytes | None]]:
        """The bytes of each sidecar (None when it vanished since the listing)."""
        ...

    def open_image(self, sidecar: str) -> BinaryIO:
        """The image a sidecar describes (its name minus the suffix), as a seekable binary
        stream; :class:`~dinoembed.errors.SourceGoneError` when it is not there."""
        ...


class FolderSource:
    """Sidecars under a local folder (recursively by default); names are relative paths."""

    def __init__(
        self, root: Path, suffix: str, *, recursive: bool = True, select: PathFilter = ALL
    ) -> None:
        self.root = root.absolute()
        self.suffix = suffix
        self.recursive = recursive
        self.select = select  # by the image's relative path (the sidecar's minus the suffix)

    @property
    def location(self) -> str:
        return str(self.root)

    def listing(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for path in walk_files(self.root, recursive=self.recursive):
            if not path.name.endswith(self.suffix) or is_temp_file(path.name):
                continue
            relative = path.relative_to(self.root).as_posix()
            image = image_name(relative, self.suffix)
            if image is None or not self.select.accepts(image):
                continue
            try:
                stat = path.stat()
            except OSError:
                continue
            found[relative] = _stamp(stat)
        return found

    def read(self, names: Sequence[str]) -> Iterator[tuple[str, bytes | None]]:
        for name in names:
            try:
                yield name, (self.root / name).read_bytes()
            except FileNotFoundError:
                yield name, None

    def open_image(self, sidecar: str) -> BinaryIO:
        name = image_name(sidecar, self.suffix)
        if name is None:
            raise SourceGoneError(f"{sidecar}: not a sidecar name, so no image")
        path = self.root / name
        try:
            return path.open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as err:
            raise SourceGoneError(f"{path}: the image is gone") from err


def _stamp(stat: os.stat_result) -> str:
    """Sidecars are replaced by rename (a new inode), so this changes with every rewrite."""
    return f"{stat.st_ino}:{stat.st_mtime_ns}:{stat.st_size}"


@dataclass(frozen=True, slots=True)
class Entry:
    """One sidecar: its name and stamp, the image it describes, its row (or -1), and what
    is known of the image's bytes (each None until recorded or measured)."""

    sidecar: str
    stamp: str
    path: str
    etag: str | None
    row: int = NOT_A_ROW
    size: int | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    mtime: float | None = None  # the image's, as its sidecar recorded it (local files only)

    @property
    def pixels(self) -> int | None:
        return self.width * self.height if self.width and self.height else None


@dataclass(frozen=True)
class Collection:
    """Entries sorted by sidecar name; ``matrix`` holds the successful ones, in that order."""

    location: str
    model: ModelInfo | None
    entries: tuple[Entry, ...]
    matrix: Matrix

    @property
    def rows(self) -> list[Entry]:
        return [e for e in self.entries if e.row != NOT_A_ROW]

    @property
    def paths(self) -> list[str]:
        return [e.path for e in self.rows]

    def __len__(self) -> int:
        return int(self.matrix.shape[0])

    def require_vectors(self) -> None:
        if len(self) == 0:
            raise EmptyCollectionError(
                f"{self.location}: no embeddings found (run `dinoembed backfill {self.location}`)"
            )


@dataclass(frozen=True, slots=True)
class RefreshStats:
    listed: int
    read: int
    reused: int
    removed: int
    skipped: int


@dataclass
class _ModelGuard:
    """Remembers the first model seen and refuses any other."""

    model: ModelInfo | None = None
    seen_in: str = ""

    def check(self, model: ModelInfo, sidecar: str) -> None:
        if self.model is None:
            self.model, self.seen_in = model, sidecar
            return
        if not same_space(model, self.model):
            raise MixedModelsError(
                f"cannot mix embeddings of different models: {self.seen_in} was made by "
                f"{_describe(self.model)} but {sidecar} by {_describe(model)}; re-embed one "
                "of them with the same model (dinoembed backfill) or keep them apart"
            )


def _describe(model: ModelInfo) -> str:
    return f"{model.name} (sha256 {model.sha256[:12]}…, {model.preprocess})"


@dataclass
class _Fresh:
    entries: dict[str, Entry] = field(default_factory=dict)
    vectors: dict[str, list[float]] = field(default_factory=dict)


def _parse(name: str, stamp: str, data: bytes, guard: _ModelGuard, fresh: _Fresh) -> None:
    try:
        result = EmbeddingResult.read_json(data)
    except ValueError as err:
        log.warning("%s: not a dinoembed sidecar, skipped (%s)", name, type(err).__name__)
        fresh.entries[name] = Entry(name, stamp, "", None)
        return
    src = result.source
    fresh.entries[name] = Entry(
        name,
        stamp,
        result.file_path,
        src.etag,
        size=src.size,
        sha256=src.sha256,
        width=src.width,
        height=src.height,
        mtime=src.mtime,
    )
    if result.ok and result.embedding is not None:
        guard.check(result.model, name)
        fresh.vectors[name] = result.embedding.embedding


def load_collection(
    source: SidecarSource, cache: CollectionCache | None = None
) -> tuple[Collection, RefreshStats]:
    """All sidecars of ``source`` as a collection, reading only what changed since the cache."""
    listing = source.listing()
    old = cache.load(source.location) if cache else None
    kept = {e.sidecar: e for e in (old.entries if old else ()) if listing.get(e.sidecar) == e.stamp}
    guard = _ModelGuard()
    kept_rows = [e for e in kept.values() if e.row != NOT_A_ROW]
    if old is not None and old.model is not None and kept_rows:
        guard.check(old.model, min(e.sidecar for e in kept_rows))
    fresh = _Fresh()
    to_read = sorted(name for name in listing if name not in kept)
    for name, data in source.read(to_read):
        if data is not None:
            _parse(name, listing[name], data, guard, fresh)
    collection = _assemble(source.location, guard.model, kept, old, fresh)
    removed = sum(1 for e in old.entries if e.sidecar not in listing) if old else 0
    stats = RefreshStats(
        listed=len(listing),
        read=len(to_read),
        reused=len(kept),
        removed=removed,
        skipped=len(collection.entries) - len(collection),
    )
    if cache is not None and (to_read or removed or old is None):
        cache.save(collection)
    return collection, stats


def collection_from_sidecars(location: str, sidecars: Iterable[tuple[str, bytes]]) -> Collection:
    """A collection from sidecar bytes already in hand (no listing, no cache)."""
    guard, fresh = _ModelGuard(), _Fresh()
    for name, data in sidecars:
        _parse(name, hashlib.sha256(data).hexdigest()[:16], data, guard, fresh)
    return _assemble(location, guard.model, {}, None, fresh)


def _assemble(
    location: str,
    model: ModelInfo | None,
    kept: dict[str, Entry],
    old: Collection | None,
    fresh: _Fresh,
) -> Collection:
    names = sorted({*kept, *fresh.entries})
    entries: list[Entry] = []
    old_rows: list[int] = []  # for each new row: its row in the old matrix, or -1
    new_vectors: list[list[float]] = []
    for name in names:
        entry = kept.get(name) or fresh.entries[name]
        if name in kept and entry.row != NOT_A_ROW:
            old_rows.append(entry.row)
        elif name in fresh.vectors:
            old_rows.append(NOT_A_ROW)
            new_vectors.append(fresh.vectors[name])
        else:
            entries.append(_with_row(entry, NOT_A_ROW))
            continue
        entries.append(_with_row(entry, len(old_rows) - 1))
    matrix = _stack(old_rows, old, new_vectors, location)
    return Collection(location, model if len(old_rows) else None, tuple(entries), matrix)


def _with_row(entry: Entry, row: int) -> Entry:
    return replace(entry, row=row)


def _stack(
    old_rows: list[int], old: Collection | None, new_vectors: list[list[float]], location: str
) -> Matrix:
    dims = {len(v) for v in new_vectors}
    if old is not None and any(r != NOT_A_ROW for r in old_rows):
        dims.add(old.matrix.shape[1])
    if len(dims) > 1:
        raise MixedModelsError(f"{location}: embeddings of different lengths {sorted(dims)}")
    dim = dims.pop() if dims else 0
    matrix = np.empty((len(old_rows), dim), dtype=np.float32)
    where_old = np.array([r != NOT_A_ROW for r in old_rows], dtype=bool)
    if old is not None and where_old.any():
        matrix[where_old] = old.matrix[np.array(old_rows)[where_old]]
    if new_vectors:
        matrix[~where_old] = normalize_rows(np.array(new_vectors, dtype=np.float32))
    return matrix


class CollectionCache:
    """``index.json`` + ``vectors-<token>.npy`` in a folder of the dinoembed cache dir."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def for_location(cls, cache_dir: Path, location: str, suffix: str) -> CollectionCache:
        key = hashlib.sha256(f"{location}\n{suffix}".encode()).hexdigest()[:24]
        return cls(cache_dir / "collections" / key)

    @property
    def index_path(self) -> Path:
        return self.directory / "index.json"

    def load(self, location: str) -> Collection | None:
        try:
            index = json.loads(self.index_path.read_bytes())
            if index.get("format") != INDEX_FORMAT or index.get("location") != location:
                return None
            matrix = np.load(self.directory / index["vectors"], allow_pickle=False)
            entries = tuple(Entry(*fields) for fields in index["entries"])
            model = ModelInfo.model_validate(index["model"]) if index["model"] else None
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.info("collection cache %s unusable (%s); rebuilding", self.directory, err)
            return None
        rows = sum(1 for e in entries if e.row != NOT_A_ROW)
        if matrix.dtype != np.float32 or matrix.ndim != 2 or matrix.shape[0] != rows:
            return None
        return Collection(location, model, entries, matrix)

    def save(self, collection: Collection) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with FileLock(self.directory / ".lock"):
            vectors = f"vectors-{secrets.token_hex(8)}.npy"
            np.save(self.directory / vectors, collection.matrix, allow_pickle=False)
            index: dict[str, Any] = {
                "format": INDEX_FORMAT,
                "location": collection.location,
                "model": collection.model.model_dump() if collection.model else None,
                "vectors": vectors,
                "entries": [astuple(e) for e in collection.entries],  # the fields, in order
            }
            write_atomic(self.index_path, json.dumps(index).encode())
            for stale in self.directory.glob("vectors-*.npy"):
                if stale.name != vectors:
                    stale.unlink(missing_ok=True)
