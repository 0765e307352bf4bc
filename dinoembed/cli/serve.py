"""``dinoembed serve [DIR_OR_S3]``: the HTTP API (SPEC section 11) on uvicorn.

The composition root of the app for a local host: the model (loaded before the port opens,
so a server that listens can embed), the collection of a folder or an ``s3://`` prefix's
sidecars to search, the token and the limits from the settings. uvicorn stops cleanly on
SIGTERM and SIGINT (it finishes the requests in flight), and the exit status is then 0.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import TYPE_CHECKING

from dinoembed.cli import wiring
from dinoembed.errors import ConfigError
from dinoembed.results.sidecars import Recipe
from dinoembed.settings import Settings

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from dinoembed.collections.collection import Collection
    from dinoembed.collections.index import VectorIndex
    from dinoembed.web.backends import SearchBackend

log = logging.getLogger(__name__)


def run_serve(settings: Settings, location: str | None) -> int:
    with wiring.needs_extra("dinoembed serve"):
        import uvicorn
    app = build_app(settings, location)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # uvicorn's lines go through dinoembed's logging, on stderr
        timeout_graceful_shutdown=30,
    )
    print(f"dinoembed serve: http://{settings.host}:{settings.port}/", file=sys.stderr)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal again for the
    # handler that was there before it: these ones make that a plain exit with status 0.
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.Server(config).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _ignore(signum: int, frame: object) -> None:
    log.debug("signal %d after shutdown: exiting", signum)


def build_app(settings: Settings, location: str | None) -> Starlette:
    """The app over ``location`` (a folder or ``s3://bucket/prefix``, or nothing: then only
    the embedding routes answer), the model loaded now."""
    with wiring.needs_extra("dinoembed serve"):
        from dinoembed.images.decode import DecodeLimits
        from dinoembed.web.app import FORM_OVERHEAD, AppOptions, create_app
        from dinoembed.web.model import ModelHolder
    location = location or settings.serve_location
    index = None if location is None else wiring.open_s3_index(location, settings)
    if location is None:
        backend = None
    elif index is not None:
        backend = index_backend(settings, location, index)
    else:
        backend = collection_backend(settings, location)
    collection_model = backend.model if backend is not None else None
    if collection_model is not None:  # image queries are embedded as the collection was
        settings = settings.or_defaults(preprocess=collection_model.preprocess)
    raw = settings.model_copy(update={"normalize": False})  # the app normalises per request
    model = ModelHolder(lambda: wiring.pipeline(raw), settings.model_sha256)
    loaded = model.get()
    if index is not None:
        _check_recipe(index, Recipe(loaded.model, settings.normalize))
    token = settings.serve_token.get_secret_value() if settings.serve_token else ""
    options = AppOptions(
        max_body_bytes=settings.max_bytes + FORM_OVERHEAD,
        limits=DecodeLimits(max_pixels=settings.max_pixels, max_bytes=settings.max_bytes),
        token=token or None,  # an empty DINOEMBED_SERVE_TOKEN means unset
        normalize=settings.normalize,
        dupes_threshold=settings.dupes_threshold,
    )
    return create_app(model, backend, options)


def _check_recipe(index: VectorIndex, recipe: Recipe) -> None:
    """A query must be embedded as the index's vectors were (SPEC section 10): refuse to
    serve an index named for another recipe, naming the one this model needs."""
    from dinoembed.collections.index import needed_index

    needed = needed_index(index.name, recipe)
    if needed is not None:
        raise ConfigError(
            f"{index.name} holds another recipe's vectors: the model {recipe.model.name} "
            f"(sha256 {recipe.model.sha256[:12]}…, {recipe.model.preprocess}) needs the index "
            f"{needed} (--model, --preprocess, or DINOEMBED_VECTOR_INDEX for that index)"
        )


def index_backend(settings: Settings, location: str, index: VectorIndex) -> SearchBackend:
    """A bucket searched through its vector index; thumbnails read from the bucket."""
    from dinoembed.web.backends import IndexBackend

    source = wiring.open_source(location, settings)

    def read_image(key: str, limit: int) -> bytes:
        with source.open_image(key + settings.output_suffix) as fh:  # the image of that key
            return fh.read(limit + 1)

    log.info("%s: searched through the vector index %s", location, index.name)
    return IndexBackend(index, read_image)


def collection_backend(settings: Settings, location: str) -> SearchBackend:
    """The sidecars of ``location`` as a search backend, read once now (so a missing folder
    or mixed models stop the server before it listens)."""
    from dinoembed.collections.collection import CollectionCache, load_collection
    from dinoembed.web.backends import CollectionBackend

    source = wiring.open_source(location, settings)
    cache = CollectionCache.for_location(
        settings.cache_dir, source.location, settings.output_suffix
    )

    def load() -> Collection:
        return load_collection(source, cache)[0]

    def read_image(sidecar: str, limit: int) -> bytes:
        with source.open_image(sidecar) as fh:  # SourceGoneError when the image is gone
            return fh.read(limit + 1)

    backend = CollectionBackend(source.location, load, settings.output_suffix, read_image)
    collection = load()
    if collection.model is not None and collection.model.name.startswith("standin:"):
        log.warning("%s was embedded by a stand-in model: similarities are meaningless", location)
    log.info("%s: %d embeddings to search", source.location, len(collection))
    return backend
