"""``dinoembed index sync``: bring an S3 Vectors index in step with a prefix's sidecars.

The sidecars are the record (SPEC section 10); this is the repair and the rebuild:

1. list the prefix (images with their ETags, and which have a sidecar) and the index
   (keys with their metadata, 1,000 a request);
2. an image whose vector records the image's current ETag is *unchanged*: the vector was
   put from a current success sidecar of that image, and the index holds one recipe, so
   its sidecar need not be read. Only the sidecars of the other images are read
   (concurrently);
3. a sidecar that is a success, describes the image as it is now and was made by the
   index's recipe (its name says which) is *put*, 500 vectors a request, a few requests
   at a time (throttling is retried by the client, which also slows to the rate the index
   accepts); a vector whose image is gone, or whose sidecar is no longer a current
   success, is *deleted* (read back);
4. ``neighbours``: every current image asks the index for its nearest neighbours and the
   ones at or above the threshold are stored in its vector's metadata (for images that
   landed together, before either was indexed).

Sidecars of another recipe are left out (counted); when every success sidecar is of another
recipe the sync refuses before writing anything, naming the index they need.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dinoembed.collections.index import (
    MAX_GET,
    MAX_PUT,
    MAX_TOP_K,
    META_NEIGHBOURS,
    IndexLimitError,
    RecipeMismatchError,
    VectorRecord,
    encode_neighbours,
    index_name,
    neighbours_of_hits,
    record_of,
)
from dinoembed.errors import DinoEmbedError
from dinoembed.handler.collection_s3 import list_objects, read_objects
from dinoembed.handler.indexing import NEIGHBOUR_QUERY_K
from dinoembed.handler.vectors import S3VectorsIndex
from dinoembed.images.files import looks_like_image
from dinoembed.results.schema import EmbeddingResult
from dinoembed.results.sidecars import Recipe, is_sidecar, parse_result, sidecar_name

log = logging.getLogger(__name__)

WRITE_WORKERS = 4  # concurrent PutVectors / DeleteVectors requests
READ_BLOCK = 2000  # sidecars read ahead (about 9 KB each for 384-d)


@dataclass
class SyncSummary:
    """The JSON summary (SPEC section 5)."""

    sidecars: int = 0  # current success sidecars of the index's recipe under the prefix
    vectors: int = 0  # vectors under the prefix before the sync
    put: int = 0
    deleted: int = 0
    unchanged: int = 0
    failed: int = 0
    other_recipe: int = 0  # success sidecars made by another recipe (not this index's)
    neighbours: int | None = None  # vectors whose neighbours were recomputed (--neighbours)
    dry_run: bool = False
    requests: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        if self.neighbours is None:
            doc.pop("neighbours")
        return doc


@dataclass
class _Plan:
    delete: list[str] = field(default_factory=list)
    current: set[str] = field(default_factory=set)  # the keys a current sidecar backs
    replaced: set[str] = field(default_factory=set)  # indexed keys put again
    other_recipes: dict[str, int] = field(default_factory=dict)


class _Writer:
    """Puts records as they come, 500 a request, a few requests in flight (so a full
    rebuild never holds every vector); deletes at the end. Counts what landed and failed."""

    def __init__(self, index: S3VectorsIndex, *, dry_run: bool) -> None:
        self.index, self.dry_run = index, dry_run
        self.pool = ThreadPoolExecutor(WRITE_WORKERS, thread_name_prefix="dinoembed-sync")
        self.buffer: list[VectorRecord] = []
        self.pending: list[Future[tuple[int, int]]] = []
        self.done, self.failed = 0, 0

    def put(self, record: VectorRecord) -> None:
        if self.dry_run:
            self.done += 1
            return
        self.buffer.append(record)
        if len(self.buffer) >= MAX_PUT:
            self._submit(self._put, self.buffer)
            self.buffer = []

    def delete(self, keys: Sequence[str]) -> None:
        if self.dry_run:
            self.done += len(keys)
            return
        for chunk in _chunks(keys, MAX_PUT):
            self._submit(self._delete, chunk)

    def close(self) -> None:
        if self.buffer:
            self._submit(self._put, self.buffer)
            self.buffer = []
        self._wait(0)
        self.pool.shutdown()

    def _submit(self, fn: Callable[[Any], tuple[int, int]], chunk: Any) -> None:
        self._wait(2 * WRITE_WORKERS)
        self.pending.append(self.pool.submit(fn, chunk))

    def _wait(self, keep: int) -> None:
        while len(self.pending) > keep:
            done, failed = self.pending.pop(0).result()
            self.done += done
            self.failed += failed

    def _put(self, chunk: Sequence[VectorRecord]) -> tuple[int, int]:
        try:
            self.index.put(chunk)
        except DinoEmbedError as err:
            log.error("PutVectors of %d vectors failed: %s", len(chunk), err)
            return 0, len(chunk)
        return len(chunk), 0

    def _delete(self, chunk: Sequence[str]) -> tuple[int, int]:
        try:
            self.index.delete(chunk)
        except DinoEmbedError as err:
            log.error("DeleteVectors of %d keys failed: %s", len(chunk), err)
            return 0, len(chunk)
        return len(chunk), 0


def recipe_index(result: EmbeddingResult) -> str | None:
    """The index a success result's vector belongs in (None for an error result)."""
    if result.embedding is None:
        return None
    return index_name(Recipe(result.model, result.embedding.normalized))


def sync_index(
    client: Any,
    bucket: str,
    prefix: str,
    suffix: str,
    index: S3VectorsIndex,
    *,
    neighbours: bool = False,
    threshold: float = 0.95,
    dry_run: bool = False,
    on_progress: Callable[[int], None] = lambda n: None,
) -> SyncSummary:
    summary = SyncSummary(dry_run=dry_run)
    images: dict[str, str] = {}
    with_sidecar: set[str] = set()
    for obj in list_objects(client, bucket, prefix):
        on_progress(1)
        if is_sidecar(obj.key, suffix):
            with_sidecar.add(obj.key[: -len(suffix)])
        elif looks_like_image_key(obj.key, suffix):
            images[obj.key] = obj.etag
    indexed: dict[str, str | None] = {}  # key -> the ETag its vector records
    for item in index.listing(data=False, metadata=True):
        on_progress(1)
        if item.key.startswith(prefix):  # only what the comparison needs is kept
            indexed[item.key] = item.etag
    summary.vectors = len(indexed)
    puts = _Writer(index, dry_run=dry_run)
    try:
        plan = _plan(client, bucket, suffix, index, images, with_sidecar, indexed, summary, puts)
        if plan.other_recipes and summary.sidecars == 0:  # (then nothing was put either)
            needed = ", ".join(sorted(plan.other_recipes))
            raise RecipeMismatchError(
                f"the sidecars under s3://{bucket}/{prefix} were made for the index {needed}, "
                f"not {index.index!r}: refusing to write to {index.name}"
            )
        puts.close()
    finally:
        puts.pool.shutdown(cancel_futures=True)
    summary.put, summary.failed = puts.done, puts.failed
    for name, count in sorted(plan.other_recipes.items()):
        log.warning("%d sidecar(s) were made by another recipe (index %s): left out", count, name)
    deletes = _Writer(index, dry_run=dry_run)
    deletes.delete(plan.delete)
    deletes.close()
    summary.deleted, summary.failed = deletes.done, summary.failed + deletes.failed
    summary.unchanged = sum(1 for k in indexed if k in plan.current and k not in plan.replaced)
    if neighbours and not dry_run:
        summary.neighbours = _recompute_neighbours(index, plan, threshold, summary)
    summary.requests = {"s3vectors": index.requests}
    return summary


def looks_like_image_key(key: str, suffix: str) -> bool:
    return looks_like_image(Path(key), suffix)


def _plan(
    client: Any,
    bucket: str,
    suffix: str,
    index: S3VectorsIndex,
    images: dict[str, str],
    with_sidecar: set[str],
    indexed: dict[str, str | None],
    summary: SyncSummary,
    puts: _Writer,
) -> _Plan:
    plan = _Plan()
    to_read: list[str] = []
    for key, etag in images.items():
        if key in indexed and indexed[key] == etag:
            plan.current.add(key)
            summary.sidecars += 1
        elif key in with_sidecar:
            to_read.append(key)
    for key, data in _read_sidecars(client, bucket, suffix, to_read):
        result = parse_result(data) if data is not None else None
        record = _indexable(key, images[key], result, index, plan)
        if record is not None:
            puts.put(record)
            plan.current.add(key)
            if key in indexed:
                plan.replaced.add(key)
            summary.sidecars += 1
    gone = [key for key in indexed if key not in plan.current]
    plan.delete.extend(sorted(gone))
    return plan


def _read_sidecars(
    client: Any, bucket: str, suffix: str, keys: Sequence[str]
) -> Iterator[tuple[str, bytes | None]]:
    """``(image key, sidecar bytes)``, read concurrently a block at a time: a fast reader
    never piles up more than a block of sidecars ahead of the puts."""
    for block in _chunks(keys, READ_BLOCK):
        names = [sidecar_name(key, suffix) for key in block]
        for key, (_, data) in zip(block, read_objects(client, bucket, names), strict=True):
            yield key, data


def _indexable(
    key: str, etag: str, result: EmbeddingResult | None, index: S3VectorsIndex, plan: _Plan
) -> VectorRecord | None:
    if result is None or not result.ok or result.source.etag != etag:
        return None  # no sidecar, an error result, or a stale one: nothing to index
    needed = recipe_index(result)
    if needed != index.index:
        plan.other_recipes[str(needed)] = plan.other_recipes.get(str(needed), 0) + 1
        return None
    try:
        return record_of(key, result)
    except IndexLimitError as err:
        log.warning("not indexed: %s", err)
        return None


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _recompute_neighbours(
    index: S3VectorsIndex, plan: _Plan, threshold: float, summary: SyncSummary
) -> int:
    """Ask the index for every current image's neighbours and store them in its vector's
    metadata: 100 vectors read a request, one query each, 500 written back a request."""
    writer = _Writer(index, dry_run=False)
    keys = sorted(plan.current)
    for chunk in _chunks(keys, MAX_GET):
        try:
            found = index.get(chunk, data=True, metadata=True)
        except DinoEmbedError as err:
            log.error("GetVectors of %d keys failed: %s", len(chunk), err)
            summary.failed += len(chunk)
            continue
        for listed in found:
            if listed.vector is None:
                continue
            try:
                hits = index.query(listed.vector, top_k=min(NEIGHBOUR_QUERY_K, MAX_TOP_K))
            except DinoEmbedError as err:
                log.error("QueryVectors for %s failed: %s", listed.key, err)
                summary.failed += 1
                continue
            metadata = dict(listed.metadata)
            metadata[META_NEIGHBOURS] = encode_neighbours(
                neighbours_of_hits(hits, listed.key, threshold)
            )
            writer.put(VectorRecord(listed.key, listed.vector, metadata))
    writer.close()
    summary.failed += writer.failed
    return writer.done
