"""Lambda Function URL entry point: ``dinoembed.handler.http.lambda_handler``.

The HTTP API of SPEC section 11 (:mod:`dinoembed.web`), the same app ``dinoembed serve``
hosts, behind Mangum (a well-kept ASGI-to-Lambda adapter that reads Function URL events,
base64 bodies included). The Function URL has ``AuthType: AWS_IAM``: only SigV4-signed
requests reach the function, so the app runs without a bearer token.

Module-level lazy state as in :mod:`dinoembed.handler.app`: the settings, the S3 client and
the app are made on the first invocation, the model on the first request that embeds
(``GET /health`` says whether it is loaded), and a failed model load keeps nothing. The
model comes from where the embedding function gets it (bundled, cache, ``ModelUrl``);
``/search`` and ``/duplicates`` ask the bucket's vector index (:func:`index_backend`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from mangum import Mangum

from dinoembed.collections.index import needed_index
from dinoembed.common.logs import capture_library_warnings
from dinoembed.handler.collection_s3 import parse_s3_uri
from dinoembed.handler.model_fetch import fetchers_with_s3
from dinoembed.handler.preload import lambda_settings  # not .app: its import preloads its model
from dinoembed.handler.s3io import S3Objects, make_client
from dinoembed.handler.vectors import S3VectorsIndex, make_vectors_client
from dinoembed.images.decode import DecodeLimits
from dinoembed.model.store import ModelStore
from dinoembed.pipeline import Pipeline, build_pipeline, expected_recipe
from dinoembed.settings import Settings
from dinoembed.web.app import AppOptions, create_app
from dinoembed.web.backends import IndexBackend, SearchBackend
from dinoembed.web.model import ModelHolder

log = logging.getLogger(__name__)

# A Function URL (synchronous invocation) carries at most 6 MB of request payload.
FUNCTION_URL_LIMIT = 6 * 1024 * 1024
TOO_LARGE_HINT = (
    "a Function URL takes at most 6 MB: upload the image to the bucket instead, and once "
    'it is embedded search by its key (POST /search {"key": "<key>"})'
)

BackendOpener = Callable[[Settings, Any], SearchBackend | None]


def index_backend(settings: Settings, client: Any) -> SearchBackend | None:
    """The bucket's vector index (``DINOEMBED_VECTOR_INDEX``), thumbnails read from the
    images bucket (``DINOEMBED_SERVE_LOCATION``). None, so that /search and /duplicates
    answer 503 while the embedding routes work, when either is unset or the index is named
    for another recipe than this function's model (logged in one line)."""
    if settings.vector_index is None or not settings.serve_location:
        log.warning("no vector index or images bucket configured: /search answers 503")
        return None
    index = S3VectorsIndex.from_uri(make_vectors_client(), settings.vector_index)
    needed = needed_index(index.index, expected_recipe(settings))
    if needed is not None:
        log.error(
            "%s holds another recipe's vectors: this function's model needs the index %s; "
            "/search answers 503",
            index.name,
            needed,
        )
        return None
    bucket, _ = parse_s3_uri(settings.serve_location)
    objects = S3Objects(client)

    def read_image(key: str, limit: int) -> bytes:
        return objects.read(bucket, key, etag=None, version_id=None)[: limit + 1]

    return IndexBackend(index, read_image)


def build_handler(
    settings: Settings, client: Any, open_backend: BackendOpener = index_backend
) -> Mangum:
    """The app for this execution environment, wrapped for Lambda."""
    raw = settings.model_copy(update={"normalize": False})  # normalised per request

    def load() -> Pipeline:
        return build_pipeline(raw, store=ModelStore(raw.cache_dir, fetchers_with_s3(client)))

    options = AppOptions(
        max_body_bytes=FUNCTION_URL_LIMIT,
        limits=DecodeLimits(max_pixels=settings.max_pixels, max_bytes=settings.max_bytes),
        too_large_hint=TOO_LARGE_HINT,
        normalize=settings.normalize,
    )
    model = ModelHolder(load, settings.model_sha256)
    app = create_app(model, open_backend(settings, client), options)
    return Mangum(app, lifespan="off")


_handler: Mangum | None = None
_lock = threading.Lock()


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global _handler
    with _lock:
        if _handler is None:
            capture_library_warnings()
            _handler = build_handler(lambda_settings(), make_client())
    answer: dict[str, Any] = _handler(event, context)
    return answer


def reset() -> None:
    """Forget the state (a fresh cold start); for tests."""
    global _handler
    with _lock:
        _handler = None
