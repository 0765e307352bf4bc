"""``dinoembed status DIR_OR_S3 [--json]``: how much of a folder or prefix is embedded.

The counting is :func:`dinoembed.coverage.assess` (the currency rule of
:mod:`dinoembed.sidecars`); the model a sidecar must have been made by comes from the
settings without loading or downloading it (:func:`~dinoembed.cli.backfill.expected_recipe`).
Exit status: 0 when every image has a current success sidecar, 1 when any is missing,
stale or failed, 2 when the command cannot run (main's handling of DinoEmbedError).
"""

from __future__ import annotations

import json
from pathlib import Path

from dinoembed.cli import wiring
from dinoembed.cli.backfill import expected_recipe
from dinoembed.coverage import Coverage, Listing, assess, list_folder
from dinoembed.errors import ConfigError
from dinoembed.progress import Progress
from dinoembed.settings import Settings

EXIT_COMPLETE, EXIT_INCOMPLETE = 0, 1
ROWS = ("images", "current", "errors", "missing", "stale", "orphaned", "newer")


def run_status(settings: Settings, location: str, *, as_json: bool = False) -> int:
    recipe = expected_recipe(settings)
    coverage = assess(list_location(settings, location), recipe, settings.output_suffix)
    print(json.dumps(coverage.to_dict()) if as_json else render(coverage))
    return EXIT_COMPLETE if coverage.complete else EXIT_INCOMPLETE


def list_location(settings: Settings, location: str) -> Listing:
    """Images and sidecars of a folder or an ``s3://bucket/prefix``, with a progress line
    on stderr (a terminal only) while a long listing runs."""
    suffix = settings.output_suffix
    if wiring.is_s3(location):
        with wiring.needs_extra("s3:// locations"):
            from dinoembed.handler.collection_s3 import list_prefix, parse_s3_uri
        bucket, prefix = parse_s3_uri(location)
        client = wiring.s3_client()
        with (
            Progress(None, unit="objects listed") as listed,
            Progress(None, unit="sidecars read") as read,
        ):

            def on_read(n: int) -> None:
                listed.close()  # the listing is over: its line ends, the reading one begins
                read.advance(n)

            return list_prefix(
                client, bucket, prefix, suffix, on_listed=listed.advance, on_read=on_read
            )
    root = Path(location)
    if not root.is_dir():
        raise ConfigError(f"{location}: not a folder or s3://bucket/prefix")
    with Progress(None, unit="files listed") as listed:
        return list_folder(
            root, suffix, recursive=settings.recursive_for("collection"), on_listed=listed.advance
        )


def render(coverage: Coverage) -> str:
    """A short table: the counts, then the error reasons, most frequent first."""
    width = max(len(str(coverage.images)), 1)
    lines = [coverage.location]
    lines += [f"  {row:<9} {getattr(coverage, row):>{width}}" for row in ROWS]
    if coverage.error_reasons:
        lines.append("error reasons:")
        lines += [f"  {n:>{width}}  {reason}" for reason, n in coverage.error_reasons.items()]
    return "\n".join(lines)
