"""``dinoembed embed``: local files in, JSONL out (and sidecars when asked)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from dinoembed.cli import wiring
from dinoembed.local import expand_paths, local_item
from dinoembed.progress import Progress
from dinoembed.results import EmbeddingResult
from dinoembed.settings import Settings
from dinoembed.sidecars import sidecar_path, write_sidecar

log = logging.getLogger(__name__)


def run_embed(settings: Settings, paths: Sequence[Path]) -> int:
    """Print one JSON result per image, in input order. 0 when all succeeded, else 1."""
    files = list(
        expand_paths(paths, settings.output_suffix, recursive=settings.recursive_for("embed"))
    )
    if not files:
        log.warning("no images found in %s", " ".join(str(p) for p in paths))
        return 0
    embedder = wiring.pipeline(settings)
    failed = 0
    out = sys.stdout
    with Progress(len(files)) as progress:
        for outcome in embedder.embed(local_item(p) for p in files):
            result = outcome.result
            if settings.write_sidecars and outcome.disposition.writes:
                _write(result, Path(outcome.item.file_path), settings.output_suffix)
            out.write(result.to_json() + "\n")
            failed += not result.ok
            progress.advance()
    out.flush()
    return 1 if failed else 0


def _write(result: EmbeddingResult, image: Path, suffix: str) -> None:
    try:
        write_sidecar(result, sidecar_path(image, suffix))
    except OSError as err:
        log.error("cannot write sidecar for %s: %s", image, err.strerror or err)
