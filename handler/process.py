"""From announced S3 objects to sidecars: plan, embed in batches, write conditionally.

For each object announced:

1. skip it when its key is one of our own sidecars (recursion guard) or not an image;
2. learn its size and ETag (from the event, else ``HeadObject``); a vanished object
   is skipped;
3. read its sidecar: if it is current (the core's rule, :func:`dinoembed.results.sidecars.judge`:
   this object's version id or ETag, this model, preprocessing and normalisation), or
   written by a newer dinoembed, skip (idempotent under at-least-once delivery);
4. an object above ``DINOEMBED_MAX_BYTES`` gets an error sidecar without being
   downloaded; the rest are embedded together, in batches, by the core pipeline;
5. write each sidecar with ``IfNoneMatch: *`` (none existed) or ``IfMatch`` (the
   one we read); a lost race means another invocation wrote it: done.

Transient trouble (throttling, 5xx, the model not downloadable) marks the object
*failed*: the caller retries it (SQS ``batchItemFailures``, or raising).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dinoembed.collections.index import IndexLimitError
from dinoembed.errors import DinoEmbedError, ImageError, SourceGoneError
from dinoembed.handler.events import ObjectRef
from dinoembed.handler.indexing import Indexer, Pending
from dinoembed.handler.observability import Tally
from dinoembed.handler.s3io import ObjectMeta, S3Objects, Sidecar
from dinoembed.images.decode import check_byte_size
from dinoembed.images.files import looks_like_image
from dinoembed.pipeline import Disposition, ImageItem, Pipeline
from dinoembed.results.schema import EmbeddingResult, SourceInfo
from dinoembed.results.sidecars import Verdict, is_sidecar, judge, sidecar_name

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Job:
    """An object that will get a sidecar: embedded, or an error result without download."""

    ref: ObjectRef
    item: ImageItem
    existing: Sidecar | None
    error: str | None = None


@dataclass
class Report:
    """What happened: the objects to retry (with the reason) and the counts."""

    failed: list[tuple[ObjectRef, str]] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)

    def skip(self, ref: ObjectRef, reason: str, *, deletion: bool = False) -> None:
        """Nothing to do for ``ref`` (counted, logged with the reason)."""
        self.tally.skipped += 1
        log_image(ref, "skipped", 0.0, reason=reason, deletion=deletion)

    def fail(self, ref: ObjectRef, reason: str, *, deletion: bool = False) -> None:
        """``ref`` must be retried (counted, listed for the caller, logged)."""
        self.tally.failed += 1
        self.failed.append((ref, reason))
        log_image(ref, "failed", 0.0, reason=reason, deletion=deletion, level=logging.WARNING)


class Processor:
    """Turns announced objects into sidecars; one per execution environment."""

    def __init__(
        self,
        objects: S3Objects,
        embedder: Callable[[], Pipeline],
        output_suffix: str,
        indexer: Indexer | None = None,
    ) -> None:
        self.objects = objects
        self._embedder = embedder
        self.suffix = output_suffix
        self.indexer = indexer

    def process(self, refs: Iterable[ObjectRef]) -> Report:
        report = Report()
        candidates = [ref for ref in refs if self._wanted(ref, report)]
        if not candidates:
            return report
        try:
            embedder = self._embedder()
        except DinoEmbedError as err:
            log.error("model unavailable: %s", err, extra={"error": str(err)})
            for ref in candidates:
                report.fail(ref, f"model unavailable: {err}")
            return report
        index = self._index_for(embedder, report)
        pending = Pending()
        jobs = [job for ref in candidates if (job := self._plan(ref, embedder, report, pending))]
        self._run(jobs, embedder, report, pending, index)
        self._put_vectors(pending, report, index)
        return report

    def _index_for(self, embedder: Pipeline, report: Report) -> Indexer | None:
        """The index to keep in step, unless there is none or it is for another recipe."""
        if self.indexer is None:
            return None
        if not self.indexer.check(embedder.recipe):
            report.tally.index_refused = 1
            return None
        return self.indexer

    def _queue_vector(
        self, ref: ObjectRef, result: EmbeddingResult, pending: Pending, report: Report
    ) -> None:
        if self.indexer is None or self.indexer.refused or not result.ok:
            return  # error results are never indexed
        try:
            pending.add(ref, result)
        except IndexLimitError as err:
            report.tally.unindexed += 1
            log.warning("not indexed: %s", err, extra={"bucket": ref.bucket, "key": ref.key})

    def _put_vectors(self, pending: Pending, report: Report, index: Indexer | None) -> None:
        """One batched put for the invocation; its failure fails the records (retried)."""
        if index is None or not pending.records:
            return
        try:
            index.put(pending)
        except DinoEmbedError as err:
            for ref in pending.refs:
                report.fail(ref, f"cannot index the vector: {err}")
            return
        report.tally.indexed += len(pending.records)

    def _wanted(self, ref: ObjectRef, report: Report) -> bool:
        if is_sidecar(ref.key, self.suffix):
            report.skip(ref, "own output (recursion guard)")
            return False
        if not looks_like_image(Path(ref.key), self.suffix):
            report.skip(ref, "not an image key")
            return False
        return True

    def _plan(
        self, ref: ObjectRef, embedder: Pipeline, report: Report, pending: Pending
    ) -> _Job | None:
        try:
            meta = self._meta(ref)
            existing = self.objects.read_sidecar(ref.bucket, self._sidecar_key(ref))
        except SourceGoneError as err:
            report.skip(ref, f"object gone: {err}")
            return None
        except DinoEmbedError as err:
            report.fail(ref, str(err))
            return None
        recorded = existing.result if existing else None
        source = SourceInfo(size=meta.size, etag=meta.etag, version_id=meta.version_id)
        verdict = judge(recorded, source, embedder.recipe)
        if verdict is Verdict.CURRENT:
            report.skip(ref, "sidecar is current")
            if recorded is not None:  # a retry after a failed put: the vector goes in now
                self._queue_vector(ref, recorded, pending, report)
            return None
        if verdict is Verdict.NEWER:
            report.skip(ref, "sidecar written by a newer dinoembed; left alone")
            return None
        item = self._item(ref, meta)
        try:
            check_byte_size(meta.size, embedder.limits)
        except ImageError as err:
            return _Job(ref, item, existing, error=str(err))
        return _Job(ref, item, existing)

    def _meta(self, ref: ObjectRef) -> ObjectMeta:
        if ref.size is not None and ref.etag is not None:
            return ObjectMeta(ref.size, ref.etag, ref.version_id)
        return self.objects.head(ref.bucket, ref.key)

    def _item(self, ref: ObjectRef, meta: ObjectMeta) -> ImageItem:
        bucket, key, objects = ref.bucket, ref.key, self.objects

        def load() -> bytes:
            return objects.read(bucket, key, etag=meta.etag, version_id=meta.version_id)

        source = SourceInfo(size=meta.size, etag=meta.etag, version_id=meta.version_id)
        return ImageItem(file_path=ref.uri, load=load, source=source)

    def _run(
        self,
        jobs: list[_Job],
        embedder: Pipeline,
        report: Report,
        pending: Pending,
        index: Indexer | None,
    ) -> None:
        to_embed = [job for job in jobs if job.error is None]
        for job in jobs:
            if job.error is not None:
                self._write(job, embedder.error_result(job.item, job.error), report, 0.0)
        outcomes = embedder.embed(job.item for job in to_embed)
        for job, outcome in zip(to_embed, outcomes, strict=True):
            if outcome.disposition is Disposition.GONE:
                report.skip(job.ref, f"object gone: {outcome.reason}")
            elif outcome.disposition is Disposition.RETRY:
                report.fail(job.ref, outcome.reason)
            else:
                result = self._with_neighbours(job.ref, outcome.result, index, report)
                if self._write(job, result, report, outcome.seconds):
                    self._queue_vector(job.ref, result, pending, report)

    def _with_neighbours(
        self, ref: ObjectRef, result: EmbeddingResult, index: Indexer | None, report: Report
    ) -> EmbeddingResult:
        """The result with the duplicates already indexed (SPEC section 10), when asked."""
        if index is None or not result.ok:
            return result
        neighbours = index.neighbours(ref.key, result)
        if neighbours is None:
            return result
        if neighbours:
            report.tally.with_duplicates += 1
        return result.model_copy(update={"neighbours": neighbours})

    def _write(self, job: _Job, result: EmbeddingResult, report: Report, seconds: float) -> bool:
        """Write the sidecar; True when this invocation wrote it."""
        replaces = job.existing.etag if job.existing else None
        try:
            written = self.objects.put_sidecar(
                job.ref.bucket, self._sidecar_key(job.ref), result, replaces=replaces
            )
        except DinoEmbedError as err:
            report.fail(job.ref, f"cannot write sidecar: {err}")
            return False
        if not written:
            report.skip(job.ref, "sidecar written concurrently by another invocation")
            return False
        if result.ok:
            report.tally.embedded += 1
            report.tally.embed_ms += seconds * 1000.0
        else:
            report.tally.errors += 1
        log_image(job.ref, result.status, seconds, error=result.error)
        return True

    def _sidecar_key(self, ref: ObjectRef) -> str:
        return sidecar_name(ref.key, self.suffix)


def log_image(
    ref: ObjectRef,
    status: str,
    seconds: float,
    *,
    reason: str | None = None,
    error: str | None = None,
    deletion: bool = False,
    level: int = logging.INFO,
) -> None:
    """One structured line per image: where it is, what happened, how long it took
    (``deletion`` for the sidecar removals of deleted images: ``"action": "delete"``)."""
    extra = {
        "bucket": ref.bucket,
        "key": ref.key,
        "status": status,
        "seconds": round(seconds, 4),
        "message_id": ref.message_id,
    }
    if reason:
        extra["reason"] = reason
    if error:
        extra["error"] = error
    if deletion:
        extra["action"] = "delete"
        log.log(level, "%s %s (deletion)", status, ref.uri, extra=extra)
        return
    log.log(level, "%s %s", status, ref.uri, extra=extra)
