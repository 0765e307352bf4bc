"""``similar`` and ``dupes`` on an ``s3://bucket/prefix`` answered by its vector index.

When the bucket has an index (``--index`` / ``DINOEMBED_VECTOR_INDEX``, or the recipe's
index in ``DINOEMBED_VECTOR_BUCKET``: :func:`dinoembed.cli.wiring.open_s3_index`), these
read neither every sidecar nor every vector:

- ``similar``: one QueryVectors restricted to the prefix; the output is the one the
  sidecar path prints (scores are cosines). ``--top-k`` above the service's 100 is an
  argument error, not a silent cut;
- ``dupes``: the groups come from the neighbours recorded as images landed plus the exact
  tier (same ``source.sha256``, else the same single-part ETag), read from the index's
  listing (1,000 vectors a request), grouped as the all-pairs path groups them. A
  ``--threshold`` below the one neighbours were recorded at cannot be answered from them:
  the all-pairs path runs instead (said in a log line).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dinoembed.cli import wiring
from dinoembed.collections.collection import MixedModelsError
from dinoembed.collections.dupes import Decisions
from dinoembed.collections.index import MAX_TOP_K, IndexDupes, index_duplicates, index_name
from dinoembed.errors import ConfigError, ImageError
from dinoembed.results.schema import EmbeddingResult
from dinoembed.results.sidecars import Recipe
from dinoembed.settings import Settings

if TYPE_CHECKING:
    from dinoembed.handler.vectors import S3VectorsIndex

log = logging.getLogger(__name__)


def similar_via_index(
    settings: Settings,
    index: S3VectorsIndex,
    query: str,
    location: str,
    *,
    top: int,
    min_score: float | None,
) -> dict[str, Any]:
    """``similar``'s document, answered by the bucket's vector index."""
    if top > MAX_TOP_K:
        raise ConfigError(
            f"--top-k {top}: the vector index {index.name} answers at most {MAX_TOP_K} "
            "(ask for fewer)"
        )
    from dinoembed.handler.collection_s3 import parse_s3_uri

    bucket, prefix = parse_s3_uri(location)
    result = _query_result(query, settings)
    if not result.ok or result.embedding is None:
        raise ImageError(f"{query}: cannot be used as a query: {result.error}")
    needed = index_name(Recipe(result.model, result.embedding.normalized))
    if needed != index.index:
        raise MixedModelsError(
            f"{index.name} holds another model's vectors: the query was embedded by "
            f"{result.model.name} (sha256 {result.model.sha256[:12]}…), whose index is {needed}"
        )
    hits = []
    if top > 0:
        raw = index.query_raw(
            result.embedding.embedding, top_k=min(top + 1, MAX_TOP_K), prefix=prefix
        )
        for hit, metadata in raw:
            path = f"s3://{bucket}/{hit.key}"
            if path != result.file_path and (min_score is None or hit.score >= min_score):
                hits.append((path, hit.score, metadata.get("etag")))
        hits = hits[:top]
    return {
        "query": result.file_path,
        "collection": location,
        "model": result.model.model_dump(),
        "index": index.name,
        "results": [{"path": p, "score": round(s, 6), "etag": etag} for p, s, etag in hits],
    }


def _query_result(query: str, settings: Settings) -> EmbeddingResult:
    """The query's result: its sidecar when it is one or has a success one, else embedded."""
    from dinoembed.results.sidecars import sidecar_name

    if query.endswith(settings.output_suffix):
        return EmbeddingResult.read_json(wiring.read_location(query))
    if wiring.is_s3(query):
        try:
            existing = EmbeddingResult.read_json(
                wiring.read_location(sidecar_name(query, settings.output_suffix))
            )
        except Exception:
            existing = None
        if existing is not None and existing.ok:
            return existing
    elif not Path(query).is_file():
        raise ConfigError(f"{query}: no such image or sidecar file")
    from dinoembed.pipeline import ImageItem, local_item

    embedder = wiring.pipeline(settings)
    item = (
        ImageItem(file_path=query, load=lambda: wiring.read_location(query))
        if wiring.is_s3(query)
        else local_item(Path(query))
    )
    return embedder.embed_one(item).result


def dupes_via_index(
    index: S3VectorsIndex, location: str, threshold: float, decisions: Decisions
) -> IndexDupes:
    """The duplicate groups of the images under ``location``, from the index's listing."""
    from dinoembed.handler.collection_s3 import parse_s3_uri

    bucket, prefix = parse_s3_uri(location)
    listing = (item for item in index.listing(metadata=True) if item.key.startswith(prefix))
    return index_duplicates(
        listing, threshold, path_of=lambda key: f"s3://{bucket}/{key}", decisions=decisions
    )
