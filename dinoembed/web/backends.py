"""What ``/search`` and ``/duplicates`` ask: a folder's collection or a bucket's vector index.

:class:`SearchBackend` is the one shape the app knows. :class:`CollectionBackend` answers from
a :class:`~dinoembed.collections.collection.Collection` (exact cosine, ``similarity.top_k``),
its duplicates computed on the spot from the vectors (every image at or above the duplicate
threshold: what the index records when an image lands, SPEC section 10). :class:`IndexBackend`
wraps a bucket's vector index (:class:`~dinoembed.collections.index.VectorIndex`, the core's
protocol; the S3 Vectors client behind it comes from the host), its duplicates being the
neighbours recorded when each image landed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from dinoembed.collections.collection import Collection
from dinoembed.collections.index import MAX_TOP_K, VectorIndex
from dinoembed.collections.similarity import top_k as best_rows
from dinoembed.common.vectors import normalize_rows
from dinoembed.errors import PermanentError, SourceGoneError
from dinoembed.results.schema import ModelInfo
from dinoembed.results.sidecars import image_name

# SPEC section 10: the index's duplicate threshold (DINOEMBED_DUPES_THRESHOLD's default).
DEFAULT_DUPES_THRESHOLD = 0.95


class BadQueryError(PermanentError):
    """A query the backend cannot answer as asked (400): wrong length, top_k too large."""


@dataclass(frozen=True, slots=True)
class Match:
    """One answer: the image's key (relative path in a folder, S3 key in a bucket), its
    cosine to the query, and its absolute path for a folder (None in a bucket)."""

    key: str
    score: float
    path: str | None = None


class SearchBackend(Protocol):
    @property
    def location(self) -> str:
        """What is searched: a folder, or ``s3vectors://VBUCKET/INDEX``."""
        ...

    @property
    def model(self) -> ModelInfo | None:
        """What made the searched vectors, when known (a folder's sidecars say)."""
        ...

    @property
    def max_top_k(self) -> int | None:
        """The largest ``top_k`` the backend answers (None: no limit)."""
        ...

    def search(
        self,
        vector: Sequence[float],
        *,
        top_k: int,
        min_score: float | None = None,
        prefix: str = "",
        exclude: str | None = None,
    ) -> list[Match]: ...

    def vector_of(self, key: str) -> list[float] | None:
        """The stored vector of an image of the collection; None when it has none."""
        ...

    def neighbours_of(self, key: str, threshold: float) -> list[Match] | None:
        """The image's near-duplicates, best first; None when the key is unknown."""
        ...

    def image_bytes(self, key: str, limit: int) -> bytes:
        """The image itself (for thumbnails), at most ``limit + 1`` bytes;
        :class:`~dinoembed.errors.SourceGoneError` when it is not there."""
        ...


def _query(vector: Sequence[float], dim: int) -> np.ndarray:
    q = np.asarray(vector, dtype=np.float32).ravel()
    if q.shape[0] != dim:
        raise BadQueryError(f"the vector has {q.shape[0]} numbers; this collection's have {dim}")
    if not np.isfinite(q).all() or not q.any():
        raise BadQueryError("the vector must be finite and not all zero")
    return normalize_rows(q[None, :])[0]


class CollectionBackend:
    """The sidecars of a folder or an S3 prefix (keys: paths relative to the folder, or S3
    keys), re-read at most every ``refresh_seconds`` (only what changed: the collection
    cache), so images embedded while the server runs are found."""

    def __init__(
        self,
        location: str,
        load: Callable[[], Collection],
        suffix: str,
        open_image: Callable[[str, int], bytes],
        *,
        refresh_seconds: float = 2.0,
    ) -> None:
        self._location = location
        self._load = load
        self._suffix = suffix
        self._open_image = open_image
        self._refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._loaded_at = -float("inf")
        self._collection: Collection | None = None
        self._keys: list[str] = []
        self._row_of: dict[str, int] = {}

    def _current(self) -> tuple[Collection, list[str], dict[str, int]]:
        with self._lock:
            now = time.monotonic()
            if self._collection is None or now - self._loaded_at >= self._refresh_seconds:
                collection = self._load()
                keys = [image_name(e.sidecar, self._suffix) or e.sidecar for e in collection.rows]
                self._collection, self._keys = collection, keys
                self._row_of = {k: i for i, k in enumerate(keys)}
                self._loaded_at = now
            return self._collection, self._keys, self._row_of

    @property
    def location(self) -> str:
        return self._location

    @property
    def model(self) -> ModelInfo | None:
        return self._current()[0].model

    @property
    def max_top_k(self) -> int | None:
        return None

    def search(
        self,
        vector: Sequence[float],
        *,
        top_k: int,
        min_score: float | None = None,
        prefix: str = "",
        exclude: str | None = None,
    ) -> list[Match]:
        collection, keys, _ = self._current()
        if len(collection) == 0:
            return []
        q = _query(vector, collection.matrix.shape[1])
        rows = np.arange(len(keys))
        if prefix:
            rows = np.array([i for i, k in enumerate(keys) if k.startswith(prefix)], np.int64)
        if rows.size == 0:
            return []
        idx, scores = best_rows(collection.matrix[rows], q, top_k + (exclude is not None))
        entries = collection.rows
        found = []
        for i, score in zip(rows[idx].tolist(), scores.tolist(), strict=True):
            if keys[i] == exclude or (min_score is not None and score < min_score):
                continue
            found.append(Match(keys[i], round(float(score), 6), entries[i].path))
        return found[:top_k]

    def vector_of(self, key: str) -> list[float] | None:
        collection, _, row_of = self._current()
        row = row_of.get(key)
        return None if row is None else collection.matrix[row].tolist()

    def neighbours_of(self, key: str, threshold: float) -> list[Match] | None:
        vector = self.vector_of(key)
        if vector is None:
            return None
        collection, _, _ = self._current()
        hits = self.search(vector, top_k=len(collection), min_score=threshold, exclude=key)
        return hits

    def image_bytes(self, key: str, limit: int) -> bytes:
        if key not in self._current()[2]:  # only images of the collection: no path tricks
            raise SourceGoneError(f"{key}: not an image of this collection")
        return self._open_image(key + self._suffix, limit)


class IndexBackend:
    """A bucket's vector index; images (for thumbnails) read through ``open_image``."""

    def __init__(
        self,
        index: VectorIndex,
        open_image: Callable[[str, int], bytes],
        *,
        model: ModelInfo | None = None,
    ) -> None:
        self._index = index
        self._open_image = open_image
        self._model = model

    @property
    def location(self) -> str:
        return self._index.name

    @property
    def model(self) -> ModelInfo | None:
        return self._model

    @property
    def max_top_k(self) -> int | None:
        return MAX_TOP_K

    def search(
        self,
        vector: Sequence[float],
        *,
        top_k: int,
        min_score: float | None = None,
        prefix: str = "",
        exclude: str | None = None,
    ) -> list[Match]:
        if top_k > MAX_TOP_K:
            raise BadQueryError(f"top_k {top_k}: an S3 Vectors index answers at most {MAX_TOP_K}")
        ask = min(top_k + (exclude is not None), MAX_TOP_K)
        q = _query(vector, len(vector)).tolist()
        hits = self._index.query(q, top_k=ask, prefix=prefix)
        found = [
            Match(h.key, round(float(h.score), 6))
            for h in hits
            if h.key != exclude and (min_score is None or h.score >= min_score)
        ]
        return found[:top_k]

    def vector_of(self, key: str) -> list[float] | None:
        return self._index.vector_of(key)

    def neighbours_of(self, key: str, threshold: float) -> list[Match] | None:
        """The neighbours recorded when the image landed (at the bucket's threshold)."""
        hits = self._index.neighbours_of(key)
        if hits is None:
            return None
        return [Match(h.key, round(float(h.score), 6)) for h in hits if h.score >= threshold]

    def image_bytes(self, key: str, limit: int) -> bytes:
        if self._index.vector_of(key) is None:  # only indexed images, not any object
            raise SourceGoneError(f"{key}: not an image of this index")
        return self._open_image(key, limit)
