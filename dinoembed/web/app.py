"""The routes of SPEC section 11, as one Starlette app that both hosts wrap.

The hosts (``dinoembed serve`` and the Lambda Function URL entry) build the app with
:func:`create_app` from what they own: a :class:`~dinoembed.web.model.ModelHolder` that
loads the model once, a :class:`~dinoembed.web.backends.SearchBackend` (or None) and
:class:`AppOptions`. Every error is ``{"error": "<one line>"}`` with the fitting status.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from dinoembed import __version__
from dinoembed.errors import ConfigError, DinoEmbedError, ImageError, SourceGoneError
from dinoembed.images.decode import DecodeLimits, DecodeTarget, decode
from dinoembed.results.schema import EmbeddingResult, ModelInfo
from dinoembed.results.sidecars import same_space
from dinoembed.web.backends import DEFAULT_DUPES_THRESHOLD, BadQueryError, SearchBackend
from dinoembed.web.guards import BearerToken, BodyLimit
from dinoembed.web.jobs import JobStore, job_document
from dinoembed.web.model import ModelHolder

log = logging.getLogger(__name__)

STATIC = Path(str(files("dinoembed.web") / "static"))
DEFAULT_TOP_K = 10
THUMB = 192
# Multipart framing around the image: the body limit is the image limit plus this.
FORM_OVERHEAD = 64 * 1024
TRUE, FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


@dataclass(frozen=True, slots=True)
class AppOptions:
    """What a host decides: the token, the body limit and what to say past it, limits."""

    max_body_bytes: int
    limits: DecodeLimits
    token: str | None = None
    too_large_hint: str = ""
    dupes_threshold: float = DEFAULT_DUPES_THRESHOLD
    jobs_kept: int = 1000
    normalize: bool = True  # the default when a request does not say


class ApiError(Exception):
    """A request answered with ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "error"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": _one_line(message)}, status_code=status)


def _flag(value: str | None, name: str, default: bool) -> bool:
    if value is None or value == "":
        return default
    if value.strip().lower() in TRUE:
        return True
    if value.strip().lower() in FALSE:
        return False
    raise ApiError(400, f"{name}: expected true or false, got {value!r}")


def _number(value: str | None, name: str, kind: type[int] | type[float]) -> Any:
    if value is None or value == "":
        return None
    try:
        number = kind(value)
    except ValueError:
        raise ApiError(400, f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ApiError(400, f"{name}: expected a finite number")
    return number


@dataclass(frozen=True, slots=True)
class _Upload:
    data: bytes
    name: str
    fields: dict[str, str]


def _is_image_type(content_type: str) -> bool:
    return content_type.startswith("image/") or content_type == "application/octet-stream"


async def _upload(request: Request) -> _Upload:
    """The image of a request: raw bytes (``Content-Type: image/*``) or multipart ``file``."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        async with request.form(max_files=1, max_fields=16) as form:
            file = form.get("file")
            if not isinstance(file, UploadFile):
                raise ApiError(400, "multipart form without a 'file' part holding the image")
            data = await file.read()
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            name = Path(file.filename or "").name or "<input 0>"
        return _Upload(data, name, fields)
    if _is_image_type(content_type):
        return _Upload(await request.body(), "<input 0>", {})
    shown = content_type or "none"
    raise ApiError(
        400,
        f"Content-Type {shown}: send the image as image/* bytes or as multipart 'file'",
    )


def create_app(model: ModelHolder, backend: SearchBackend | None, options: AppOptions) -> Starlette:
    jobs = JobStore(options.jobs_kept)

    async def embed_upload(upload: _Upload, normalize: bool) -> EmbeddingResult:
        if not upload.data:
            raise ApiError(400, "empty body: no image was sent")
        try:
            return await run_in_threadpool(
                model.embed, upload.data, upload.name, normalize=normalize
            )
        except DinoEmbedError as err:  # the model cannot be had (download, integrity, ...)
            raise ApiError(503, f"model unavailable: {err}") from err

    async def post_embed(request: Request) -> Response:
        upload = await _upload(request)
        said = upload.fields.get("normalize", request.query_params.get("normalize"))
        result = await embed_upload(upload, _flag(said, "normalize", options.normalize))
        status = 200 if result.ok else 422
        return JSONResponse(result.model_dump(mode="json"), status_code=status)

    async def post_job(request: Request) -> Response:
        upload = await _upload(request)
        normalize = _flag(upload.fields.get("normalize"), "normalize", options.normalize)
        priority = _number(upload.fields.get("priority"), "priority", int)
        if priority is not None and not 0 <= priority <= 10:
            raise ApiError(400, f"priority: between 0 and 10, got {priority}")
        result = await embed_upload(upload, normalize)
        job = job_document(result, normalize=normalize)
        jobs.put(job)
        return JSONResponse(job)

    async def get_job(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        job = jobs.get(job_id)
        if job is None:
            raise ApiError(
                404,
                f"job {job_id} is not held here: this server keeps the last "
                f"{options.jobs_kept} jobs in memory, until it stops",
            )
        return JSONResponse(job)

    def need_backend() -> SearchBackend:
        if backend is None:
            raise ApiError(
                503, "no collection to search: start the server on one (dinoembed serve DIR_OR_S3)"
            )
        return backend

    async def query_vector(
        request: Request, searched: SearchBackend
    ) -> tuple[list[float], str | None, ModelInfo | None]:
        """The query's vector, the key to leave out of its own results, the model."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/json":
            try:
                body = await request.json()
            except ValueError as err:
                raise ApiError(400, f"not JSON: {err}") from err
            if isinstance(body, dict) and isinstance(body.get("key"), str):
                key = body["key"]
                vector = await run_in_threadpool(searched.vector_of, key)
                if vector is None:
                    raise ApiError(404, f"key {key!r}: no such image in {searched.location}")
                return vector, key, searched.model
            if isinstance(body, dict) and isinstance(body.get("vector"), list):
                numbers = body["vector"]
                if not numbers or not all(
                    isinstance(x, int | float) and not isinstance(x, bool) for x in numbers
                ):
                    raise ApiError(400, "vector: expected a non-empty list of numbers")
                return [float(x) for x in numbers], None, searched.model
            raise ApiError(400, 'expected JSON {"key": "<image key>"} or {"vector": [...]}')
        upload = await _upload(request)
        result = await embed_upload(upload, True)
        if not result.ok or result.embedding is None:
            raise ApiError(422, result.error or "not an image")
        if searched.model is not None and not same_space(result.model, searched.model):
            raise ApiError(
                503,
                f"the collection was embedded by {_describe(searched.model)} but this server's "
                f"model is {_describe(result.model)}: start it with the collection's model",
            )
        return result.embedding.embedding, None, result.model

    async def post_search(request: Request) -> Response:
        searched = need_backend()
        params = request.query_params
        top_k = _number(params.get("top_k"), "top_k", int)
        top_k = DEFAULT_TOP_K if top_k is None else top_k
        limit = searched.max_top_k
        if top_k < 1:
            raise ApiError(400, f"top_k {top_k}: must be at least 1")
        if limit is not None and top_k > limit:
            raise ApiError(400, f"top_k {top_k}: {searched.location} answers at most {limit}")
        min_score = _number(params.get("min_score"), "min_score", float)
        prefix = params.get("prefix", "")
        vector, exclude, used = await query_vector(request, searched)

        def run() -> list[Any]:
            return searched.search(
                vector, top_k=top_k, min_score=min_score, prefix=prefix, exclude=exclude
            )

        hits = await run_in_threadpool(run)
        results = [_match_json(m) for m in hits]
        doc = {
            "model": used.model_dump() if used else None,
            "collection": searched.location,
            "results": results,
        }
        return JSONResponse(doc)

    async def get_duplicates(request: Request) -> Response:
        searched = need_backend()
        key = request.query_params.get("key")
        if not key:
            raise ApiError(400, "key: name the image, GET /duplicates?key=<image key>")
        threshold = _number(request.query_params.get("threshold"), "threshold", float)
        threshold = options.dupes_threshold if threshold is None else threshold
        found = await run_in_threadpool(searched.neighbours_of, key, threshold)
        if found is None:
            raise ApiError(404, f"key {key!r}: no such image in {searched.location}")
        doc = {"key": key, "threshold": threshold, "neighbours": [_match_json(m) for m in found]}
        return JSONResponse(doc)

    async def get_health(request: Request) -> Response:
        return JSONResponse(
            {
                "version": __version__,
                "model": {"sha256": model.sha256, "loaded": model.loaded, "name": model.name},
                "index": backend.location if backend else None,
                "duplicates_threshold": options.dupes_threshold,
                "auth": options.token is not None,
            }
        )

    async def get_thumb(request: Request) -> Response:
        searched = need_backend()
        key = request.query_params.get("key")
        if not key:
            raise ApiError(400, "key: name the image, GET /thumb?key=<image key>")
        try:
            jpeg = await run_in_threadpool(_thumbnail, searched, key, options.limits)
        except SourceGoneError as err:
            raise ApiError(404, str(err)) from err
        except ImageError as err:
            raise ApiError(422, f"{key}: {err}") from err
        return Response(jpeg, media_type="image/jpeg", headers={"cache-control": "private"})

    async def get_page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    routes = [
        Route("/", get_page, methods=["GET"]),
        Route("/embed", post_embed, methods=["POST"]),
        Route("/jobs/dino_embedding", post_job, methods=["POST"]),
        Route("/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/search", post_search, methods=["POST"]),
        Route("/duplicates", get_duplicates, methods=["GET"]),
        Route("/health", get_health, methods=["GET"]),
        Route("/thumb", get_thumb, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = []
    if options.token:
        middleware.append(Middleware(BearerToken, token=options.token))
    middleware.append(
        Middleware(BodyLimit, limit=options.max_body_bytes, hint=options.too_large_hint)
    )

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error(exc.status, exc.message)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        messages = {404: f"no route {request.url.path}", 405: f"{request.method} not allowed here"}
        message = messages.get(exc.status_code, exc.detail)
        return _error(exc.status_code, message)

    async def bad_query(request: Request, exc: Exception) -> Response:
        return _error(400, str(exc))

    async def config_error(request: Request, exc: Exception) -> Response:
        return _error(503, str(exc))

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, f"internal error: {type(exc).__name__}")

    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            ApiError: api_error,
            HTTPException: http_error,
            BadQueryError: bad_query,
            ConfigError: config_error,
            Exception: internal_error,
        },
    )


def _describe(model: ModelInfo) -> str:
    return f"{model.name} (sha256 {model.sha256[:12]}…, {model.preprocess})"


def _match_json(match: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"key": match.key, "score": match.score}
    if match.path is not None:
        doc["path"] = match.path
    return doc


def _thumbnail(backend: SearchBackend, key: str, limits: DecodeLimits) -> bytes:
    data = backend.image_bytes(key, limits.max_bytes)
    img = decode(data, limits, DecodeTarget("squash", 2 * THUMB))
    img.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()
