"""What the command line builds from settings: model store, embedder, S3 clients, sources,
listings.

The S3 pieces come from ``dinoembed.handler`` (boto3) and are imported only when an
``s3://`` location or model URL is named, so a core-only install never needs boto3;
a missing extra is reported by :func:`needs_extra` as a one-line error naming it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dinoembed.cli import early
from dinoembed.common.progress import Progress
from dinoembed.errors import ConfigError
from dinoembed.images.pathfilter import PathFilter  # light: fnmatch only
from dinoembed.settings import Settings

if TYPE_CHECKING:  # imported where used: `dinoembed --help` need not load numpy and Pillow
    from dinoembed.collections.collection import SidecarSource
    from dinoembed.handler.vectors import S3VectorsIndex
    from dinoembed.model.store import ModelStore
    from dinoembed.pipeline import Pipeline
    from dinoembed.results.coverage import Listing

# The third-party packages behind each extra (pyproject.toml [project.optional-dependencies]).
EXTRAS = {"boto3": "lambda", "botocore": "lambda", "aws_lambda_powertools": "lambda"}
EXTRAS |= {"watchdog": "watch", "onnx": "standin", "pyarrow": "export"}
EXTRAS |= {"starlette": "serve", "uvicorn": "serve", "python_multipart": "serve"}


@contextlib.contextmanager
def needs_extra(what: str) -> Iterator[None]:
    """Turn the ImportError of a missing optional dependency into a ConfigError naming it."""
    try:
        yield
    except ModuleNotFoundError as err:
        missing = (err.name or "").split(".")[0]
        if missing not in EXTRAS:
            raise
        raise ConfigError(
            f"{what}: {missing} is not installed: pip install 'dinoembed[{EXTRAS[missing]}]'"
        ) from err


def is_s3(location: str) -> bool:
    return location.startswith("s3://")


def s3_client(threads: int = 1) -> Any:
    """An S3 client (endpoint and region from the standard AWS variables), its
    connection pool large enough for the adapter's readers and ``threads`` more users."""
    with needs_extra("s3:// locations"):
        from dinoembed.handler.s3io import make_client
    return make_client(threads)


def model_store(settings: Settings, client: Any | None = None) -> ModelStore:
    """The model store, with the ``s3://`` fetcher when the model URL needs it."""
    from dinoembed.model.fetchers import default_fetchers
    from dinoembed.model.store import ModelStore

    if not is_s3(settings.model_url):
        return ModelStore(settings.cache_dir, default_fetchers())
    with needs_extra("an s3:// model URL"):
        from dinoembed.handler.model_fetch import fetchers_with_s3

        # The fetcher imports botocore only when it downloads, where a missing module would
        # read as a failed download: ask for it now, so the error names the extra.
        importlib.import_module("botocore.session")
    return ModelStore(settings.cache_dir, fetchers_with_s3(client))


def pipeline(
    settings: Settings, client: Any | None = None, *, background: bool = False
) -> Pipeline:
    """Resolve (download if need be) the model and build the pipeline: once per command,
    in dinoembed's own process, so the C allocator may keep each image's buffers for the
    next (:mod:`dinoembed.common.allocator`). ``background``: return at once, the session
    being created while the first inputs are read and decoded
    (:func:`dinoembed.pipeline.start_pipeline`)."""
    from dinoembed.common.allocator import keep_freed_buffers  # ctypes: not for --help

    # Before the session: creating it frees and reallocates its own large buffers, ~55 ms
    # faster on a ViT-S/14 once glibc keeps them (docs/performance.md).
    keep_freed_buffers()
    store = model_store(settings, client)
    if not background:
        from dinoembed.pipeline import build_pipeline

        return build_pipeline(settings, store)
    from dinoembed.model.loader import start_loading

    # before importing the image and result stages; with the session the console script
    # started for `embed FILE` when it is this model's (dinoembed.cli.early)
    loading = start_loading(settings, store, early=early.take())
    from dinoembed.pipeline import start_pipeline

    return start_pipeline(settings, loading=loading)


def path_filter(settings: Settings, location: str) -> PathFilter:
    """``--include`` / ``--exclude``: for folders only (an S3 listing is not filtered, so
    the flags are refused there rather than silently ignored)."""
    select = PathFilter(settings.include, settings.exclude)
    if select.active and is_s3(location):
        raise ConfigError("--include/--exclude apply to folders, not s3:// locations")
    return select


def open_source(location: str, settings: Settings) -> SidecarSource:
    """The sidecars of a folder or an ``s3://bucket/prefix``."""
    select = path_filter(settings, location)
    if is_s3(location):
        with needs_extra("s3:// locations"):
            from dinoembed.handler.collection_s3 import S3SidecarSource, parse_s3_uri
        bucket, prefix = parse_s3_uri(location)
        return S3SidecarSource(s3_client(), bucket, prefix, settings.output_suffix)
    from dinoembed.collections.collection import FolderSource

    root = Path(location)
    if not root.is_dir():
        raise ConfigError(f"{location}: not a folder or s3://bucket/prefix")
    return FolderSource(
        root,
        settings.output_suffix,
        recursive=settings.recursive_for("collection"),
        select=select,
    )


def list_location(location: str, settings: Settings) -> Listing:
    """Images and sidecars of a folder or an ``s3://bucket/prefix``, with a progress line
    on stderr (a terminal only) while a long listing runs."""
    suffix = settings.output_suffix
    select = path_filter(settings, location)
    if is_s3(location):
        with needs_extra("s3:// locations"):
            from dinoembed.handler.collection_s3 import list_prefix, parse_s3_uri
        bucket, prefix = parse_s3_uri(location)
        client = s3_client()
        with (
            Progress(None, unit="objects listed") as listed,
            Progress(None, unit="sidecars read") as read,
        ):

            def on_read(n: int) -> None:
                listed.close()  # the listing is over: its line ends, the reading one begins
                read.advance(n)

            return list_prefix(
                client, bucket, prefix, suffix, on_listed=listed.advance, on_read=on_read
            )
    from dinoembed.results.coverage import list_folder

    root = Path(location)
    if not root.is_dir():
        raise ConfigError(f"{location}: not a folder or s3://bucket/prefix")
    with Progress(None, unit="files listed") as listed:
        return list_folder(
            root,
            suffix,
            recursive=settings.recursive_for("collection"),
            on_listed=listed.advance,
            select=select,
        )


def read_location(location: str) -> bytes:
    """The bytes of a local file or an ``s3://bucket/key`` object."""
    if is_s3(location):
        with needs_extra("s3:// locations"):
            from dinoembed.handler.collection_s3 import parse_s3_uri
            from dinoembed.handler.s3io import S3Objects
        bucket, key = parse_s3_uri(location)
        return S3Objects(s3_client()).read(bucket, key, etag=None, version_id=None)
    try:
        return Path(location).read_bytes()
    except OSError as err:
        raise ConfigError(f"{location}: cannot read: {err.strerror or err}") from err


def check_output(path: Path, flag: str) -> None:
    """Refuse an output path that cannot be written, before any work is done."""
    shown = f"{flag} {path}" if flag else str(path)
    if path.is_dir():
        raise ConfigError(f"{shown}: is a folder; name the file to write")
    folder = path.parent
    if not folder.is_dir():
        raise ConfigError(f"{shown}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{shown}: the folder {folder} is not writable")


def check_input_file(path: Path, what: str) -> None:
    """Refuse an input file that does not exist, before any work is done."""
    if not path.exists():
        raise ConfigError(f"{what} {path}: does not exist")
    if not path.is_file():
        raise ConfigError(f"{what} {path}: not a file")


def open_s3_index(location: str, settings: Settings) -> S3VectorsIndex | None:
    """The S3 Vectors index of an ``s3://bucket/prefix``: ``--index`` /
    ``DINOEMBED_VECTOR_INDEX`` (``s3vectors://VECTOR_BUCKET/INDEX`` or the index's ARN),
    else, with ``DINOEMBED_VECTOR_BUCKET``, the index named for the configured recipe
    (SPEC section 10); None for a folder or when neither is set."""
    if not is_s3(location):
        return None
    with needs_extra("a vector index"):
        from dinoembed.handler.vectors import S3VectorsIndex, make_vectors_client
    if settings.vector_index is not None:
        return S3VectorsIndex.from_uri(make_vectors_client(), settings.vector_index)
    if settings.vector_bucket is None:
        return None
    from dinoembed.collections.index import index_name
    from dinoembed.pipeline import expected_recipe

    name = index_name(expected_recipe(settings))
    return S3VectorsIndex(make_vectors_client(), settings.vector_bucket, name)
