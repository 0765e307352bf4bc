"""``dinoembed index sync s3://bucket[/prefix] [--index …] [--neighbours] [--dry-run]``.

Brings the S3 Vectors index in step with the prefix's sidecars (SPEC sections 5 and 10;
the work is :func:`dinoembed.handler.index_sync.sync_index`) and prints one JSON summary
``{"sidecars", "vectors", "put", "deleted", "unchanged", "failed", …}``. Exit status 0
when nothing failed, 1 when anything did, 2 when the command cannot run (no index, an
index of another recipe, a folder instead of an s3:// prefix).
"""

from __future__ import annotations

import argparse
from typing import Any

from dinoembed.cli import output, wiring
from dinoembed.common.progress import Progress
from dinoembed.errors import ConfigError
from dinoembed.settings import Settings

EXIT_OK, EXIT_FAILED = 0, 1


def add_index_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--index",
        dest="vector_index",
        metavar="s3vectors://VBUCKET/INDEX",
        help="the S3 Vectors index (or its ARN); default DINOEMBED_VECTOR_INDEX, else the "
        "index named for the model's recipe in DINOEMBED_VECTOR_BUCKET",
    )


def add_index_command(sub: Any) -> argparse.ArgumentParser:
    index = sub.add_parser(
        "index",
        argument_default=argparse.SUPPRESS,
        help="the S3 Vectors index kept beside a bucket's sidecars",
    )
    index_sub = index.add_subparsers(dest="index_command", required=True)
    sync = index_sub.add_parser(
        "sync",
        argument_default=argparse.SUPPRESS,
        help="put missing or changed vectors, delete those whose image is gone",
        description="Compares the prefix's current success sidecars with the index, puts "
        "what is missing or changed, deletes vectors whose image is gone, and prints one "
        "JSON summary. Exit status 0: nothing failed; 1: something failed; 2: cannot run.",
    )
    sync.add_argument("location", metavar="S3", help="s3://bucket[/prefix]")
    add_index_option(sync)
    sync.add_argument(
        "--neighbours",
        action="store_true",
        help="also recompute every image's recorded duplicates (one query per image)",
    )
    sync.add_argument("--dry-run", action="store_true", help="count, write nothing")
    sync.add_argument(
        "--threshold",
        dest="dupes_threshold",
        type=float,
        help="duplicate cosine for --neighbours (default 0.95)",
    )
    return sync


def run_index(args: argparse.Namespace, settings: Settings) -> int:
    return run_index_sync(
        settings,
        args.location,
        neighbours=getattr(args, "neighbours", False),
        dry_run=getattr(args, "dry_run", False),
    )


def run_index_sync(
    settings: Settings, location: str, *, neighbours: bool = False, dry_run: bool = False
) -> int:
    if not wiring.is_s3(location):
        raise ConfigError(f"{location}: index sync needs an s3://bucket[/prefix]")
    index = wiring.open_s3_index(location, settings)
    if index is None:
        raise ConfigError(
            "no vector index: name one with --index s3vectors://VECTOR_BUCKET/INDEX "
            "(or DINOEMBED_VECTOR_INDEX, or DINOEMBED_VECTOR_BUCKET)"
        )
    with wiring.needs_extra("index sync"):
        from dinoembed.handler.collection_s3 import parse_s3_uri
        from dinoembed.handler.index_sync import sync_index
    bucket, prefix = parse_s3_uri(location)
    with Progress(None, unit="objects and vectors listed") as progress:
        summary = sync_index(
            wiring.s3_client(),
            bucket,
            prefix,
            settings.output_suffix,
            index,
            neighbours=neighbours,
            threshold=settings.dupes_threshold,
            dry_run=dry_run,
            on_progress=progress.advance,
        )
    output.print_json({"location": location, "index": index.name, **summary.to_json()})
    return EXIT_FAILED if summary.failed else EXIT_OK
