"""Resolve, fetch, verify and cache the model file.

Sources, in order: an explicit local path -> a model bundled in the deployment
package (:func:`dinoembed.model.bundle.find_bundled`) -> the cache (verified) -> a download from
``http(s)://`` or ``s3://``. A download streams into a temp file
in the cache folder while hashing, is checked against the expected sha256 and
size, then renamed into place. A file lock makes concurrent loaders (threads or
processes sharing the cache) download once. Nothing unverified is ever left
where a later run would trust it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from dinoembed.common.atomic import TEMP_SUFFIX, atomic_path, temp_prefix, write_atomic
from dinoembed.common.defaults import (
    DEFAULT_MODEL_SHA256,
    DEFAULT_MODEL_SIZE,
    DEFAULT_MODEL_URL,
    cached_model_path,
)
from dinoembed.common.identity import file_identity
from dinoembed.errors import ConfigError, ModelIntegrityError, ModelUnavailableError
from dinoembed.model.bundle import BundledModel, find_bundled
from dinoembed.model.fetchers import Fetcher, default_fetchers, fetcher_for
from dinoembed.settings import Settings

log = logging.getLogger(__name__)

HASH_CHUNK = 1 << 20
LOCK_TIMEOUT = 900.0


class HashingWriter:
    """A file wrapper that hashes what is written; a retry's ``truncate()`` restarts it."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes, /) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.fh.write(data)

    def seek(self, offset: int, whence: int = 0, /) -> int:
        return self.fh.seek(offset, whence)

    def truncate(self, size: int | None = None, /) -> int:
        if (size if size is not None else self.fh.tell()) != 0:
            raise ValueError("HashingWriter can only be truncated to 0")
        self.digest = hashlib.sha256()
        self.size = 0
        return self.fh.truncate(0)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where the model comes from and what it must hash to."""

    url: str
    sha256: str
    name: str
    path: Path | None = None
    verify_path: bool = False
    size: int | None = None
    bundled: BundledModel | None = None

    def __post_init__(self) -> None:
        if not self.url and self.path is None:
            raise ConfigError("a model source needs a URL or a local path")

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelSource:
        known_size = DEFAULT_MODEL_SIZE if settings.model_sha256 == DEFAULT_MODEL_SHA256 else None
        bundled = None
        if settings.model_path is None and settings.bundle_dir is not None:
            bundled = find_bundled(settings.bundle_dir)
        return cls(
            url=settings.model_url,
            sha256=settings.model_sha256,
            name=settings.model_name,
            path=settings.model_path,
            verify_path=settings.sha256_is_explicit,
            size=known_size,
            bundled=bundled,
        )


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    path: Path
    sha256: str
    name: str
    origin: str  # "path", "bundled", "cache" or "download"


@dataclass
class ModelStore:
    cache_dir: Path
    fetchers: dict[str, Fetcher] = field(default_factory=default_fetchers)
    lock_timeout: float = LOCK_TIMEOUT

    def resolve(self, source: ModelSource) -> ResolvedModel:
        if source.path is not None:
            return self._local(source, source.path)
        if source.bundled is not None:
            return self._bundled(source, source.bundled)
        cached = self.cached_path(source)
        if self._cached_ok(cached, source):
            return ResolvedModel(cached, source.sha256, source.name, "cache")
        return self._download(source)

    def cached_path(self, source: ModelSource) -> Path:
        return cached_model_path(self.cache_dir, source.sha256)

    def _local(self, source: ModelSource, path: Path) -> ResolvedModel:
        if not path.is_file():
            raise ConfigError(f"model file not found: {path} (check DINOEMBED_MODEL_PATH)")
        digest = self._digest(path)
        if source.verify_path and digest != source.sha256:
            raise ModelIntegrityError(
                f"model file {path} has sha256 {digest}, expected {source.sha256}"
            )
        return ResolvedModel(path, digest, source.name, "path")

    @staticmethod
    def _bundled(source: ModelSource, bundled: BundledModel) -> ResolvedModel:
        """The package's own model; a sha256 the user asked for explicitly must match it."""
        if source.verify_path and bundled.sha256 != source.sha256:
            raise ModelIntegrityError(
                f"the bundled model {bundled.path.name} has sha256 {bundled.sha256}, but "
                f"DINOEMBED_MODEL_SHA256 asks for {source.sha256}: rebuild with that model "
                "or set DINOEMBED_MODEL_SHA256 (the template's ModelSha256) to match"
            )
        return ResolvedModel(bundled.path, bundled.sha256, bundled.path.stem, "bundled")

    def _digest(self, path: Path) -> str:
        """sha256 of a model file, remembered in ``<cache>/hashes`` by file identity, so a
        process start (a Lambda cold start, a warm cache) need not rehash 87 MB; a file
        whose size, mtime, ctime or inode changed is hashed again."""
        stat = path.stat()  # before hashing: a file changed meanwhile is not remembered
        with contextlib.suppress(OSError, ValueError):
            digest, identity = self._memo(path).read_text().split(" ", 1)
            if identity == _identity(stat):
                return digest
        digest = sha256_file(path)
        self._remember(path, digest, stat)
        return digest

    def _remember(self, path: Path, digest: str, stat: os.stat_result) -> None:
        memo = self._memo(path)
        with contextlib.suppress(OSError):  # a read-only cache only costs a rehash next time
            memo.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(memo, f"{digest} {_identity(stat)}".encode())

    def _memo(self, path: Path) -> Path:
        return self.cache_dir / "hashes" / hashlib.sha256(str(path.resolve()).encode()).hexdigest()

    def _cached_ok(self, path: Path, source: ModelSource) -> bool:
        """True when ``path`` is the verified model (size, then sha256); never trusts a mismatch."""
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return False
        if source.size is not None and size != source.size:
            log.warning("cached model %s has the wrong size; fetching it again", path.name)
            return False
        if self._digest(path) != source.sha256:
            log.warning("cached model %s fails its sha256 check; fetching it again", path.name)
            return False
        return True

    def _download(self, source: ModelSource) -> ResolvedModel:
        final = self.cached_path(source)
        final.parent.mkdir(parents=True, exist_ok=True)
        from filelock import FileLock, Timeout  # only a download locks (~10 ms to import)

        try:
            with FileLock(str(final) + ".lock", timeout=self.lock_timeout):
                # Another process may have finished the download while we waited.
                if self._cached_ok(final, source):
                    return ResolvedModel(final, source.sha256, source.name, "cache")
                self._remove_stale(final, source)
                self._fetch_verified(source, final)
        except Timeout as err:
            raise ModelUnavailableError(
                f"timed out waiting for another process to download the model into {final.parent}"
            ) from err
        return ResolvedModel(final, source.sha256, source.name, "download")

    def _remove_stale(self, final: Path, source: ModelSource) -> None:
        """Under the lock, any partial file for this model is a leftover of a killed process
        (``.<sha256>.*.part`` is how dinoembed 0.1 named them)."""
        leftovers = [
            *final.parent.glob(f"{temp_prefix(final)}*{TEMP_SUFFIX}"),
            *final.parent.glob(f".{source.sha256}.*.part"),
        ]
        for leftover in leftovers:
            log.info("removing stale partial download %s", leftover.name)
            leftover.unlink(missing_ok=True)
        final.unlink(missing_ok=True)

    def _fetch_verified(self, source: ModelSource, final: Path) -> None:
        """Stream into a temp file beside ``final``, hashing; rename only once verified."""
        fetcher = fetcher_for(source.url, self.fetchers)
        log.info("downloading model %s from %s", source.name, source.url)
        with atomic_path(final) as tmp:
            with tmp.open("w+b") as out:
                writer = HashingWriter(out)
                try:
                    fetcher.fetch(source.url, writer)
                    out.flush()
                except OSError as err:
                    raise ModelUnavailableError(
                        f"cannot write the model into {final.parent}: {err.strerror or err}"
                    ) from err
            self._verify(writer, source)  # raising here removes the temp file
        self._remember(final, source.sha256, final.stat())  # hashed while streaming

    @staticmethod
    def _verify(writer: HashingWriter, source: ModelSource) -> None:
        if source.size is not None and writer.size != source.size:
            raise ModelIntegrityError(
                f"downloaded model from {source.url} has {writer.size} bytes, "
                f"expected {source.size} bytes"
            )
        digest = writer.digest.hexdigest()
        if digest != source.sha256:
            raise ModelIntegrityError(
                f"downloaded model from {source.url} has sha256 {digest}, expected {source.sha256}"
            )


def _identity(stat: os.stat_result) -> str:
    """The file's identity (:func:`~dinoembed.common.identity.file_identity`) as the memo
    file records it."""
    return " ".join(str(part) for part in file_identity(stat))


def is_default(source: ModelSource) -> bool:
    return source.url == DEFAULT_MODEL_URL and source.sha256 == DEFAULT_MODEL_SHA256
