"""``dinoembed backfill DIR_OR_S3``: sidecars for the images that lack a current one.

A folder is the same as ``watch --once``. For ``s3://bucket/prefix`` the model runs
here, in batches, sidecars written as the function writes them; with ``--queue-url``
each such image is announced to the function's SQS queue so Lambda does the work;
with ``--manifest OUT.csv`` they are listed in an S3 Batch Operations manifest, for a
job that invokes the function on each.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

from dinoembed.cli import output, wiring
from dinoembed.common.progress import Progress
from dinoembed.errors import ConfigError
from dinoembed.pipeline import expected_recipe
from dinoembed.results.coverage import assess
from dinoembed.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_INPUT_SIZE = 224  # descriptive only: not part of a model's identity


def run_backfill(
    settings: Settings, location: str, queue_url: str | None, *, manifest: Path | None = None
) -> int:
    wiring.path_filter(settings, location)  # refuses --include/--exclude for s3://
    if not wiring.is_s3(location):
        if queue_url:
            raise ConfigError("--queue-url is for s3:// locations (folders are embedded here)")
        if manifest:
            raise ConfigError("--manifest is for s3:// locations (folders are embedded here)")
        with wiring.needs_extra("backfilling a folder"):
            from dinoembed.watcher.daemon import run_watch
        return run_watch(
            settings,
            Path(location),
            once=True,
            embedder=lambda: wiring.pipeline(settings),
            on_finish=output.print_json,
        )
    if manifest is not None:
        if queue_url:
            raise ConfigError("--manifest and --queue-url: choose one")
        return write_backfill_manifest(settings, location, manifest)
    return backfill_s3(settings, location, queue_url)


def write_backfill_manifest(settings: Settings, location: str, out: Path) -> int:
    """Write the S3 Batch Operations manifest of the images without a current sidecar
    (missing or stale, as ``status`` counts them; error sidecars are current, not
    retried) and print the JSON summary; the model is only hashed, never loaded."""
    with wiring.needs_extra("s3:// locations"):
        from dinoembed.handler import collection_s3 as s3
    bucket, _ = s3.parse_s3_uri(location)
    recipe = expected_recipe(settings)
    coverage = assess(wiring.list_location(location, settings), recipe, settings.output_suffix)
    s3.write_manifest(out, bucket, coverage.todo)
    summary = s3.BackfillSummary(location, images=coverage.images, todo=len(coverage.todo))
    summary.current, summary.errors = coverage.current + coverage.newer, coverage.errors
    doc = json.loads(summary.to_json()) | {"manifest": str(out)}
    log.info("backfill %s: %d keys in the manifest %s", location, summary.todo, out)
    output.print_json(doc)
    return 0


def backfill_s3(settings: Settings, location: str, queue_url: str | None) -> int:
    """Print one JSON summary line; 1 when an image failed (error sidecar) or must be
    retried, else 0: the same rule as a folder backfill."""
    with wiring.needs_extra("s3:// locations"):
        from dinoembed.handler import collection_s3 as s3
    bucket, prefix = s3.parse_s3_uri(location)
    client = wiring.s3_client(settings.decode_workers or os.cpu_count() or 1)  # decode fetches
    suffix = settings.output_suffix
    summary = s3.BackfillSummary(location)
    if queue_url:
        refs, coverage = s3.stale_images(client, bucket, prefix, suffix, expected_recipe(settings))
        region = str(client.meta.region_name)
        summary.queued = s3.send_to_queue(s3.make_sqs_client(), queue_url, refs, region)
    else:
        embedder = wiring.pipeline(settings, client)
        refs, coverage = s3.stale_images(client, bucket, prefix, suffix, embedder.recipe)
        with Progress(len(refs)) as progress:
            tally = s3.embed_here(client, refs, embedder, suffix, on_progress=progress.advance)
        summary.embedded, summary.errors = tally.embedded, tally.errors
        summary.skipped, summary.failed = tally.skipped, tally.failed
    # As `status` counts: "current" a current success sidecar (found), "errors" a current
    # error sidecar (found, or written now); newer sidecars count as current.
    summary.images, summary.todo = coverage.images, len(refs)
    summary.current = coverage.current + coverage.newer
    summary.errors += coverage.errors
    log.info("backfill %s: %s", location, summary.to_json())
    output.print_json(asdict(summary))
    return 1 if summary.failed or summary.errors else 0
