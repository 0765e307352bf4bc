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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dinoembed.collections.index import (
    MAX_PUT,
    MAX_TOP_K,
    IndexLimitError,
    Listed,
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
    put: list[VectorRecord] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    current: dict[str, list[float] | None] = field(default_factory=dict)  # key -> vector
    other_recipes: dict[str, int] = field(default_factory=dict)


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
    indexed: dict[str, Listed] = {}
    for item in index.listing(data=neighbours, metadata=True):
        on_progress(1)
        if item.key.startswith(prefix):  # only what the comparison needs is kept
            indexed[item.key] = Listed(item.key, {"etag": item.etag}, item.vector)
    summary.vectors = len(indexed)
    plan = _plan(client, bucket, suffix, index, images, with_sidecar, indexed, summary)
    if plan.other_recipes and summary.sidecars == 0:
        needed = ", ".join(sorted(plan.other_recipes))
        raise RecipeMismatchError(
            f"the sidecars under s3://{bucket}/{prefix} were made for the index {needed}, "
            f"not {index.index!r}: refusing to write to {index.name}"
        )
    for name, count in sorted(plan.other_recipes.items()):
        log.warning("%d sidecar(s) were made by another recipe (index %s): left out", count, name)
    summary.put, summary.deleted = len(plan.put), len(plan.delete)
    replaced = {record.key for record in plan.put}
    summary.unchanged = sum(1 for k in indexed if k in plan.current and k not in replaced)
    if not dry_run:
        summary.failed += _write(index, plan, summary)
        if neighbours:
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
    indexed: dict[str, Listed],
    summary: SyncSummary,
) -> _Plan:
    plan = _Plan()
    to_read: list[str] = []
    for key, etag in images.items():
        known = indexed.get(key)
        if known is not None and known.etag == etag:
            plan.current[key] = known.vector
            summary.sidecars += 1
        elif key in with_sidecar:
            to_read.append(key)
    sidecar_keys = [sidecar_name(key, suffix) for key in to_read]
    for key, (_, data) in zip(to_read, read_objects(client, bucket, sidecar_keys), strict=True):
        result = parse_result(data) if data is not None else None
        record = _indexable(key, images[key], result, index, plan)
        if record is not None:
            plan.put.append(record)
            plan.current[key] = record.vector
            summary.sidecars += 1
    gone = [key for key in indexed if key not in plan.current]
    plan.delete.extend(sorted(gone))
    return plan


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


def _write(index: S3VectorsIndex, plan: _Plan, summary: SyncSummary) -> int:
    """Put and delete, a few requests at a time; how many vectors failed."""

    def put(chunk: Sequence[VectorRecord]) -> int:
        try:
            index.put(chunk)
        except DinoEmbedError as err:
            log.error("PutVectors of %d vectors failed: %s", len(chunk), err)
            return len(chunk)
        return 0

    def delete(chunk: Sequence[str]) -> int:
        try:
            index.delete(chunk)
        except DinoEmbedError as err:
            log.error("DeleteVectors of %d keys failed: %s", len(chunk), err)
            return len(chunk)
        return 0

    with ThreadPoolExecutor(WRITE_WORKERS, thread_name_prefix="dinoembed-sync") as pool:
        failed = sum(pool.map(put, _chunks(plan.put, MAX_PUT)))
        failed += sum(pool.map(delete, _chunks(plan.delete, MAX_PUT)))
    summary.put -= min(summary.put, failed)  # counts what landed
    return failed


def _recompute_neighbours(
    index: S3VectorsIndex, plan: _Plan, threshold: float, summary: SyncSummary
) -> int:
    """Ask the index for every current image's neighbours; store them in its metadata."""
    keys = sorted(plan.current)
    missing = [k for k in keys if plan.current[k] is None]
    for listed in index.get(missing, data=True, metadata=False) if missing else []:
        plan.current[listed.key] = listed.vector
    metadata = {listed.key: dict(listed.metadata) for listed in index.get(keys, data=False)}
    updates: list[VectorRecord] = []
    for key in keys:
        vector = plan.current.get(key)
        if vector is None or key not in metadata:
            continue
        try:
            hits = index.query(vector, top_k=min(NEIGHBOUR_QUERY_K, MAX_TOP_K))
        except DinoEmbedError as err:
            log.error("QueryVectors for %s failed: %s", key, err)
            summary.failed += 1
            continue
        found = neighbours_of_hits(hits, key, threshold)
        md = metadata[key]
        md["neighbours"] = encode_neighbours(found)
        updates.append(VectorRecord(key, vector, md))
    for chunk in _chunks(updates, MAX_PUT):
        try:
            index.put(chunk)
        except DinoEmbedError as err:
            log.error("PutVectors of %d vectors failed: %s", len(chunk), err)
            summary.failed += len(chunk)
            updates = [u for u in updates if u not in chunk]
    return len(updates)
