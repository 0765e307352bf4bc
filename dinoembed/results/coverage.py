"""Coverage of a folder or an S3 prefix: how much is embedded, stale or failed, and why.

A :class:`Listing` is what a walk found (the folder walk is :func:`list_folder`; the
S3 one lives in the AWS adapter): every image as it is now, every sidecar and what
it says. :func:`assess` sorts each image by :func:`dinoembed.results.sidecars.judge`, the one
currency rule, and counts:

- ``current``: a current success sidecar; ``errors``: a current error sidecar (its
  message counted in ``error_reasons``, see :func:`error_reason`);
- ``missing``: no sidecar, or a file of that name that is not a dinoembed result
  (the rule treats both alike: the next run writes one);
- ``stale``: a sidecar made for another version of the image, another model,
  preprocessing or normalisation (the next run rewrites it);
- ``newer``: written by a newer schema version, which this version neither judges
  nor overwrites;
- ``orphaned``: sidecars whose image is gone. A sidecar of a file that exists but is
  no image (``notes.txt.dinov2.json`` beside ``notes.txt``) is neither.

``images == current + errors + missing + stale + newer`` always holds.
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dinoembed.common.atomic import is_temp_file
from dinoembed.images.files import looks_like_image, walk_files
from dinoembed.images.pathfilter import ALL, PathFilter
from dinoembed.results.schema import EmbeddingResult, SourceInfo
from dinoembed.results.sidecars import (
    Recipe,
    Verdict,
    image_name,
    is_sidecar,
    judge,
    read_sidecar,
    sidecar_name,
)

# A reason is the message's head; a path or URI in it would make every message unique.
_LOCATION = re.compile(r"s3://\S+|(?<!\w)/\S+")
MAX_REASON = 80
UNKNOWN_REASON = "(no message)"


@dataclass(frozen=True)
class Listing:
    """What a walk of ``location`` found. Names are relative paths (folders) or keys (S3).

    ``sidecars`` maps each sidecar's name to its parsed result, None when it could not
    be read or is not a dinoembed result (orphans need not be read at all);
    ``sidecar_mtimes`` (folders only) serve the rule for sidecars of older writers
    that recorded no image mtime; ``others`` are the files that are neither.
    """

    location: str
    images: Mapping[str, SourceInfo]
    sidecars: Mapping[str, EmbeddingResult | None]
    others: frozenset[str] = frozenset()
    sidecar_mtimes: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Coverage:
    location: str
    images: int
    current: int
    errors: int
    missing: int
    stale: int
    newer: int
    orphaned: int
    error_reasons: Mapping[str, int]
    # the images the next backfill would embed (missing or stale), sorted; not in the JSON
    todo: tuple[str, ...] = ()
    # the images of each kind ("missing", "stale", "errors"), sorted, as full paths or
    # s3:// URIs (`status --list KIND`)
    files: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Nothing missing, stale or failed (orphans and newer sidecars aside)."""
        return self.missing == self.stale == self.errors == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "location": self.location,
            "images": self.images,
            "current": self.current,
            "errors": self.errors,
            "missing": self.missing,
            "stale": self.stale,
            "orphaned": self.orphaned,
            "newer": self.newer,
            "error_reasons": dict(self.error_reasons),
        }


def error_reason(message: str | None) -> str:
    """The group an error message counts under: its text before the first ``": "``
    detail, with paths and URIs blanked, e.g. ``"image too large: 30000x30000 exceeds
    89478485 pixels"`` -> ``"image too large"``."""
    if not message or not message.strip():
        return UNKNOWN_REASON
    head = message.strip().splitlines()[0].split(": ", 1)[0]
    head = _LOCATION.sub("…", head).strip()
    return head[:MAX_REASON] or UNKNOWN_REASON


LISTABLE = ("missing", "stale", "errors")


def located(location: str, name: str) -> str:
    """A listing's name as a person uses it: the file's path under the folder, or the
    object's ``s3://bucket/key`` (S3 names are whole keys)."""
    if location.startswith("s3://"):
        bucket = location[len("s3://") :].split("/", 1)[0]
        return f"s3://{bucket}/{name}"
    return str(Path(location) / name)


def assess(listing: Listing, recipe: Recipe, suffix: str) -> Coverage:
    """Count ``listing`` under the currency rule (see the module docstring)."""
    verdicts: Counter[Verdict] = Counter()
    current = 0
    reasons: Counter[str] = Counter()
    todo: list[str] = []
    files: dict[str, list[str]] = {kind: [] for kind in LISTABLE}
    for name, source in listing.images.items():
        sidecar = sidecar_name(name, suffix)
        existing = listing.sidecars.get(sidecar)
        verdict = judge(existing, source, recipe, sidecar_mtime=listing.sidecar_mtimes.get(sidecar))
        verdicts[verdict] += 1
        if verdict is Verdict.CURRENT and existing is not None:
            if existing.ok:
                current += 1
            else:
                reasons[error_reason(existing.error)] += 1
                files["errors"].append(name)
        elif verdict.needs_writing:
            todo.append(name)
            files[verdict.value].append(name)
    orphaned = 0
    for sidecar in listing.sidecars:
        image = image_name(sidecar, suffix)
        if image is not None and image not in listing.images and image not in listing.others:
            orphaned += 1
    return Coverage(
        location=listing.location,
        images=len(listing.images),
        current=current,
        errors=verdicts[Verdict.CURRENT] - current,
        missing=verdicts[Verdict.MISSING],
        stale=verdicts[Verdict.STALE],
        newer=verdicts[Verdict.NEWER],
        orphaned=orphaned,
        error_reasons=dict(reasons.most_common()),
        todo=tuple(sorted(todo)),
        files={
            kind: tuple(located(listing.location, n) for n in sorted(names))
            for kind, names in files.items()
        },
    )


def list_folder(
    root: Path,
    suffix: str,
    *,
    recursive: bool,
    on_listed: Callable[[int], None] = lambda n: None,
    select: PathFilter = ALL,
) -> Listing:
    """Walk ``root`` (not following symlinked folders; temp files ignored) and read the
    sidecars of the images found; images are judged by size and mtime.

    ``on_listed(1)`` after each file (the caller's progress line).
    """
    root = root.absolute()
    images: dict[str, SourceInfo] = {}
    sidecar_paths: dict[str, Path] = {}
    others: set[str] = set()
    for path in walk_files(root, recursive=recursive):
        on_listed(1)
        if is_temp_file(path.name):
            continue
        name = path.relative_to(root).as_posix()
        if select.active and not select.accepts(image_name(name, suffix) or name):
            continue  # an image left out by --include/--exclude, or its sidecar
        if is_sidecar(path.name, suffix):
            sidecar_paths[name] = path
            continue
        try:
            stat = path.stat()
        except OSError:
            continue  # vanished, or a dangling symlink
        if looks_like_image(path, suffix):
            images[name] = SourceInfo(size=stat.st_size, mtime=stat.st_mtime)
        else:
            others.add(name)
    sidecars: dict[str, EmbeddingResult | None] = {}
    mtimes: dict[str, float] = {}
    for name, path in sidecar_paths.items():
        image = image_name(name, suffix)
        if image in images:
            sidecars[name] = read_sidecar(path)
            with contextlib.suppress(OSError):  # vanished since: judged without its mtime
                mtimes[name] = path.stat().st_mtime
        else:
            sidecars[name] = None  # an orphan, or another file's: its content does not matter
    return Listing(str(root), images, sidecars, frozenset(others), mtimes)
