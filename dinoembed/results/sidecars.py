"""Sidecars: their names (both directions), reading them, and the one currency rule.

Every front end and command asks the same questions of a sidecar, and they are
answered here only:

- *what is the sidecar of this image, and the image of this sidecar?*
  (:func:`sidecar_name` / :func:`image_name`, for keys and paths alike);
- *what does this sidecar say?* (:func:`parse_result`: tolerant, fields this
  version does not know are ignored, as a newer version may add some);
- *is it current?* (:func:`judge`, SPEC section 4): it records this image (S3: the
  same version id, else the same ETag; local: the same size and mtime) made by this
  model (sha256), this preprocessing and this normalisation. A current sidecar is
  never rewritten, a stale or missing one is, and one written by a newer schema
  version is never overwritten.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path

from dinoembed.common.atomic import write_atomic
from dinoembed.results.schema import SCHEMA_VERSION, EmbeddingResult, ModelInfo, SourceInfo


def sidecar_name(image: str, suffix: str) -> str:
    """``photos/cat.jpg`` -> ``photos/cat.jpg.dinov2.json`` (works for keys and paths)."""
    return image + suffix


def is_sidecar(name: str, suffix: str) -> bool:
    return name.endswith(suffix) and len(name) > len(suffix)


def image_name(sidecar: str, suffix: str) -> str | None:
    """``photos/cat.jpg.dinov2.json`` -> ``photos/cat.jpg``; None when it is no sidecar name."""
    if not is_sidecar(sidecar, suffix):
        return None
    image = sidecar[: -len(suffix)]
    return None if image.endswith("/") else image


def sidecar_path(image: Path, suffix: str) -> Path:
    return image.with_name(sidecar_name(image.name, suffix))


def image_path(sidecar: Path, suffix: str) -> Path | None:
    name = image_name(sidecar.name, suffix)
    return None if name is None else sidecar.with_name(name)


def parse_result(data: bytes) -> EmbeddingResult | None:
    """The result in a sidecar's bytes, ignoring unknown fields; None when it is not one."""
    try:
        return EmbeddingResult.read_json(data)
    except ValueError:
        return None


def read_sidecar(path: Path) -> EmbeddingResult | None:
    """The sidecar at ``path``, or None when it is missing or not a dinoembed result."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return parse_result(data)


def write_sidecar(result: EmbeddingResult, path: Path) -> None:
    write_atomic(path, result.to_bytes())


@dataclass(frozen=True, slots=True)
class Recipe:
    """What an embedding is made by: the model and preprocessing, and the normalisation."""

    model: ModelInfo
    normalize: bool


def same_space(a: ModelInfo, b: ModelInfo) -> bool:
    """Embeddings of ``a`` and ``b`` can be compared: the same model file and preprocessing."""
    return (a.sha256, a.preprocess) == (b.sha256, b.preprocess)


class Verdict(enum.Enum):
    MISSING = "missing"  # no sidecar (or not one of ours): write it
    CURRENT = "current"  # leave it alone
    STALE = "stale"  # another image, model, preprocessing or normalisation: rewrite it
    NEWER = "newer"  # written by a newer schema version: never overwrite it

    @property
    def needs_writing(self) -> bool:
        return self in (Verdict.MISSING, Verdict.STALE)


def same_image(recorded: SourceInfo, actual: SourceInfo, *, sidecar_mtime: float | None) -> bool:
    """Does the sidecar's ``source`` describe the image as it is now?

    S3: the same version id when both are known, else the same ETag. Local: the same
    size and mtime; a sidecar that records no mtime (an older writer) counts when it is
    at least as new as the image.
    """
    if recorded.version_id and actual.version_id:
        return recorded.version_id == actual.version_id
    if actual.etag is not None:
        return recorded.etag == actual.etag
    if recorded.size is not None and recorded.size != actual.size:
        return False
    if recorded.mtime is not None:
        return recorded.mtime == actual.mtime
    if sidecar_mtime is None or actual.mtime is None:
        return False
    return sidecar_mtime >= actual.mtime


def judge(
    existing: EmbeddingResult | None,
    image: SourceInfo,
    recipe: Recipe,
    *,
    sidecar_mtime: float | None = None,
) -> Verdict:
    """The currency rule: is ``existing`` the sidecar ``recipe`` would write for ``image``?"""
    if existing is None:
        return Verdict.MISSING
    if existing.schema_version > SCHEMA_VERSION:
        return Verdict.NEWER
    if not same_space(existing.model, recipe.model):
        return Verdict.STALE
    if existing.embedding is not None and existing.embedding.normalized != recipe.normalize:
        return Verdict.STALE
    if not same_image(existing.source, image, sidecar_mtime=sidecar_mtime):
        return Verdict.STALE
    return Verdict.CURRENT


def judge_file(
    existing: EmbeddingResult | None, image: os.stat_result, sidecar: Path, recipe: Recipe
) -> Verdict:
    """:func:`judge` for a local image as ``stat`` sees it now (size and mtime); the sidecar
    file's own mtime serves older sidecars that recorded no image mtime."""
    try:
        sidecar_mtime: float | None = sidecar.stat().st_mtime
    except OSError:
        sidecar_mtime = None
    source = SourceInfo(size=image.st_size, mtime=image.st_mtime)
    return judge(existing, source, recipe, sidecar_mtime=sidecar_mtime)
