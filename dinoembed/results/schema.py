"""The result (sidecar) schema: strict for writers, tolerant for readers.

Writers emit exactly this schema (unknown fields are refused when a result is built
in code). Readers go through :meth:`EmbeddingResult.read_json`, which ignores fields
this version does not know, as a newer version may add some; naming, reading and
judging sidecars is :mod:`dinoembed.results.sidecars`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

SCHEMA_VERSION = 1
_TOLERANT = {"tolerant": True}
_NO_NEIGHBOURS = {"neighbours"}


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _ignore_unknown_fields_when_reading(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and info.context and info.context.get("tolerant"):
            return {k: v for k, v in data.items() if k in cls.model_fields}
        return data


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
    """What is known of the image the result describes; every field is optional."""

    size: int | None = None
    etag: str | None = None
    version_id: str | None = None
    mtime: float | None = None
    sha256: str | None = None  # of the image's bytes
    width: int | None = None  # after EXIF orientation
    height: int | None = None


class Neighbour(_Frozen):
    """An image of the same bucket at or above the duplicate threshold (SPEC section 10)."""

    key: str
    score: float


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EmbeddingResult(_Frozen):
    schema_version: int = Field(default=SCHEMA_VERSION, ge=1)
    file_path: str
    status: Literal["success", "error"]
    embedding: Embedding | None = None
    error: str | None = None
    model: ModelInfo
    source: SourceInfo = Field(default_factory=SourceInfo)
    created_at: str = Field(default_factory=utc_now)
    # Optional (SPEC section 4): a snapshot of the duplicates when this image was embedded,
    # best first; not part of the currency rule, and left out of the JSON when None.
    neighbours: list[Neighbour] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def to_json(self) -> str:
        return self.model_dump_json(exclude=None if self.neighbours is not None else _NO_NEIGHBOURS)

    def to_bytes(self) -> bytes:
        """The sidecar's content: one JSON line."""
        return self.to_json().encode() + b"\n"

    @classmethod
    def read_json(cls, data: bytes | str) -> EmbeddingResult:
        """Parse a result written by this or a newer version (unknown fields ignored)."""
        return cls.model_validate_json(data, context=_TOLERANT)
