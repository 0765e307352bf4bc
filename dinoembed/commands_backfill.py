"""``dinoembed backfill s3://bucket/prefix``: sidecars for the images that lack a current one.

Locally (the model runs here, in batches, sidecars written as the function writes
them) or, with ``--queue-url``, by announcing each such image to the function's SQS
queue so Lambda does the work at scale. Folders go to ``watch --once`` instead.
"""

from __future__ import annotations

import logging

from dinoembed.model_store import ModelStore, sha256_file
from dinoembed.pipeline import build_embedder
from dinoembed.settings import Settings

log = logging.getLogger(__name__)


def expected_model(settings: Settings) -> tuple[str, str]:
    """The sha256 and preprocessing the function is configured with, without loading it:
    the file's digest for ``--model``/``DINOEMBED_MODEL_PATH``, else ``DINOEMBED_MODEL_SHA256``."""
    if settings.model_path is not None and not settings.sha256_is_explicit:
        return sha256_file(settings.model_path), settings.preprocess
    return settings.model_sha256, settings.preprocess


def backfill_s3(settings: Settings, location: str, queue_url: str | None) -> int:
    """Print one JSON summary line; 1 when some images must be retried, else 0."""
    from dinoembed.fetchers import default_fetchers
    from handler.collection_s3 import (
        BackfillSummary,
        embed_here,
        make_sqs_client,
        parse_s3_uri,
        send_to_queue,
        stale_images,
    )
    from handler.s3io import make_client

    bucket, prefix = parse_s3_uri(location)
    client = make_client()
    suffix = settings.output_suffix
    summary = BackfillSummary(location)
    if queue_url:
        sha256, preprocess = expected_model(settings)
        refs, summary.images = stale_images(
            client, bucket, prefix, suffix, sha256=sha256, preprocess=preprocess
        )
        region = str(client.meta.region_name)
        summary.queued = send_to_queue(make_sqs_client(), queue_url, refs, region)
    else:
        embedder = build_embedder(
            settings, ModelStore(settings.cache_dir, default_fetchers(client))
        )
        model = embedder.model
        refs, summary.images = stale_images(
            client, bucket, prefix, suffix, sha256=model.sha256, preprocess=model.preprocess
        )
        tally = embed_here(client, refs, embedder, suffix)
        summary.embedded, summary.errors = tally.embedded, tally.errors
        summary.skipped, summary.failed = tally.skipped, tally.failed
    summary.todo = len(refs)
    summary.current = summary.images - len(refs)
    log.info("backfill %s: %s", location, summary.to_json())
    print(summary.to_json())
    return 1 if summary.failed else 0
