"""Keeping the vector index in step with the sidecars the function writes (SPEC section 10).

The sidecar is the source of truth; the index follows it:

- a success result's vector is put after its sidecar is written *or found current* (so
  a record retried after a failed put puts the vector although its sidecar is now
  current); error results are never indexed; all of an invocation's puts go out together,
  500 per request;
- before its sidecar is written, a new embedding asks the index for its nearest
  neighbours; those at or above ``DINOEMBED_DUPES_THRESHOLD`` are recorded in the sidecar
  and the vector's metadata (a snapshot, best effort: a failed query records none);
- a put that fails makes its records fail (retried: SQS ``batchItemFailures``, Batch
  Operations ``TemporaryFailure``, a raise for direct invocations);
- a deleted image's vector goes only when the image is really gone (the caller checked),
  and the delete is read back. A re-upload landing meanwhile is caught by looking again
  afterwards: if the image is back with a current success sidecar, its vector is put back;
- an index whose name is not the one the function's recipe needs is never written to
  (:meth:`Indexer.refused`): one error line at cold start and a metric per invocation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from dinoembed.collections.index import (
    MAX_TOP_K,
    RecipeMismatchError,
    VectorRecord,
    check_index_recipe,
    neighbours_of_hits,
    record_of,
)
from dinoembed.errors import DinoEmbedError, SourceGoneError
from dinoembed.handler.events import ObjectRef
from dinoembed.handler.s3io import S3Objects
from dinoembed.handler.vectors import S3VectorsIndex
from dinoembed.results.schema import EmbeddingResult, Neighbour
from dinoembed.results.sidecars import Recipe, sidecar_name

log = logging.getLogger(__name__)

# How many nearest images an upload asks for (the duplicates among them are recorded).
NEIGHBOUR_QUERY_K = 20


@dataclass
class Pending:
    """The vectors an invocation will put, with the records each belongs to."""

    records: list[VectorRecord] = field(default_factory=list)
    refs: list[ObjectRef] = field(default_factory=list)

    def add(self, ref: ObjectRef, result: EmbeddingResult) -> None:
        self.records.append(record_of(ref.key, result))
        self.refs.append(ref)


class Indexer:
    """The function's writer to its one index; one per execution environment."""

    def __init__(self, index: S3VectorsIndex, threshold: float) -> None:
        self.index = index
        self.threshold = threshold
        self._mismatch: str | None = None
        self._checked = False

    def check(self, recipe: Recipe) -> bool:
        """Is this the index ``recipe``'s vectors belong in? Logged once when it is not."""
        if not self._checked:
            self._checked = True
            try:
                check_index_recipe(self.index.index, recipe)
            except RecipeMismatchError as err:
                self._mismatch = str(err)
                log.error("%s: %s", self.index.name, err, extra={"index": self.index.name})
        return self._mismatch is None

    @property
    def refused(self) -> bool:
        return self._mismatch is not None

    def neighbours(self, key: str, result: EmbeddingResult) -> list[Neighbour] | None:
        """The images already indexed at or above the threshold (None: could not ask)."""
        if self.refused or result.embedding is None:
            return None
        try:
            hits = self.index.query(
                result.embedding.embedding, top_k=min(NEIGHBOUR_QUERY_K, MAX_TOP_K)
            )
        except DinoEmbedError as err:
            log.warning("cannot ask the index for the neighbours of %s: %s", key, err)
            return None
        return neighbours_of_hits(hits, key, self.threshold)

    def put(self, pending: Pending) -> None:
        """Put the pending vectors (raises the index's error; the caller fails the refs)."""
        if pending.records and not self.refused:
            self.index.put(pending.records)

    def delete(self, ref: ObjectRef, objects: S3Objects, suffix: str) -> bool:
        """Delete the vector of ``ref``, whose image the caller found gone; then, if the
        image came back meanwhile with a current success sidecar, put its vector back.
        True when the vector is gone."""
        self.index.delete([ref.key])
        try:
            meta = objects.head(ref.bucket, ref.key)
        except SourceGoneError:
            return True
        sidecar = objects.read_sidecar(ref.bucket, sidecar_name(ref.key, suffix))
        result = sidecar.result if sidecar else None
        if result is not None and result.ok and result.source.etag == meta.etag:
            log.info(
                "s3://%s/%s was uploaded again meanwhile; its vector is put back",
                *(ref.bucket, ref.key),
            )
            self.index.put([record_of(ref.key, result)])
        return False
