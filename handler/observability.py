"""Structured JSON logs and CloudWatch metrics (Embedded Metric Format) via Powertools.

The Powertools logger is named after the service, ``dinoembed``, so the core's
module loggers (``dinoembed.pipeline``, ...) and the handler's
(``dinoembed.handler.*``) are its children and log JSON lines too. Both are
created once per execution environment, never at import time.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

SERVICE = "dinoembed"
NAMESPACE = "dinoembed"


def make_logger() -> Logger:
    return Logger(service=SERVICE)


def make_metrics() -> Metrics:
    return Metrics(namespace=NAMESPACE, service=SERVICE)


@dataclass
class Tally:
    """What one invocation did, image by image; published as EMF metrics."""

    embedded: int = 0
    errors: int = 0
    skipped: int = 0
    failed: int = 0
    deleted: int = 0
    embed_ms: float = 0.0
    indexed: int = 0  # vectors put
    vectors_deleted: int = 0
    with_duplicates: int = 0  # new embeddings that recorded any neighbour
    unindexed: int = 0  # success results the index could not take (e.g. key > 1,024 bytes)
    index_refused: int = 0  # 1 when the index is not the one the recipe needs

    def merge(self, other: Tally) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


METRIC_NAMES = {
    "embedded": "ImagesEmbedded",
    "errors": "ImageErrors",
    "skipped": "ImagesSkipped",
    "failed": "RecordsFailed",
    "deleted": "SidecarsDeleted",
    "indexed": "VectorsPut",
    "vectors_deleted": "VectorsDeleted",
    "with_duplicates": "UploadsWithDuplicates",
    "unindexed": "VectorsNotIndexed",
    "index_refused": "IndexRecipeMismatch",
}


def publish(metrics: Metrics, tally: Tally) -> None:
    """Add the invocation's counts (and mean latency per embedded image) and flush them."""
    for attr, name in METRIC_NAMES.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=getattr(tally, attr))
    if tally.embedded:
        metrics.add_metric(
            name="EmbedLatency",
            unit=MetricUnit.Milliseconds,
            value=round(tally.embed_ms / tally.embedded, 3),
        )
    metrics.flush_metrics()
