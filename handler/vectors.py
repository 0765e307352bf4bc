"""S3 Vectors: dinoembed's client for one index, with the service's limits enforced here.

:class:`S3VectorsIndex` implements :class:`~dinoembed.collections.index.VectorIndex`
(query, a key's vector, its recorded neighbours) and the writes that keep the index in
step with the sidecars (put, delete, list). Before a request leaves:

- at most 500 vectors per PutVectors or keys per DeleteVectors, 100 keys per
  GetVectors, topK 1..100, keys of 1..1,024 bytes, no all-zero or non-finite vector
  (the limits are in :mod:`dinoembed.collections.index`);
- throttling (429 ``TooManyRequestsException``) and 5xx are retried by botocore's
  *adaptive* retry mode, which backs off and also slows the client to the rate the
  service accepts (S3 Vectors limits writes per index); what still fails is a
  :class:`~dinoembed.errors.TransientError` (the caller retries the record);
- DeleteVectors answers 200 for keys that were never there, so a delete is verified by
  reading the keys back; keys still present make it a transient failure.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from dinoembed.collections.index import (
    MAX_DELETE,
    MAX_GET,
    MAX_LIST,
    MAX_PUT,
    Hit,
    Listed,
    VectorIndexError,
    VectorRecord,
    check_key,
    check_top_k,
    check_vector,
    cosine_of,
    prefix_filter,
)
from dinoembed.errors import SourceGoneError, TransientError
from dinoembed.handler.clients import make_aws_client
from dinoembed.handler.s3io import map_error

log = logging.getLogger(__name__)

SCHEME = "s3vectors://"
# Throttling is expected when a backfill writes fast: more attempts than S3's 3.
MAX_ATTEMPTS = 8


class VectorsTransientError(TransientError):
    """S3 Vectors throttled us, failed (5xx), could not be reached, or a delete did not
    take: retry later."""


class IndexNotFoundError(VectorIndexError):
    """The vector bucket or index does not exist (or is not visible to these credentials)."""


def parse_index_uri(uri: str) -> tuple[str, str]:
    """``s3vectors://VECTOR_BUCKET/INDEX``, or the index's ARN
    (``arn:aws:s3vectors:REGION:ACCOUNT:bucket/VECTOR_BUCKET/index/INDEX``, what the
    template passes) -> (vector bucket, index)."""
    if uri.startswith("arn:"):
        parts = uri.split(":", 5)[-1].split("/")
        if len(parts) == 4 and parts[0] == "bucket" and parts[2] == "index" and all(parts):
            return parts[1], parts[3]
        rest = None
    else:
        rest = uri[len(SCHEME) :] if uri.startswith(SCHEME) else None
    bucket, _, index = (rest or "").partition("/")
    if not bucket or not index or "/" in index:
        raise VectorIndexError(
            f"{uri!r}: expected s3vectors://VECTOR_BUCKET/INDEX (or the index's ARN)"
        )
    return bucket, index


def client_config() -> Config:
    return Config(
        retries={"mode": "adaptive", "total_max_attempts": MAX_ATTEMPTS}, connect_timeout=5
    )


def make_vectors_client() -> Any:
    """An ``s3vectors`` client (endpoint from ``AWS_ENDPOINT_URL_S3VECTORS`` /
    ``AWS_ENDPOINT_URL``, region from the standard variables)."""
    return make_aws_client("s3vectors", client_config())


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class S3VectorsIndex:
    """One S3 Vectors index (cosine, float32), on one botocore ``s3vectors`` client."""

    def __init__(self, client: Any, vector_bucket: str, index: str) -> None:
        self.client = client
        self.vector_bucket = vector_bucket
        self.index = index
        self.requests = 0  # calls made (for summaries and benchmarks)

    @classmethod
    def from_uri(cls, client: Any, uri: str) -> S3VectorsIndex:
        return cls(client, *parse_index_uri(uri))

    @property
    def name(self) -> str:
        return f"{SCHEME}{self.vector_bucket}/{self.index}"

    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        self.requests += 1
        try:
            response: dict[str, Any] = getattr(self.client, operation)(
                vectorBucketName=self.vector_bucket, indexName=self.index, **kwargs
            )
        except (ClientError, BotoCoreError, OSError) as err:
            mapped = map_error(err, f"{_title(operation)} {self.name}")
            if isinstance(mapped, SourceGoneError):
                raise IndexNotFoundError(str(mapped)) from err
            if isinstance(mapped, TransientError):
                raise VectorsTransientError(str(mapped)) from err
            raise mapped from err
        return response

    def describe(self) -> dict[str, Any]:
        """The index as the service describes it (dimension, metric, ...)."""
        return dict(self._call("get_index")["index"])

    # --- writes ---------------------------------------------------------------------

    def put(self, records: Sequence[VectorRecord]) -> int:
        """Put (insert or replace) ``records``, at most 500 per request; how many requests."""
        payload = []
        for record in records:
            check_key(record.key)
            vector = check_vector(record.vector, what=record.key)
            payload.append(
                {"key": record.key, "data": {"float32": vector}, "metadata": record.metadata}
            )
        calls = 0
        for chunk in _chunks(payload, MAX_PUT):
            self._call("put_vectors", vectors=list(chunk))
            calls += 1
        return calls

    def delete(self, keys: Sequence[str]) -> None:
        """Delete ``keys`` (at most 500 per request), then read them back: DeleteVectors
        answers 200 even for keys it did not delete, so only an empty read-back counts."""
        keys = list(dict.fromkeys(keys))
        for key in keys:
            check_key(key)
        for chunk in _chunks(keys, MAX_DELETE):
            self._call("delete_vectors", keys=list(chunk))
        left = [listed.key for listed in self.get(keys, data=False, metadata=False)]
        if left:
            raise VectorsTransientError(
                f"DeleteVectors {self.name}: {len(left)} key(s) still indexed after the "
                f"delete (e.g. {left[0]!r}); retry"
            )

    # --- reads ----------------------------------------------------------------------

    def get(self, keys: Sequence[str], *, data: bool = True, metadata: bool = True) -> list[Listed]:
        """The vectors of ``keys`` that are indexed (at most 100 keys per request)."""
        found: list[Listed] = []
        for chunk in _chunks(list(dict.fromkeys(keys)), MAX_GET):
            response = self._call(
                "get_vectors", keys=list(chunk), returnData=data, returnMetadata=metadata
            )
            found.extend(_listed(v) for v in response.get("vectors") or [])
        return found

    def listing(
        self, *, data: bool = False, metadata: bool = True, page_size: int = MAX_LIST
    ) -> Iterator[Listed]:
        """Every vector of the index, a page (up to 1,000) per request."""
        token: str | None = None
        while True:
            args: dict[str, Any] = {
                "maxResults": min(page_size, MAX_LIST),
                "returnData": data,
                "returnMetadata": metadata,
            }
            if token:
                args["nextToken"] = token
            response = self._call("list_vectors", **args)
            yield from (_listed(v) for v in response.get("vectors") or [])
            token = response.get("nextToken")
            if not token:
                return

    def query_raw(
        self, vector: Sequence[float], *, top_k: int, prefix: str = ""
    ) -> list[tuple[Hit, dict[str, Any]]]:
        """Nearest vectors to ``vector`` under ``prefix``, best first, with their metadata."""
        check_top_k(top_k)
        query = check_vector(vector, what="query vector")
        where, recheck = prefix_filter(prefix)
        args: dict[str, Any] = {
            "queryVector": {"float32": query},
            # a prefix that is no recorded folder is matched here, so ask for all we may
            "topK": 100 if recheck else top_k,
            "returnDistance": True,
            "returnMetadata": True,
        }
        if where is not None:
            args["filter"] = where
        response = self._call("query_vectors", **args)
        hits = [
            (Hit(str(v["key"]), cosine_of(v.get("distance", 1.0))), dict(v.get("metadata") or {}))
            for v in response.get("vectors") or []
        ]
        if recheck:
            hits = [h for h in hits if h[0].key.startswith(prefix)]
        return hits[:top_k]

    def query(self, vector: Sequence[float], *, top_k: int, prefix: str = "") -> list[Hit]:
        return [hit for hit, _ in self.query_raw(vector, top_k=top_k, prefix=prefix)]

    def vector_of(self, key: str) -> list[float] | None:
        found = self.get([key], data=True, metadata=False)
        return found[0].vector if found else None

    def neighbours_of(self, key: str) -> list[Hit] | None:
        found = self.get([key], data=False, metadata=True)
        return found[0].neighbours if found else None


def _listed(vector: dict[str, Any]) -> Listed:
    data = (vector.get("data") or {}).get("float32")
    return Listed(
        key=str(vector["key"]),
        metadata=dict(vector.get("metadata") or {}),
        vector=[float(x) for x in data] if data is not None else None,
    )


def _title(operation: str) -> str:
    return "".join(part.title() for part in operation.split("_"))
