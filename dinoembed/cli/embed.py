"""``dinoembed embed``: local files in, JSONL out (and sidecars when asked).

Paths come from the command line, from ``--files-from FILE`` (one a line; with
``-0``/``--null`` NUL-separated, as ``find -print0`` writes them) and from standard
input (``-`` as a path, or ``--files-from -``). A NUL byte in a line-separated list
is refused with one line naming ``-0`` (a file name cannot hold one). A path named on the command
line that does not exist is an argument error (exit 2, before any model is loaded); one
read from a list is data: it gets its own error result line ("file not found") and the
rest of the list is embedded. With ``--skip-current`` an image whose sidecar is current
(:func:`dinoembed.results.sidecars.judge`) is not embedded again: its line is the sidecar's
result, so the output keeps one line per input.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from dinoembed.cli import wiring
from dinoembed.common.progress import Progress
from dinoembed.errors import ConfigError
from dinoembed.images.files import expand_paths, subfolders
from dinoembed.images.pathfilter import PathFilter
from dinoembed.results.schema import EmbeddingResult
from dinoembed.results.sidecars import (
    Recipe,
    Verdict,
    judge_file,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from dinoembed.settings import Settings

if TYPE_CHECKING:
    from dinoembed.pipeline import Pipeline

log = logging.getLogger(__name__)

STDIN = "-"


@dataclass(frozen=True, slots=True)
class Inputs:
    """What to embed: paths named as arguments, and paths read from lists."""

    named: tuple[Path, ...]
    listed: tuple[Path, ...]


def gather_inputs(paths: Sequence[Path], files_from: Path | None, *, null: bool = False) -> Inputs:
    """The command line's paths, with ``-`` (and ``--files-from``) replaced by the paths
    they list (NUL-separated with ``null``). Standard input is read at most once."""
    named: list[Path] = []
    listed: list[Path] = []
    read_stdin = files_from is not None and str(files_from) == STDIN
    if files_from is not None and not read_stdin:
        try:
            with files_from.open("rb") as fh:
                listed += _read_list(fh, f"--files-from {files_from}", null=null)
        except OSError as err:
            raise ConfigError(f"--files-from {files_from}: {err.strerror or err}") from err
    for path in paths:
        if str(path) == STDIN:
            read_stdin = True
        else:
            named.append(path)
    if read_stdin:
        listed += _read_list(sys.stdin.buffer, "standard input", null=null)
    elif null and files_from is None:
        raise ConfigError("-0/--null: there is no path list to read ('-' or --files-from)")
    if not named and not listed and not read_stdin and files_from is None:
        raise ConfigError("nothing to embed: name images or folders, or use --files-from")
    return Inputs(tuple(named), tuple(listed))


def _read_list(stream: BinaryIO, what: str, *, null: bool) -> list[Path]:
    """One path a line (with ``null``: NUL-separated, where a name may hold a newline);
    blank entries skipped. Bytes are decoded as the file system does (``os.fsdecode``),
    so any file name survives the round trip through ``find``. A NUL byte in a line
    list is a ConfigError: no file name holds one, it is a ``find -print0`` list."""
    if null:
        entries = stream.read().split(b"\0")
    else:
        entries = []
        for number, raw in enumerate(stream, 1):
            if b"\0" in raw:
                raise ConfigError(
                    f"{what}: line {number} holds a NUL byte; for a NUL-separated list "
                    "(find -print0) add -0"
                )
            entries.append(raw.rstrip(b"\r\n"))
    return [Path(os.fsdecode(entry)) for entry in entries if entry.strip()]


def run_embed(
    settings: Settings,
    paths: Sequence[Path],
    *,
    files_from: Path | None = None,
    null: bool = False,
    skip_current: bool = False,
) -> int:
    """Print one JSON result per image, in input order. 0 when all succeeded (and, with
    ``--write-sidecars``, every sidecar was written), else 1: a sidecar that could not be
    written turns that image's line into an error result saying why."""
    inputs = gather_inputs(paths, files_from, null=null)
    missing = [str(p) for p in inputs.named if not p.exists() and not p.is_symlink()]
    if missing:  # an argument error: found before the model is loaded or downloaded
        raise ConfigError(f"no such file or folder: {' '.join(missing)}")
    recursive = settings.recursive_for("embed")
    select = PathFilter(settings.include, settings.exclude)
    if not recursive:
        _warn_skipped_folders([p for p in inputs.named + inputs.listed if p.is_dir()])
    every = (*inputs.named, *inputs.listed)
    files = list(expand_paths(every, settings.output_suffix, recursive=recursive, select=select))
    if not files:
        log.warning("no images found in %s", " ".join(str(p) for p in every) or "the list")
        return 0
    # The sidecars are judged against the configured model without loading it (its file is
    # only hashed): when every one is current, no model is loaded or downloaded at all.
    current = {}
    if skip_current:
        from dinoembed.pipeline import expected_recipe

        current = _current_results(expected_recipe(settings), files, settings)
    if current:
        log.info(
            "%d of %d images have a current sidecar: not embedded again", len(current), len(files)
        )
    todo = len(files) - len(current)
    if todo == 1:
        settings = settings.or_defaults(streams=1)  # one image: every thread on it
    embedder = wiring.pipeline(settings, background=True) if todo else None
    failed = 0
    out = sys.stdout
    with Progress(len(files)) as progress:
        for result in _results(embedder, files, current, settings):
            out.write(result.to_json() + "\n")
            failed += not result.ok
            progress.advance()
    out.flush()
    return 1 if failed else 0


def _warn_skipped_folders(folders: Sequence[Path]) -> None:
    skipped = sum(subfolders(folder) for folder in folders)
    if skipped:
        log.warning(
            "skipped %d sub-folder%s of %s (use -r to descend)",
            skipped,
            "" if skipped == 1 else "s",
            " ".join(str(f) for f in folders),
        )


def _current_results(
    recipe: Recipe, files: Sequence[Path], settings: Settings
) -> dict[int, EmbeddingResult]:
    """The inputs (by position) whose sidecar is current, with that sidecar's result
    (its ``file_path`` naming the image as it is now: a copied folder's sidecars name the
    original). A sidecar from a newer dinoembed is left alone, as everywhere."""
    found: dict[int, EmbeddingResult] = {}
    for n, path in enumerate(files):
        sidecar = sidecar_path(path, settings.output_suffix)
        existing = read_sidecar(sidecar)
        if existing is None:
            continue
        try:
            image = path.stat()
        except OSError:
            continue
        verdict = judge_file(existing, image, sidecar, recipe)
        if verdict in (Verdict.CURRENT, Verdict.NEWER):
            here = str(path.absolute())
            found[n] = existing.model_copy(update={"file_path": here})
            if (
                settings.write_sidecars
                and verdict is Verdict.CURRENT
                and existing.file_path != here
            ):
                _write(found[n], path, settings.output_suffix)  # point it at the image
    return found


def _results(
    embedder: Pipeline | None,
    files: Sequence[Path],
    current: dict[int, EmbeddingResult],
    settings: Settings,
) -> Iterator[EmbeddingResult]:
    """Every input's result in input order: current sidecars as they are, the rest embedded."""
    # imported here, once the model is loading (dinoembed.cli.wiring.pipeline)
    from dinoembed.pipeline import local_item

    todo = (local_item(p) for n, p in enumerate(files) if n not in current)
    outcomes = embedder.embed(todo) if embedder is not None else iter(())
    for n in range(len(files)):
        if n in current:
            yield current[n]
            continue
        assert embedder is not None  # built whenever an image is not current
        outcome = next(outcomes)
        result = outcome.result
        if settings.write_sidecars and outcome.disposition.writes:
            problem = _write(result, Path(outcome.item.file_path), settings.output_suffix)
            if problem is not None:
                # The requested result (the sidecar) was not produced: the line says so.
                result = embedder.error_result(outcome.item, problem)
        yield result


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
