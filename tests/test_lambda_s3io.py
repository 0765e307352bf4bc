"""S3 I/O: botocore errors become dinoembed's, conditional sidecar writes, exact-version reads."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    ParamValidationError,
    ReadTimeoutError,
)

from dinoembed.errors import PermanentError, SourceGoneError, TransientError
from dinoembed.handler.s3io import S3Objects, S3PermanentError, S3TransientError, map_error
from dinoembed.results.schema import EmbeddingResult, ModelInfo
from tests.s3_backends import S3Endpoint
from tests.test_lambda_support import BUCKET, REGION, aws_test_env

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@pytest.fixture
def s3(s3_endpoint: S3Endpoint) -> S3Client:
    """The example bucket on moto, then on SeaweedFS (tests/s3_backends.py)."""
    return s3_endpoint.client


def client_error(code: str, status: int) -> ClientError:
    response = {
        "Error": {"Code": code, "Message": f"{code} happened"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "GetObject")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (client_error("SlowDown", 503), S3TransientError),
        (client_error("ServiceUnavailable", 503), S3TransientError),
        (client_error("InternalError", 500), S3TransientError),
        (client_error("SomethingNew", 502), S3TransientError),
        (client_error("TooManyRequests", 429), S3TransientError),
        (client_error("RequestTimeout", 400), S3TransientError),
        (client_error("NoSuchKey", 404), SourceGoneError),
        (client_error("404", 404), SourceGoneError),
        (client_error("NoSuchBucket", 404), SourceGoneError),
        (client_error("AccessDenied", 403), S3PermanentError),
        (client_error("InvalidObjectState", 403), S3PermanentError),
        (EndpointConnectionError(endpoint_url="https://s3.example"), S3TransientError),
        (ReadTimeoutError(endpoint_url="https://s3.example"), S3TransientError),
        (ParamValidationError(report="Bucket must be a string"), S3PermanentError),
    ],
)
def test_botocore_errors_map_onto_dinoembed_errors(err: Exception, expected: type) -> None:
    mapped = map_error(err, "GetObject s3://b/k")
    assert type(mapped) is expected
    assert "GetObject s3://b/k failed" in str(mapped)


def test_transient_and_permanent_sides_of_the_hierarchy() -> None:
    assert issubclass(S3TransientError, TransientError)
    assert issubclass(S3PermanentError, PermanentError)


def test_unreachable_endpoint_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a client pointed at a local port nobody listens on
    aws_test_env(monkeypatch)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = boto3.client(
        "s3",
        region_name=REGION,
        endpoint_url=f"http://127.0.0.1:{port}",
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=2),
    )
    # WHEN it is asked for an object THEN the failure is one to retry
    with pytest.raises(S3TransientError, match="HeadObject"):
        S3Objects(client).head(BUCKET, "photos/cat.jpg")


def test_head_of_a_missing_object_is_source_gone(s3: S3Client) -> None:
    with pytest.raises(SourceGoneError):
        S3Objects(s3).head(BUCKET, "nothing-here.jpg")


def test_read_gets_the_announced_bytes_or_reports_them_superseded(s3: S3Client) -> None:
    # GIVEN an object announced with ETag e1, then overwritten
    e1 = s3.put_object(Bucket=BUCKET, Key="a.jpg", Body=b"first")["ETag"]
    objects = S3Objects(s3)
    assert objects.read(BUCKET, "a.jpg", etag=e1, version_id=None) == b"first"
    s3.put_object(Bucket=BUCKET, Key="a.jpg", Body=b"second")
    # WHEN the stale announcement is read THEN it is reported as gone (a newer event follows)
    with pytest.raises(SourceGoneError, match="overwritten"):
        objects.read(BUCKET, "a.jpg", etag=e1, version_id=None)


def test_read_by_version_id_in_a_versioned_bucket(s3: S3Client) -> None:
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    v1 = s3.put_object(Bucket=BUCKET, Key="a.jpg", Body=b"first")["VersionId"]
    s3.put_object(Bucket=BUCKET, Key="a.jpg", Body=b"second")
    assert S3Objects(s3).read(BUCKET, "a.jpg", etag=None, version_id=v1) == b"first"


def _result(path: str) -> EmbeddingResult:
    model = ModelInfo(name="m", sha256="0" * 64, preprocess="center-crop", input_size=224)
    return EmbeddingResult(file_path=path, status="error", error="not an image", model=model)


def test_conditional_sidecar_writes(s3: S3Client) -> None:
    objects = S3Objects(s3)
    key = "a.jpg.dinov2.json"
    # GIVEN no sidecar: a create-only write succeeds, a second create-only write loses
    assert objects.put_sidecar(BUCKET, key, _result("s3://x/1"), replaces=None) is True
    assert objects.put_sidecar(BUCKET, key, _result("s3://x/2"), replaces=None) is False
    existing = objects.read_sidecar(BUCKET, key)
    assert existing is not None and existing.result is not None
    assert existing.result.file_path == "s3://x/1"
    # WHEN replacing with a stale ETag THEN it loses; with the current one THEN it wins
    assert objects.put_sidecar(BUCKET, key, _result("s3://x/3"), replaces='"stale"') is False
    assert objects.put_sidecar(BUCKET, key, _result("s3://x/4"), replaces=existing.etag) is True
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentType"] == "application/json"
    after = objects.read_sidecar(BUCKET, key)
    assert after is not None and after.result is not None
    assert after.result.file_path == "s3://x/4"


def test_missing_and_unreadable_sidecars(s3: S3Client) -> None:
    objects = S3Objects(s3)
    assert objects.read_sidecar(BUCKET, "none.jpg.dinov2.json") is None
    s3.put_object(Bucket=BUCKET, Key="bad.jpg.dinov2.json", Body=b"{not json")
    found = objects.read_sidecar(BUCKET, "bad.jpg.dinov2.json")
    assert found is not None and found.result is None and found.etag.startswith('"')


def test_conditional_sidecar_deletes(s3: S3Client) -> None:
    # Both backends honour If-Match on DeleteObject; for a key that is already gone
    # moto answers 404 NoSuchKey and SeaweedFS 412: either way "not deleted".
    objects = S3Objects(s3)
    key = "a.jpg.dinov2.json"
    first = s3.put_object(Bucket=BUCKET, Key=key, Body=b"first")["ETag"]
    second = s3.put_object(Bucket=BUCKET, Key=key, Body=b"second")["ETag"]
    # WHEN deleting with the ETag of a sidecar since rewritten THEN it stays
    assert objects.delete_sidecar(BUCKET, key, suffix=".dinov2.json", etag=first) is False
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"second"
    # WHEN deleting with the current ETag THEN it is gone
    assert objects.delete_sidecar(BUCKET, key, suffix=".dinov2.json", etag=second) is True
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0
    # WHEN it is deleted again THEN nothing happens, and that is no error
    assert objects.delete_sidecar(BUCKET, key, suffix=".dinov2.json", etag=second) is False
