"""S3 Vectors for tests: a moto server on 127.0.0.1, with what moto 5.2 lacks added here.

moto 5.2 implements vector buckets, indexes and Put/Get/List/DeleteVectors, but not
QueryVectors, and ListVectors ignores ``maxResults``. Before the server starts this
module adds to moto's S3 Vectors service:

- **QueryVectors**, by brute force over the index's vectors, with the documented
  semantics: cosine distance = 1 - cosine (euclidean: the L2 distance), ranked by
  distance, ``topK`` 1..100, and the metadata filters dinoembed sends (``$eq`` on a
  string, matching a list-valued field when any element is equal; ``$and``; a bare value
  meaning ``$eq``). :func:`reference_query` is checked against numpy in
  tests/test_index_client.py;
- ``maxResults`` / ``nextToken`` on ListVectors, so dinoembed's paging is exercised;
- fault injection (:func:`inject`): the next N calls of an operation answer 429
  ``TooManyRequestsException`` (throttling), as S3 Vectors does past its write rate;
- a request counter per operation (:data:`CALLS`).

The server is :class:`moto.server.ThreadedMotoServer`; the ``vectors`` fixture points
``AWS_ENDPOINT_URL_S3VECTORS`` at it, so every ``boto3.client("s3vectors")`` the code
under test makes reaches it (S3 itself stays on whichever backend the test uses).
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.core.exceptions import JsonRESTError
from moto.core.responses import ActionResult
from moto.s3vectors import urls as s3vectors_urls
from moto.s3vectors.models import s3vectors_backends
from moto.s3vectors.responses import S3VectorsResponse
from moto.server import ThreadedMotoServer

from tests.s3_backends import free_ports

REGION = "us-east-1"
VECTOR_BUCKET = "dinoembed-example-vectors"
DIM = 8  # the tiny stand-in model's dimension (tests/conftest.py tiny_model)

CALLS: Counter[str] = Counter()
_FAULTS: Counter[str] = Counter()


class ThrottledError(JsonRESTError):
    code = 429

    def __init__(self) -> None:
        super().__init__("TooManyRequestsException", "Rate exceeded (injected by the test)")


def inject(operation: str, times: int = 1) -> None:
    """The next ``times`` calls of ``operation`` (e.g. "PutVectors") are throttled."""
    _FAULTS[operation] += times


def _maybe_fail(operation: str) -> None:
    CALLS[operation] += 1
    if _FAULTS[operation] > 0:
        _FAULTS[operation] -= 1
        raise ThrottledError


def _matches(metadata: dict[str, Any], where: dict[str, Any] | None) -> bool:
    if not where:
        return True
    for field, cond in where.items():
        if field == "$and":
            if not all(_matches(metadata, sub) for sub in cond):
                return False
            continue
        if field == "$or":
            if not any(_matches(metadata, sub) for sub in cond):
                return False
            continue
        wanted = cond.get("$eq") if isinstance(cond, dict) else cond
        if isinstance(cond, dict) and set(cond) - {"$eq"}:
            raise JsonRESTError("ValidationException", f"filter operator not modelled: {cond}")
        value = metadata.get(field)
        if isinstance(value, list):
            if wanted not in value:
                return False
        elif value != wanted:
            return False
    return True


def _distance(a: list[float], b: list[float], metric: str) -> float:
    if metric == "euclidean":
        return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return 1.0 - dot / (na * nb)


@dataclass(frozen=True)
class RefHit:
    key: str
    distance: float
    metadata: dict[str, Any]


def reference_query(
    vectors: dict[str, tuple[list[float], dict[str, Any]]],
    query: list[float],
    top_k: int,
    metric: str = "cosine",
    where: dict[str, Any] | None = None,
) -> list[RefHit]:
    """QueryVectors by brute force: every vector that passes ``where``, nearest first."""
    if not 1 <= top_k <= 100:
        raise JsonRESTError(
            "ValidationException", "Value at 'topK' failed to satisfy constraint: 1..100"
        )
    hits = [
        RefHit(key, _distance(data, query, metric), metadata)
        for key, (data, metadata) in vectors.items()
        if _matches(metadata or {}, where)
    ]
    hits.sort(key=lambda h: (h.distance, h.key))
    return hits[:top_k]


def _query_vectors(self: S3VectorsResponse) -> ActionResult:
    _maybe_fail("QueryVectors")
    index = self.s3vectors_backend.get_index(
        self._get_param("vectorBucketName"),
        index_name=self._get_param("indexName"),
        index_arn=self._get_param("indexArn"),
    )
    query = self._get_param("queryVector")["float32"]
    if len(query) != index.dimension:
        raise JsonRESTError("ValidationException", "query vector has the wrong dimension")
    stored = {k: (v.data["float32"], v.metadata or {}) for k, v in index.vectors.items()}
    hits = reference_query(
        stored,
        query,
        int(self._get_param("topK")),
        index.distance_metric,
        self._get_param("filter"),
    )
    with_distance = self._get_bool_param("returnDistance", False)
    with_metadata = self._get_bool_param("returnMetadata", False)
    out = []
    for hit in hits:
        item: dict[str, Any] = {"key": hit.key}
        if with_distance:
            item["distance"] = hit.distance
        if with_metadata:
            item["metadata"] = hit.metadata
        out.append(item)
    return ActionResult({"vectors": out, "distanceMetric": index.distance_metric})


def _wrap(name: str, operation: str) -> None:
    original = getattr(S3VectorsResponse, name)

    def wrapped(self: S3VectorsResponse) -> Any:
        _maybe_fail(operation)
        return original(self)

    setattr(S3VectorsResponse, name, wrapped)


def _list_vectors(self: S3VectorsResponse) -> ActionResult:
    _maybe_fail("ListVectors")
    index = self.s3vectors_backend.get_index(
        self._get_param("vectorBucketName"),
        index_name=self._get_param("indexName"),
        index_arn=self._get_param("indexArn"),
    )
    size = int(self._get_param("maxResults") or 500)
    if not 1 <= size <= 1000:
        raise JsonRESTError("ValidationException", "maxResults must be 1..1000")
    start = int(self._get_param("nextToken") or 0)
    keys = list(index.vectors)[start : start + size]
    data = self._get_bool_param("returnData", False)
    metadata = self._get_bool_param("returnMetadata", False)
    result: dict[str, Any] = {
        "vectors": [
            {
                "key": k,
                "data": index.vectors[k].data if data else None,
                "metadata": index.vectors[k].metadata if metadata else None,
            }
            for k in keys
        ]
    }
    if start + size < len(index.vectors):
        result["nextToken"] = str(start + size)
    return ActionResult(result)


_PATCHED = False


def patch_moto() -> None:
    """Add QueryVectors, ListVectors paging and fault injection to moto (once)."""
    global _PATCHED
    if _PATCHED:
        return
    s3vectors_urls.url_paths["{0}/QueryVectors$"] = S3VectorsResponse.dispatch
    S3VectorsResponse.query_vectors = _query_vectors  # type: ignore[attr-defined]
    S3VectorsResponse.list_vectors = _list_vectors  # type: ignore[method-assign]
    for name, operation in (
        ("put_vectors", "PutVectors"),
        ("get_vectors", "GetVectors"),
        ("delete_vectors", "DeleteVectors"),
    ):
        _wrap(name, operation)
    _PATCHED = True


@dataclass
class VectorsServer:
    url: str


@pytest.fixture(scope="session")
def vectors_server() -> Iterator[VectorsServer]:
    patch_moto()
    port = free_ports(1)[0]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield VectorsServer(f"http://127.0.0.1:{port}")
    finally:
        server.stop()


@dataclass
class Vectors:
    """An empty vector bucket with one cosine index, reached through ``client``."""

    client: Any
    bucket: str
    index: str
    url: str

    @property
    def uri(self) -> str:
        return f"s3vectors://{self.bucket}/{self.index}"

    def stored(self) -> dict[str, Any]:
        """The index's vectors as the server holds them: key -> (data, metadata)."""
        backend = s3vectors_backends["123456789012"]["aws"]
        index = backend.get_index(self.bucket, self.index, "")
        return {k: (v.data["float32"], v.metadata or {}) for k, v in index.vectors.items()}

    def create_index(self, name: str, dim: int = DIM) -> None:
        self.client.create_index(
            vectorBucketName=self.bucket,
            indexName=name,
            dataType="float32",
            dimension=dim,
            distanceMetric="cosine",
        )


def open_vectors(
    server: VectorsServer, monkeypatch: pytest.MonkeyPatch, index: str, dim: int = DIM
) -> Iterator[Vectors]:
    """A fresh vector bucket + index on the server; the AWS variables point at it."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3VECTORS", server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    CALLS.clear()
    _FAULTS.clear()
    client = boto3.client("s3vectors", endpoint_url=server.url, region_name=REGION)
    client.create_vector_bucket(vectorBucketName=VECTOR_BUCKET)
    vectors = Vectors(client, VECTOR_BUCKET, index, server.url)
    vectors.create_index(index, dim)
    try:
        yield vectors
    finally:
        _FAULTS.clear()
        # (moto's in-process mock, when a test also uses it, resets every backend on exit)
        with contextlib.suppress(ClientError):
            for item in client.list_indexes(vectorBucketName=VECTOR_BUCKET).get("indexes", []):
                client.delete_index(vectorBucketName=VECTOR_BUCKET, indexName=item["indexName"])
            client.delete_vector_bucket(vectorBucketName=VECTOR_BUCKET)


def serve(port: int) -> None:
    """``python -m tests.vectors_server [PORT]``: the patched moto server on 127.0.0.1 (S3,
    S3 Vectors with QueryVectors, ...) until interrupted; for trying the index commands."""
    import signal
    import threading

    patch_moto()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    print(f"moto server with QueryVectors on http://127.0.0.1:{port} (Ctrl-C stops it)")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    import sys

    serve(int(sys.argv[1]) if len(sys.argv) > 1 else 5055)
