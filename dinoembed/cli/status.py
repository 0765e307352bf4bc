"""``dinoembed status DIR_OR_S3 [--json]``: how much of a folder or prefix is embedded.

The counting is :func:`dinoembed.results.coverage.assess` (the currency rule of
:mod:`dinoembed.results.sidecars`); the model a sidecar must have been made by comes from the
settings without loading or downloading it (:func:`~dinoembed.pipeline.expected_recipe`).
Exit status: 0 when every image has a current success sidecar, 1 when any is missing,
stale or failed, 2 when the command cannot run (main's handling of DinoEmbedError).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from dinoembed.cli import output, wiring
from dinoembed.pipeline import expected_recipe
from dinoembed.results.coverage import Coverage, assess
from dinoembed.settings import Settings

EXIT_COMPLETE, EXIT_INCOMPLETE = 0, 1
ROWS = ("images", "current", "errors", "missing", "stale", "orphaned", "newer")


def run_status(
    settings: Settings,
    location: str,
    *,
    as_json: bool = False,
    listed: Sequence[str] = (),
    null: bool = False,
) -> int:
    """Print the counts; with ``listed`` kinds (``--list``), only the names of those
    images, one a line (NUL-terminated with ``null``), or beside the counts in the JSON."""
    recipe = expected_recipe(settings)
    coverage = assess(wiring.list_location(location, settings), recipe, settings.output_suffix)
    kinds = list(dict.fromkeys(listed))
    if as_json:
        doc = coverage.to_dict()
        if kinds:
            doc["files"] = {kind: list(coverage.files[kind]) for kind in kinds}
        print(output.to_json(doc))
    elif kinds:
        end = "\0" if null else "\n"
        sys.stdout.write("".join(name + end for kind in kinds for name in coverage.files[kind]))
    else:
        print(render(coverage))
    return EXIT_COMPLETE if coverage.complete else EXIT_INCOMPLETE


def render(coverage: Coverage) -> str:
    """A short table: the counts, then the error reasons, most frequent first."""
    width = max(len(str(coverage.images)), 1)
    lines = [coverage.location]
    lines += [f"  {row:<9} {getattr(coverage, row):>{width}}" for row in ROWS]
    if coverage.error_reasons:
        lines.append("error reasons:")
        lines += [f"  {n:>{width}}  {reason}" for reason, n in coverage.error_reasons.items()]
    return "\n".join(lines)
