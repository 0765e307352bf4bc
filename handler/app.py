"""AWS Lambda entry point: ``dinoembed.handler.app.lambda_handler``.

Module-level lazy state: the settings, the S3 client, the logger and metrics are
made on the first invocation of an execution environment, and the model is
loaded the first time an invocation has an image to embed (an ``s3:TestEvent``
cold start downloads nothing). Later invocations reuse all of it. If loading the
model fails, nothing is kept and the next invocation tries again.

Failure policy (SPEC section 7): SQS invocations return
``{"batchItemFailures": [...]}`` listing the messages to retry (unrecognised
bodies, transient errors); S3 Batch Operations get a result code per task
(:mod:`dinoembed.handler.batch_ops`); every other invocation raises
:class:`~dinoembed.errors.TransientError` when any object must be retried, so
Lambda's retries and the failure destination / DLQ take over.
"""

from __future__ import annotations

# Before anything else: no cyclic garbage collection while the handler imports (~40 ms of
# a cold start on Python 3.12); resumed, with the survivors frozen, at the end of this
# module (dinoembed.common.collector).
from dinoembed.common.collector import pause_collection

_resume_collection = pause_collection()

# Then, before ~0.3 s of pydantic-settings/botocore/Powertools imports that hold the
# GIL: start creating the ONNX Runtime session of a model that needs no download (bundled,
# or a local path) on a background thread, so the two overlap (dinoembed.handler.preload).
# The imports below this call are therefore not at the top of the module (E402).
from dinoembed.handler.preload import ModelPreload, lambda_settings, start_preload

_preload: ModelPreload | None = start_preload()

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools import Logger, Metrics

from dinoembed.common.logs import capture_library_warnings
from dinoembed.errors import TransientError
from dinoembed.handler.batch_ops import BatchOperations
from dinoembed.handler.deletes import SidecarDeleter
from dinoembed.handler.events import Invocation, normalise
from dinoembed.handler.indexing import Indexer
from dinoembed.handler.model_fetch import fetchers_with_s3
from dinoembed.handler.observability import Tally, make_logger, make_metrics, publish
from dinoembed.handler.process import Processor, Report
from dinoembed.handler.s3io import S3Objects, make_client
from dinoembed.handler.vectors import S3VectorsIndex, make_vectors_client
from dinoembed.model.loader import LoadedModel
from dinoembed.model.store import ModelStore
from dinoembed.pipeline import Pipeline, build_pipeline
from dinoembed.results.sidecars import Recipe
from dinoembed.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Everything that lives as long as the execution environment."""

    settings: Settings
    s3_client: Any
    logger: Logger
    metrics: Metrics
    indexer: Indexer | None = None
    _embedder: Pipeline | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    model_loads: int = 0

    def embedder(self) -> Pipeline:
        """The pipeline, built on first use (the model download happens here, once)."""
        with self._lock:
            if self._embedder is None:
                store = ModelStore(self.settings.cache_dir, fetchers_with_s3(self.s3_client))
                loaded = _take_preload(self.settings)
                self._embedder = build_pipeline(self.settings, store=store, loaded=loaded)
                self.model_loads += 1
            return self._embedder

    def processor(self) -> Processor:
        return Processor(
            S3Objects(self.s3_client), self.embedder, self.settings.output_suffix, self.indexer
        )

    def deleter(self) -> SidecarDeleter:
        return SidecarDeleter(S3Objects(self.s3_client), self.settings.output_suffix, self.indexer)

    def recipe(self) -> Recipe:
        return self.embedder().recipe

    def batch_operations(self) -> BatchOperations:
        objects = S3Objects(self.s3_client)
        return BatchOperations(objects, self.processor(), self.recipe, self.settings.output_suffix)


class RetryError(TransientError):
    """Raised for non-SQS invocations so Lambda retries them (then the DLQ takes over)."""


_runtime: Runtime | None = None


def _take_preload(settings: Settings) -> LoadedModel | None:
    """The model loaded at import (once; None when there was none or it was loaded for
    other settings). A failed preload is raised here once; the next invocation loads anew."""
    global _preload
    preload, _preload = _preload, None
    return preload.take(settings) if preload is not None else None


def runtime() -> Runtime:
    """The execution environment's state, created on the first call."""
    global _runtime
    if _runtime is None:
        logger = make_logger()  # configures the "dinoembed" loggers before anything logs
        capture_library_warnings()  # Pillow's warnings become log records, not raw stderr
        settings = lambda_settings()
        _runtime = Runtime(
            settings, make_client(), logger, make_metrics(), indexer=make_indexer(settings)
        )
    return _runtime


def make_indexer(settings: Settings) -> Indexer | None:
    """The index named by ``DINOEMBED_VECTOR_INDEX`` (none when unset)."""
    if settings.vector_index is None:
        return None
    index = S3VectorsIndex.from_uri(make_vectors_client(), settings.vector_index)
    return Indexer(index, settings.dupes_threshold)


def reset() -> None:
    """Forget the state (a fresh cold start); for tests and local experiments."""
    global _runtime, _preload
    _runtime = None
    _preload = None


def lambda_handler(event: Any, context: Any) -> dict[str, Any]:
    rt = runtime()
    rt.logger.append_keys(request_id=getattr(context, "aws_request_id", None))
    invocation = normalise(event)
    report = Report()
    try:
        if invocation.batch is not None:
            response, report = rt.batch_operations().run(invocation.batch, invocation.refs)
            return response
        if invocation.kind == "test":
            log.info("s3:TestEvent received; nothing to do")
        else:
            report = rt.deleter().process(invocation.deleted)
            embedded = rt.processor().process(invocation.to_embed)
            report.failed.extend(embedded.failed)
            report.tally.merge(embedded.tally)
    finally:
        tally = Tally(failed=len(invocation.bad_messages))
        tally.merge(report.tally)
        publish(rt.metrics, tally)
    return _respond(invocation, report)


def _respond(invocation: Invocation, report: Report) -> dict[str, Any]:
    if invocation.kind == "sqs":
        failed = _unique([*invocation.bad_messages, *(r.message_id for r, _ in report.failed)])
        for message_id in invocation.bad_messages:
            log.warning("SQS message %s is not an S3 notification", message_id)
        return {"batchItemFailures": [{"itemIdentifier": m} for m in failed]}
    if report.failed:
        reasons = "; ".join(f"{ref.uri}: {why}" for ref, why in report.failed[:3])
        raise RetryError(f"{len(report.failed)} object(s) must be retried: {reasons}")
    tally = report.tally
    return {
        "kind": invocation.kind,
        "embedded": tally.embedded,
        "errors": tally.errors,
        "skipped": tally.skipped,
        "deleted": tally.deleted,
    }


def _unique(ids: Any) -> list[str]:
    seen: dict[str, None] = {}
    for message_id in ids:
        if message_id is not None:
            seen.setdefault(message_id, None)
    return list(seen)


_resume_collection()  # the handler is imported: collect what the invocations allocate
