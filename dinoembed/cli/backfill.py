"""``dinoembed backfill DIR_OR_S3``: sidecars for the images that lack a current one.

A folder is the same as ``watch --once``. For ``s3://bucket/prefix`` the model runs
here, in batches, sidecars written as the function writes them; with ``--queue-url``
each such image is announced to the function's SQS queue so Lambda does the work.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dinoembed.cli import wiring
from dinoembed.errors import ConfigError
from dinoembed.model_store import sha256_file
from dinoembed.progress import Progress
from dinoembed.results import ModelInfo
from dinoembed.settings import Settings
from dinoembed.sidecars import Recipe

log = logging.getLogger(__name__)


def run_backfill(settings: Settings, location: str, queue_url: str | None) -> int:
    if not wiring.is_s3(location):
        if queue_url:
            raise ConfigError("--queue-url is for s3:// locations (folders are embedded here)")
        with wiring.needs_extra("backfilling a folder"):
            from dinoembed.watcher.daemon import run_watch
        return run_watch(
            settings, Path(location), once=True, embedder=lambda: wiring.pipeline(settings)
        )
    return backfill_s3(settings, location, queue_url)


def expected_model(settings: Settings) -> tuple[str, str]:
    """The sha256 and preprocessing the function is configured with, without loading it:
    the file's digest for ``--model``/``DINOEMBED_MODEL_PATH``, else ``DINOEMBED_MODEL_SHA256``."""
    if settings.model_path is not None and not settings.sha256_is_explicit:
        return sha256_file(settings.model_path), settings.preprocess
    return settings.model_sha256, settings.preprocess


def expected_recipe(settings: Settings) -> Recipe:
    """What the configured model would make, for the currency rule, without loading it
    (the rule compares the model's sha256 and preprocessing, not its name or size)."""
    sha256, _ = expected_model(settings)
    model = ModelInfo(
        name=settings.model_name, sha256=sha256, preprocess=settings.preprocess, input_size=224
    )
    return Recipe(model, settings.normalize)


def backfill_s3(settings: Settings, location: str, queue_url: str | None) -> int:
    """Print one JSON summary line; 1 when some images must be retried, else 0."""
    with wiring.needs_extra("s3:// locations"):
        from dinoembed.handler import collection_s3 as s3
    bucket, prefix = s3.parse_s3_uri(location)
    client = wiring.s3_client()
    suffix = settings.output_suffix
    summary = s3.BackfillSummary(location)
    if queue_url:
        refs, summary.images = s3.stale_images(
            client, bucket, prefix, suffix, expected_recipe(settings)
        )
        region = str(client.meta.region_name)
        summary.queued = s3.send_to_queue(s3.make_sqs_client(), queue_url, refs, region)
    else:
        embedder = wiring.pipeline(settings, client)
        refs, summary.images = s3.stale_images(client, bucket, prefix, suffix, embedder.recipe)
        with Progress(len(refs)) as progress:
            tally = s3.embed_here(client, refs, embedder, suffix, on_progress=progress.advance)
        summary.embedded, summary.errors = tally.embedded, tally.errors
        summary.skipped, summary.failed = tally.skipped, tally.failed
    summary.todo = len(refs)
    summary.current = summary.images - len(refs)
    log.info("backfill %s: %s", location, summary.to_json())
    print(summary.to_json())
    return 1 if summary.failed else 0
