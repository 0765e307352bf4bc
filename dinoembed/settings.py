"""The one settings object: every option also reads ``DINOEMBED_<NAME>``.

Built once in each entry point (CLI, Lambda handler, watcher) and passed down.
An explicit argument (a CLI flag) beats the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dinoembed.common.defaults import (
    DEFAULT_MODEL_NAME,
    DEFAULT_MODEL_SHA256,
    DEFAULT_MODEL_URL,
    default_cache_dir,
)

DEFAULT_OUTPUT_SUFFIX = ".dinov2.json"
# Pillow's own decompression-bomb threshold (Image.MAX_IMAGE_PIXELS).
DEFAULT_MAX_PIXELS = 89_478_485
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

Preprocess = Literal["center-crop", "squash"]
Walker = Literal["embed", "watch", "collection"]
# Whether each kind of command descends into sub-folders when the user did not say
# (``--recursive`` / ``--no-recursive`` / ``DINOEMBED_RECURSIVE``): the one place it is decided.
RECURSIVE_BY_DEFAULT: dict[Walker, bool] = {"embed": False, "watch": True, "collection": True}


class Settings(BaseSettings):
    """Configuration shared by the CLI, the Lambda handler and the watcher."""

    # env_ignore_empty: an empty DINOEMBED_* variable means unset (SPEC section 7): `sam local`
    # passes "" for the template's AWS::NoValue, and "" is no path, URL or number anyway.
    model_config = SettingsConfigDict(
        env_prefix="DINOEMBED_",
        env_ignore_empty=True,
        frozen=True,
        extra="ignore",
        protected_namespaces=(),
    )

    model_path: Path | None = None
    # A folder that may hold a model bundled at build time (bundle.json + the .onnx file);
    # the Lambda handler points it at its package's model/ folder (SPEC section 2 order).
    bundle_dir: Path | None = None
    model_url: str = DEFAULT_MODEL_URL
    model_sha256: str = DEFAULT_MODEL_SHA256
    cache_dir: Path = Field(default_factory=default_cache_dir)
    normalize: bool = True
    preprocess: Preprocess = "center-crop"
    output_suffix: str = DEFAULT_OUTPUT_SUFFIX
    # 8 measured faster than 16 on 2 cores (ViT-S/14) and peaks ~100 MB lower (docs/performance.md)
    batch_size: int = Field(default=8, ge=1, le=1024)
    threads: int | None = Field(default=None, ge=1)
    # Images in the model at once, each on threads / streams ONNX Runtime threads. None =
    # one per thread (throughput: each core runs whole images, no intra-op synchronisation,
    # decoding fills the gaps); front ends that embed one image at a time (the Lambda, the
    # CLI given one file) set 1, which runs each image on every thread (latency).
    streams: int | None = Field(default=None, ge=1)
    decode_workers: int | None = Field(default=None, ge=1)
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)
    max_bytes: int = Field(default=DEFAULT_MAX_BYTES, ge=1)
    # None = the command's own default (RECURSIVE_BY_DEFAULT); see recursive_for.
    recursive: bool | None = None
    # --include / --exclude globs for folder walks (environment: a JSON list, '["*.jpg"]')
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    write_sidecars: bool = False
    log_format: Literal["text", "json"] = "text"  # json: one JSON object per log line
    # the vector index (SPEC section 10): s3vectors://VECTOR_BUCKET/INDEX or the index's ARN
    # (arn:aws:s3vectors:REGION:ACCOUNT:bucket/VECTOR_BUCKET/index/INDEX); None = none
    vector_index: str | None = None
    # where to look for the index named for the recipe when vector_index is not set
    vector_bucket: str | None = None
    dupes_threshold: float = Field(default=0.95, ge=-1.0, le=1.0)
    # watcher
    polling: bool = False
    settle_seconds: float = Field(default=0.3, ge=0.0)
    rescan_seconds: float = Field(default=300.0, ge=0.0)
    # dinoembed serve (SPEC section 11): what it searches (a folder or s3://bucket/prefix; the
    # Function URL's is the images bucket), loopback unless told otherwise, and the bearer
    # token every route but /health needs when it is set
    serve_location: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    serve_token: SecretStr | None = None

    @field_validator("model_sha256")
    @classmethod
    def _hex_sha256(cls, value: str) -> str:
        value = value.strip().lower()
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise ValueError("must be 64 hexadecimal characters (a sha256 digest)")
        return value

    @field_validator("model_url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(("http://", "https://", "s3://")):
            raise ValueError("must start with http://, https:// or s3://")
        return value

    @field_validator("vector_bucket")
    @classmethod
    def _bucket_or_none(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("vector_index")
    @classmethod
    def _index_uri(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None  # an empty variable (SAM passes "" for AWS::NoValue) means none
        value = value.strip()
        if value.startswith("arn:") and ":s3vectors:" in value and "/index/" in value:
            return value
        bucket, _, index = value.removeprefix("s3vectors://").partition("/")
        if not value.startswith("s3vectors://") or not bucket or not index or "/" in index:
            raise ValueError("must be s3vectors://VECTOR_BUCKET/INDEX or an S3 Vectors index ARN")
        return value

    @field_validator("output_suffix")
    @classmethod
    def _suffix_not_empty(cls, value: str) -> str:
        if not value or "/" in value:
            raise ValueError("must be a non-empty file-name suffix without '/'")
        return value

    def or_defaults(self, **values: Any) -> Settings:
        """These settings with ``values`` for the fields the user did not set (by flag,
        option or ``DINOEMBED_*``): a front end's own defaults."""
        update = {k: v for k, v in values.items() if k not in self.model_fields_set}
        return self.model_copy(update=update) if update else self

    def recursive_for(self, walker: Walker) -> bool:
        """Descend into sub-folders? The user's choice, else the command's default."""
        return RECURSIVE_BY_DEFAULT[walker] if self.recursive is None else self.recursive

    @property
    def sha256_is_explicit(self) -> bool:
        """True when the user named a sha256 (then even a local model path is checked)."""
        return "model_sha256" in self.model_fields_set

    @property
    def model_name(self) -> str:
        if self.model_path is not None:
            return self.model_path.stem
        if self.model_url == DEFAULT_MODEL_URL:
            return DEFAULT_MODEL_NAME
        return Path(self.model_url.rsplit("/", 1)[-1]).stem or DEFAULT_MODEL_NAME
