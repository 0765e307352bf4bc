"""Collections: every sidecar under a folder or an S3 prefix as one float32 matrix.

A :class:`SidecarSource` lists sidecars with a *stamp* that changes whenever the
sidecar does (``mtime_ns:size`` for files, the object's ETag on S3) and reads
them. :func:`load_collection` turns that into a :class:`Collection`: the
successful results as L2-normalised rows, error results and unreadable sidecars
left out (and counted). Embeddings of different models or preprocessing are
never mixed: :class:`MixedModelsError` names one sidecar of each.

With a :class:`CollectionCache` only the sidecars whose stamp changed are read
again; the rest come from a ``.npy`` matrix and a file of entries (sidecar names,
stamps, image paths, source ETags and image facts: size, sha256, width, height, from
the sidecar or measured later by :mod:`dinoembed.collections.facts`). The cache lives
in the dinoembed cache dir, keyed by the collection's location (see docs/use.md for why).

A warm start costs next to nothing at any size: the matrix is memory-mapped, not read;
entries are parsed only when asked for (``similar`` reads ten of a million); and a
folder whose sub-folders all keep the modification times recorded at the last listing
is not listed again (:meth:`FolderSource.unchanged_since`; sidecars are only ever
replaced by rename, which changes their folder's mtime).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import mmap
import os
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import astuple, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO, Protocol, overload, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from dinoembed.common.atomic import is_temp_file, write_atomic
from dinoembed.common.vectors import Matrix, normalize_rows
from dinoembed.errors import PermanentError, SourceGoneError
from dinoembed.images.files import walk_files
from dinoembed.images.pathfilter import ALL, PathFilter
from dinoembed.results.schema import EmbeddingResult, ModelInfo
from dinoembed.results.sidecars import image_name, same_space

log = logging.getLogger(__name__)

# 2: entries carry size, sha256, width, height; 3: entries as JSON lines beside index.json,
# the matrix memory-mapped; 4: entries carry the image's mtime too
INDEX_FORMAT = 4
NOT_A_ROW = -1
# A folder modified this close to (or after) the start of the listing that recorded it
# may have changed while it was listed (file timestamps are coarse): it is not trusted.
RACY_NS = 2_000_000_000


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


@runtime_checkable
class ChangeAware(Protocol):
    """A source that can tell, cheaply, that nothing changed since a listing."""

    def snapshot(self) -> dict[str, Any] | None:
        """What the last :meth:`listing` saw, for :meth:`unchanged_since` next time."""
        ...

    def unchanged_since(self, snapshot: Mapping[str, Any]) -> bool:
        """True only when a listing now would certainly give the same answer."""
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
        self._snapshot: dict[str, Any] | None = None

    @property
    def location(self) -> str:
        return str(self.root)

    def listing(self) -> dict[str, str]:
        found: dict[str, str] = {}
        listed_at = time.time_ns()
        folders: dict[str, int] = {}

        def seen(folder: Path) -> None:
            with contextlib.suppress(OSError):
                folders[folder.relative_to(self.root).as_posix()] = folder.stat().st_mtime_ns

        for path in walk_files(self.root, recursive=self.recursive, on_folder=seen):
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
        self._snapshot = {"walk": self.walk_key(), "listed_at_ns": listed_at, "folders": folders}
        return found

    def walk_key(self) -> list[Any]:
        """What decides which files a listing sees (recursion, --include, --exclude)."""
        return [self.recursive, list(self.select.include), list(self.select.exclude)]

    def snapshot(self) -> dict[str, Any] | None:
        return self._snapshot

    def unchanged_since(self, snapshot: Mapping[str, Any]) -> bool:
        """Every folder the listing walked still has the mtime it had then (a sidecar
        added, removed or replaced by rename changes it; so does a new sub-folder), and
        none was modified around the time of that listing. A sidecar rewritten in place
        by another program is not noticed until its folder changes."""
        try:
            if snapshot["walk"] != self.walk_key():
                return False
            cutoff = int(snapshot["listed_at_ns"]) - RACY_NS
            folders = dict(snapshot["folders"])
        except (KeyError, TypeError, ValueError):
            return False
        if "." not in folders:
            return False
        for relative, mtime in folders.items():
            if not isinstance(mtime, int) or mtime >= cutoff:
                return False
            try:
                if (self.root / relative).stat().st_mtime_ns != mtime:
                    return False
            except OSError:
                return False
        return True

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
    """Entries sorted by sidecar name; ``matrix`` holds the successful ones, in that order.

    ``snapshot``: what the source looked like when it was listed (see :class:`ChangeAware`).
    """

    location: str
    model: ModelInfo | None
    entries: Sequence[Entry]
    matrix: Matrix
    snapshot: Mapping[str, Any] | None = None

    @cached_property
    def _row_positions(self) -> Sequence[int] | NDArray[np.int64]:
        if isinstance(self.entries, EntryLines):
            return self.entries.row_positions
        return [i for i, e in enumerate(self.entries) if e.row != NOT_A_ROW]

    def row(self, row: int) -> Entry:
        """The entry of matrix row ``row`` (without touching the others)."""
        return self.entries[int(self._row_positions[row])]

    @property
    def rows(self) -> list[Entry]:
        return [self.entries[int(p)] for p in self._row_positions]

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
    old = cache.load(source.location) if cache else None
    if (
        old is not None
        and old.snapshot is not None
        and isinstance(source, ChangeAware)
        and source.unchanged_since(old.snapshot)
    ):
        unchanged = len(old.entries)
        return old, RefreshStats(unchanged, 0, unchanged, 0, unchanged - len(old))
    listing = source.listing()
    snapshot = source.snapshot() if isinstance(source, ChangeAware) else None
    kept: dict[str, Entry] = {}
    removed = 0
    for entry in old.entries if old else ():
        stamp = listing.get(entry.sidecar)
        if stamp is None:
            removed += 1
        elif stamp == entry.stamp:
            kept[entry.sidecar] = entry
    guard = _ModelGuard()
    kept_rows = [e for e in kept.values() if e.row != NOT_A_ROW]
    if old is not None and old.model is not None and kept_rows:
        guard.check(old.model, min(e.sidecar for e in kept_rows))
    fresh = _Fresh()
    to_read = sorted(name for name in listing if name not in kept)
    for name, data in source.read(to_read):
        if data is not None:
            _parse(name, listing[name], data, guard, fresh)
    if old is not None and not to_read and not removed:
        collection = replace(old, snapshot=snapshot)  # the same sidecars: nothing to rebuild
    else:
        collection = replace(
            _assemble(source.location, guard.model, kept, old, fresh), snapshot=snapshot
        )
    stats = RefreshStats(
        listed=len(listing),
        read=len(to_read),
        reused=len(kept),
        removed=removed,
        skipped=len(collection.entries) - len(collection),
    )
    if cache is not None and (to_read or removed or old is None or snapshot != old.snapshot):
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


class EntryLines(Sequence[Entry]):
    """A cached collection's entries: one JSON array per line in a memory-mapped file,
    parsed only when asked for, so a warm ``similar`` over a million images parses the
    ten it prints. (Written by hand: the cache needs random access to single records
    with no per-record cost at load time, which neither ``json`` nor numpy's structured
    arrays give for variable-length strings; the format is internal to the cache.)"""

    def __init__(
        self, path: Path, offsets: NDArray[np.int64], row_positions: NDArray[np.int64]
    ) -> None:
        self.path = path
        self.offsets = offsets  # len + 1 byte offsets: line i is [offsets[i], offsets[i + 1])
        self.row_positions = row_positions  # the position of each matrix row's entry
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            self._data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        if int(offsets[-1]) != size:
            raise ValueError(f"{path.name}: {size} bytes, the offsets say {int(offsets[-1])}")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, index: int) -> Entry: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Entry]: ...
    def __getitem__(self, index: int | slice) -> Entry | Sequence[Entry]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return Entry(*json.loads(self._data[start:end]))

    def __iter__(self) -> Iterator[Entry]:
        for i in range(len(self)):
            yield self[i]


def _entry_line(entry: Entry) -> bytes:
    return json.dumps(astuple(entry)).encode() + b"\n"  # the fields, in order


class CollectionCache:
    """``index.json`` + ``vectors-<token>.npy`` (the matrix), ``entries-<token>.jsonl``
    with ``offsets-<token>.npy`` and ``rows-<token>.npy`` in a folder of the cache dir."""

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
            token = index["token"]
            matrix = np.load(
                self._file("vectors", token, ".npy"), mmap_mode="r", allow_pickle=False
            )
            offsets = np.load(
                self._file("offsets", token, ".npy"), mmap_mode="r", allow_pickle=False
            )
            rows = np.load(self._file("rows", token, ".npy"), mmap_mode="r", allow_pickle=False)
            entries = EntryLines(self._file("entries", token, ".jsonl"), offsets, rows)
            model = ModelInfo.model_validate(index["model"]) if index["model"] else None
            snapshot = index.get("snapshot")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.info("collection cache %s unusable (%s); rebuilding", self.directory, err)
            return None
        if matrix.dtype != np.float32 or matrix.ndim != 2 or matrix.shape[0] != len(rows):
            return None
        return Collection(location, model, entries, matrix, snapshot)

    def _file(self, kind: str, token: str, ext: str) -> Path:
        return self.directory / f"{kind}-{token}{ext}"

    def save(self, collection: Collection) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        from filelock import FileLock  # ~10 ms to import: only a cache write locks

        with FileLock(self.directory / ".lock"):
            entries = collection.entries
            if isinstance(entries, EntryLines) and entries.path.parent == self.directory:
                token = entries.path.stem.removeprefix("entries-")  # the same sidecars
            else:
                token = self._write_files(collection)
            index: dict[str, Any] = {
                "format": INDEX_FORMAT,
                "location": collection.location,
                "model": collection.model.model_dump() if collection.model else None,
                "token": token,
                "snapshot": dict(collection.snapshot) if collection.snapshot else None,
            }
            write_atomic(self.index_path, json.dumps(index).encode())
            for stale in self.directory.glob("*-*.*"):
                if not stale.stem.endswith(f"-{token}"):
                    stale.unlink(missing_ok=True)

    def _write_files(self, collection: Collection) -> str:
        """The matrix and the entries under a new token; index.json still names the old
        ones until it is replaced, so a reader never sees a mix."""
        token = secrets.token_hex(8)
        np.save(self._file("vectors", token, ".npy"), collection.matrix, allow_pickle=False)
        offsets = [0]
        rows: list[int] = []
        with self._file("entries", token, ".jsonl").open("wb") as fh:
            for position, entry in enumerate(collection.entries):
                line = _entry_line(entry)
                fh.write(line)
                offsets.append(offsets[-1] + len(line))
                if entry.row != NOT_A_ROW:
                    rows.append(position)
        np.save(self._file("offsets", token, ".npy"), np.array(offsets, dtype=np.int64))
        np.save(self._file("rows", token, ".npy"), np.array(rows, dtype=np.int64))
        return token
