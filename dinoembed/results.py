"""The result (sidecar) schema, sidecar naming and atomic sidecar writing."""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION: Literal[1] = 1
TEMP_SUFFIX = ".tmp"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class Embedding(_Frozen):
    embedding: list[float]
    embedding_dim: int
    normalized: bool


class ModelInfo(_Frozen):
    """What made an embedding: embeddings with different ModelInfo must not be mixed."""

    name: str
    sha256: str
    preprocess: Literal["center-crop", "squash"]
    input_size: int


class SourceInfo(_Frozen):
    size: int | None = None
    etag: str | None = None
    version_id: str | None = None
    mtime: float | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EmbeddingResult(_Frozen):
    schema_version: Literal[1] = SCHEMA_VERSION
    file_path: str
    status: Literal["success", "error"]
    embedding: Embedding | None = None
    error: str | None = None
    model: ModelInfo
    source: SourceInfo = Field(default_factory=SourceInfo)
    created_at: str = Field(default_factory=utc_now)

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def to_json(self) -> str:
        return self.model_dump_json()


def sidecar_name(image_name: str, suffix: str) -> str:
    """``photos/cat.jpg`` -> ``photos/cat.jpg.dinov2.json`` (works for keys and paths)."""
    return image_name + suffix


def is_sidecar(name: str, suffix: str) -> bool:
    return name.endswith(suffix)


def image_name(sidecar: str, suffix: str) -> str:
    """The inverse of :func:`sidecar_name`: ``photos/cat.jpg.dinov2.json`` -> ``photos/cat.jpg``."""
    if not sidecar.endswith(suffix) or len(sidecar) == len(suffix):
        raise ValueError(f"{sidecar}: not a sidecar name (suffix {suffix})")
    return sidecar[: -len(suffix)]


def is_temp_file(name: str) -> bool:
    """Temp files made by :func:`write_atomic`: hidden and ending in ``.tmp``."""
    base = Path(name).name
    return base.startswith(".") and base.endswith(TEMP_SUFFIX)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` so that a reader sees either the old file or the whole new one.

    The temp file lives in the same folder (so ``os.replace`` is atomic), is
    fsynced before the rename, and is removed if anything fails.
    """
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.chmod(0o644)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_sidecar(result: EmbeddingResult, path: Path) -> None:
    write_atomic(path, result.model_dump_json(indent=None).encode() + b"\n")


def read_sidecar(path: Path) -> EmbeddingResult | None:
    """The sidecar at ``path``, or None when it is missing or unreadable."""
    try:
        return EmbeddingResult.model_validate_json(path.read_bytes())
    except (OSError, ValueError):
        return None
