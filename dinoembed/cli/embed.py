"""``dinoembed embed``: local files in, JSONL out (and sidecars when asked)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from dinoembed.cli import wiring
from dinoembed.errors import ConfigError
from dinoembed.local import expand_paths, local_item
from dinoembed.progress import Progress
from dinoembed.results import EmbeddingResult
from dinoembed.settings import Settings
from dinoembed.sidecars import sidecar_path, write_sidecar

log = logging.getLogger(__name__)


def run_embed(settings: Settings, paths: Sequence[Path]) -> int:
    """Print one JSON result per image, in input order. 0 when all succeeded (and, with
    ``--write-sidecars``, every sidecar was written), else 1: a sidecar that could not be
    written turns that image's line into an error result saying why."""
    missing = [str(p) for p in paths if not p.exists() and not p.is_symlink()]
    if missing:  # an argument error: found before the model is loaded or downloaded
        raise ConfigError(f"no such file or folder: {' '.join(missing)}")
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
                problem = _write(result, Path(outcome.item.file_path), settings.output_suffix)
                if problem is not None:
                    # The requested result (the sidecar) was not produced: the line says so.
                    result = embedder.error_result(outcome.item, problem)
            out.write(result.to_json() + "\n")
            failed += not result.ok
            progress.advance()
    out.flush()
    return 1 if failed else 0


def _write(result: EmbeddingResult, image: Path, suffix: str) -> str | None:
    """Write the sidecar; None when written, else the one-line reason it was not."""
    sidecar = sidecar_path(image, suffix)
    try:
        write_sidecar(result, sidecar)
    except OSError as err:
        problem = f"cannot write sidecar {sidecar}: {err.strerror or err}"
        log.error("%s: %s", image, problem)
        return problem
    return None
