"""S3 reads and writes for the handler, with botocore errors mapped onto dinoembed's.

- missing object or bucket -> :class:`~dinoembed.errors.SourceGoneError`;
- throttling, 5xx, timeouts, dropped connections -> :class:`S3TransientError`
  (a :class:`~dinoembed.errors.TransientError`: the record is retried);
- anything else (access denied, an archived object, ...) -> :class:`S3PermanentError`.

A conditional write that finds its precondition false (``412 PreconditionFailed``)
is not an error: another invocation got there first, :meth:`S3Objects.put_sidecar`
returns False.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from dinoembed.errors import DinoEmbedError, PermanentError, SourceGoneError, TransientError
from dinoembed.handler.clients import make_aws_client
from dinoembed.results.schema import EmbeddingResult
from dinoembed.results.sidecars import is_sidecar

log = logging.getLogger(__name__)

TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequests",
        "TooManyRequestsException",
        "RequestTimeout",
        "RequestTimeoutException",
        "ServiceUnavailable",
        "InternalError",
        "ConditionalRequestConflict",  # S3: a concurrent conditional write is in flight
        "OperationAborted",
    }
)
GONE_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchVersion", "404", "NotFound"})
PRECONDITION_CODES = frozenset({"PreconditionFailed", "412"})
SIDECAR_CONTENT_TYPE = "application/json"
CONNECTION_ERRORS = (
    EndpointConnectionError,
    ConnectTimeoutError,
    ReadTimeoutError,
    ConnectionClosedError,
    IncompleteReadError,  # the body was cut short (fewer bytes than Content-Length)
    ResponseStreamingError,  # the connection failed while the body was streaming
)


# Threads that may share one S3 client: the sidecar readers of collection_s3, and the
# pipeline's decode workers when they fetch objects. botocore's pool holds 10 connections;
# with more threads urllib3 logs "Connection pool is full, discarding connection" and
# reconnects, so each client's pool is sized to the threads it serves.
S3_CONCURRENCY = 16


def client_config(concurrency: int = S3_CONCURRENCY) -> Config:
    """Standard retry mode (3 attempts; AWS_MAX_ATTEMPTS overrides) backs off on throttling
    itself before the handler gives the record back for a later retry.

    A new Config per client: botocore writes the attempts it resolved (from
    AWS_MAX_ATTEMPTS) into the ``retries`` dict it is given, so a shared Config
    would pin every later client to the first one's value.
    """
    return Config(retries={"mode": "standard"}, connect_timeout=5, max_pool_connections=concurrency)


class S3TransientError(TransientError):
    """S3 throttled us, failed (5xx) or could not be reached: retry later."""


class S3PermanentError(PermanentError):
    """S3 refused the request in a way a retry will not change (e.g. AccessDenied)."""


def error_code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _status(err: ClientError) -> int:
    return int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def map_error(err: Exception, what: str) -> DinoEmbedError:
    """A botocore failure of ``what`` (e.g. "GetObject s3://b/k") as a dinoembed error."""
    if isinstance(err, ClientError):
        code, status = error_code(err), _status(err)
        detail = err.response.get("Error", {}).get("Message", "")
        message = f"{what} failed: {code or status} {detail}".strip()
        if code in GONE_CODES or status == 404:
            return SourceGoneError(message)
        if code in TRANSIENT_CODES or status == 429 or status >= 500:
            return S3TransientError(message)
        return S3PermanentError(message)
    if isinstance(err, (*CONNECTION_ERRORS, OSError)):
        return S3TransientError(f"{what} failed: {err}")
    return S3PermanentError(f"{what} failed: {err}")


def is_precondition_failed(err: ClientError) -> bool:
    return error_code(err) in PRECONDITION_CODES or _status(err) == 412


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    size: int
    etag: str
    version_id: str | None


@dataclass(frozen=True, slots=True)
class Sidecar:
    """An existing sidecar: its parsed content (None when unreadable) and its own ETag."""

    result: EmbeddingResult | None
    etag: str


class S3Objects:
    """The few S3 calls the handler makes, on one botocore S3 client."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def head(self, bucket: str, key: str) -> ObjectMeta:
        try:
            resp = self.client.head_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError, OSError) as err:
            raise map_error(err, f"HeadObject s3://{bucket}/{key}") from err
        return ObjectMeta(int(resp["ContentLength"]), resp["ETag"], resp.get("VersionId"))

    def read(self, bucket: str, key: str, *, etag: str | None, version_id: str | None) -> bytes:
        """The object's bytes: exactly the version announced (by version id, else by ETag).

        If the object was overwritten since, S3 answers 412 and a later event announces
        the new one: that is reported as :class:`SourceGoneError` (superseded).
        """
        args: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id:
            args["VersionId"] = version_id
        elif etag:
            args["IfMatch"] = etag
        try:
            return bytes(self.client.get_object(**args)["Body"].read())
        except ClientError as err:
            if is_precondition_failed(err):
                raise SourceGoneError(f"s3://{bucket}/{key} was overwritten since") from err
            raise map_error(err, f"GetObject s3://{bucket}/{key}") from err
        except (BotoCoreError, OSError) as err:
            raise map_error(err, f"GetObject s3://{bucket}/{key}") from err

    def read_sidecar(self, bucket: str, key: str) -> Sidecar | None:
        """The sidecar at ``key``, or None when there is none."""
        try:
            resp = self.client.get_object(Bucket=bucket, Key=key)
            body = resp["Body"].read()
        except (ClientError, BotoCoreError, OSError) as err:
            mapped = map_error(err, f"GetObject s3://{bucket}/{key}")
            if isinstance(mapped, SourceGoneError):
                return None
            raise mapped from err
        try:
            result: EmbeddingResult | None = EmbeddingResult.read_json(body)
        except ValueError:
            log.warning("existing sidecar s3://%s/%s is unreadable; replacing it", bucket, key)
            result = None
        return Sidecar(result, resp["ETag"])

    def put_sidecar(
        self, bucket: str, key: str, result: EmbeddingResult, *, replaces: str | None
    ) -> bool:
        """Write ``result`` at ``key`` only if the sidecar is still what we saw.

        ``replaces`` is the ETag of the sidecar we read (``IfMatch``), or None when
        there was none (``IfNoneMatch: *``). False when another writer got there first.
        """
        args: dict[str, Any] = {
            "Bucket": bucket,
            "Key": key,
            "Body": result.to_json().encode() + b"\n",
            "ContentType": SIDECAR_CONTENT_TYPE,
        }
        if replaces is None:
            args["IfNoneMatch"] = "*"
        else:
            args["IfMatch"] = replaces
        try:
            self.client.put_object(**args)
        except ClientError as err:
            if is_precondition_failed(err):
                return False
            mapped = map_error(err, f"PutObject s3://{bucket}/{key}")
            if isinstance(mapped, SourceGoneError):  # the sidecar we read was deleted since
                raise S3TransientError(str(mapped)) from err
            raise mapped from err
        except (BotoCoreError, OSError) as err:
            raise map_error(err, f"PutObject s3://{bucket}/{key}") from err
        return True

    def delete_sidecar(self, bucket: str, key: str, *, suffix: str, etag: str) -> bool:
        """Delete the sidecar at ``key`` only if it is still the one we read (``IfMatch``).

        Refuses any key that does not end in ``suffix``: this is the only delete the
        handler makes, and it must never remove an image. False when the sidecar
        changed (412: rewritten meanwhile, e.g. for a re-uploaded image) or is gone.
        """
        if not is_sidecar(key, suffix):
            raise ValueError(f"refusing to delete s3://{bucket}/{key}: not a {suffix} sidecar")
        try:
            self.client.delete_object(Bucket=bucket, Key=key, IfMatch=etag)
        except ClientError as err:
            if is_precondition_failed(err):
                return False
            mapped = map_error(err, f"DeleteObject s3://{bucket}/{key}")
            if isinstance(mapped, SourceGoneError):
                return False
            raise mapped from err
        except (BotoCoreError, OSError) as err:
            raise map_error(err, f"DeleteObject s3://{bucket}/{key}") from err
        return True


def make_client(concurrency: int = S3_CONCURRENCY) -> Any:
    """An S3 client (endpoint and region from the standard AWS variables) whose
    connection pool serves ``concurrency`` threads."""
    return make_aws_client("s3", client_config(max(concurrency, S3_CONCURRENCY)))
