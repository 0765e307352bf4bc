"""The arguments of the commands that use a collection (similar, dupes, cluster, report,
backfill, export): only argparse here, so building the parser, as every command does,
imports none of what those commands run (``dinoembed.cli.use``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dinoembed.collections.clustering import MIN_SIZE

USE_COMMANDS = frozenset({"similar", "dupes", "cluster", "report", "backfill", "export"})
DEFAULT_TOP_K = 10
DEFAULT_THRESHOLD = 0.95

COLLECTION_HELP = "a folder of sidecars or s3://bucket/prefix"

OptionAdder = Callable[[argparse.ArgumentParser], None]


def add_use_commands(sub: Any, embed_options: OptionAdder, query_options: OptionAdder) -> None:
    """Add these subcommands to the CLI's subparsers (``embed_options``: the flags of a
    command that embeds; ``query_options``: those of ``similar``, which embeds one query)."""
    s = argparse.SUPPRESS
    similar = sub.add_parser("similar", argument_default=s, help="most similar images")
    similar.add_argument("query", metavar="QUERY", help="an image or a sidecar (path or s3://)")
    similar.add_argument(
        "--in", dest="collection", required=True, metavar="DIR_OR_S3", help=COLLECTION_HELP
    )
    similar.add_argument("--top-k", type=int, help=f"how many (default {DEFAULT_TOP_K})")
    similar.add_argument("--min-score", type=float, help="leave out results below this cosine")
    similar.add_argument("--json", action="store_true", help="one JSON document")
    add_paths_options(similar, "the paths only, best first, one a line (for xargs)")
    query_options(similar)
    dupes = sub.add_parser("dupes", argument_default=s, help="groups of near-duplicate images")
    dupes.add_argument("collection", metavar="DIR_OR_S3", help=COLLECTION_HELP)
    dupes.add_argument("--threshold", type=float, help=f"cosine (default {DEFAULT_THRESHOLD})")
    dupes.add_argument("--json", action="store_true", help="one JSON document")
    add_paths_options(
        dupes,
        "only the paths of the images that are not their group's suggested keep, one a line "
        "(the redundant copies, for xargs)",
    )
    cluster = sub.add_parser("cluster", argument_default=s, help="group images by content")
    cluster.add_argument("collection", metavar="DIR_OR_S3", help=COLLECTION_HELP)
    cluster.add_argument("--k", type=int, help="exactly K clusters (k-means); default: HDBSCAN")
    cluster.add_argument(
        "--min-size", type=int, help=f"without --k: smallest cluster (default {MIN_SIZE})"
    )
    cluster.add_argument("--json", action="store_true", help="one JSON document")
    report = sub.add_parser(
        "report", argument_default=s, help="an HTML page of the duplicates and clusters"
    )
    report.add_argument("collection", metavar="DIR_OR_S3", help=COLLECTION_HELP)
    report.add_argument(
        "--out", type=Path, required=True, metavar="FILE.html", help="the page to write"
    )
    report.add_argument("--threshold", type=float, help=f"cosine (default {DEFAULT_THRESHOLD})")
    report.add_argument("--k", type=int, help="exactly K clusters (k-means); default: HDBSCAN")
    report.add_argument("--min-size", type=int, help=f"without --k (default {MIN_SIZE})")
    for parser in (dupes, report):
        parser.add_argument(
            "--decisions",
            type=Path,
            metavar="FILE",
            help='JSON {"not_duplicates": [[path, path, ...], ...]}: never grouped together',
        )
    backfill = sub.add_parser(
        "backfill",
        argument_default=s,
        help="embed images that have no up-to-date sidecar",
        description="Embed the images of a folder or s3://bucket/prefix that have no "
        "up-to-date sidecar. A folder is backfilled as `watch --once` does it: it also "
        "removes orphaned sidecars (those whose image is gone). The summary counts "
        "images as `status` does.",
    )
    backfill.add_argument("collection", metavar="DIR_OR_S3", help="a folder or s3://bucket/prefix")
    backfill.add_argument(
        "--queue-url", help="S3 only: send notifications to the function's SQS queue instead"
    )
    backfill.add_argument(
        "--manifest",
        type=Path,
        metavar="OUT.csv",
        help="S3 only: write an S3 Batch Operations CSV manifest of the images without a "
        "current sidecar instead (nothing is embedded or queued)",
    )
    embed_options(backfill)
    exp = sub.add_parser("export", argument_default=s, help="write the vectors for a vector DB")
    exp.add_argument("collection", metavar="DIR_OR_S3", help=COLLECTION_HELP)
    exp.add_argument(
        "--format",
        dest="export_format",
        choices=["npy", "parquet"],
        required=True,
        help="npy (+ a .json index beside it) or parquet (needs dinoembed[export])",
    )
    exp.add_argument("--out", type=Path, required=True, metavar="PATH", help="the file to write")
    exp.add_argument(
        "--force",
        action="store_true",
        help="npy: replace a .json beside --out that an earlier export did not write",
    )
    for parser in (similar, dupes, cluster, report, backfill, exp):
        parser.add_argument(
            "--no-recursive", dest="recursive", action="store_false", help="top folder only"
        )


def add_paths_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--paths", action="store_true", help=f"print {what}")
    parser.add_argument(
        "--null", action="store_true", help="(or -0) as --paths, each path ended by NUL (xargs -0)"
    )
