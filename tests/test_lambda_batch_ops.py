"""S3 Batch Operations invocations (schema 1.0 and 2.0) end to end on moto and SeaweedFS."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from PIL import Image

from dinoembed.handler import app
from dinoembed.handler.events import UnrecognisedEventError, normalise
from tests.helpers import encode
from tests.test_lambda_handler import count_requests, inject_errors
from tests.test_lambda_support import (
    BUCKET,
    SUFFIX,
    cli_embed,
    cold_lambda,
    load_event,
    read_sidecar,
    sidecar_keys,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

V1_KEY = "photos/red flower.jpg"  # "photos/red+flower.jpg" in s3_batch_v1.json
V2_KEY = "photos/café été.jpeg"  # URL-encoded UTF-8 in s3_batch_v2.json


def batch(fixture: str, key: str | None = None) -> dict[str, Any]:
    event = load_event(fixture)
    if key is not None:
        event["tasks"][0]["s3Key"] = key
    return event


def expected_response(event: dict[str, Any], code: str) -> dict[str, Any]:
    """The envelope S3 expects, written out from AWS's documentation (not from the code)."""
    return {
        "invocationSchemaVersion": event["invocationSchemaVersion"],
        "treatMissingKeysAs": "PermanentFailure",
        "invocationId": event["invocationId"],
        "results": [{"taskId": event["tasks"][0]["taskId"], "resultCode": code}],
    }


def without_strings(response: dict[str, Any]) -> dict[str, Any]:
    stripped = copy.deepcopy(response)
    for result in stripped["results"]:
        assert isinstance(result.pop("resultString"), str)
    return stripped


@pytest.mark.usefixtures("lam")
@pytest.mark.parametrize(
    ("fixture", "key"), [("s3_batch_v1.json", V1_KEY), ("s3_batch_v2.json", V2_KEY)]
)
def test_a_batch_task_embeds_its_object_and_succeeds(
    s3: S3Client,
    photos: dict[str, Image.Image],
    tiny_model: Path,
    tmp_path: Path,
    fixture: str,
    key: str,
) -> None:
    # GIVEN the object a task names (its key URL-encoded in the invocation, as S3 sends it)
    data = encode(photos["coffee"], "JPEG")
    s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    event = batch(fixture)
    # WHEN S3 Batch Operations invokes the function
    response = app.lambda_handler(event, None)
    # THEN the response is the one S3 expects, Succeeded, naming the sidecar
    assert without_strings(response) == expected_response(event, "Succeeded")
    assert response["results"][0]["resultString"] == f"sidecar current: s3://{BUCKET}/{key}{SUFFIX}"
    # AND the sidecar holds what `dinoembed embed` computes for the same bytes
    sidecar = read_sidecar(s3, key)
    assert sidecar.source.etag == s3.head_object(Bucket=BUCKET, Key=key)["ETag"]
    local = tmp_path / "image.jpg"
    local.write_bytes(data)
    assert sidecar.embedding == cli_embed(local, tiny_model).embedding


@pytest.mark.usefixtures("lam")
def test_replaying_a_job_succeeds_without_writing(
    s3: S3Client, photos: dict[str, Image.Image]
) -> None:
    s3.put_object(Bucket=BUCKET, Key=V1_KEY, Body=encode(photos["coffee"], "JPEG"))
    event = batch("s3_batch_v1.json")
    assert app.lambda_handler(event, None)["results"][0]["resultCode"] == "Succeeded"
    before = s3.head_object(Bucket=BUCKET, Key=V1_KEY + SUFFIX)["ETag"]
    puts = count_requests("PutObject", V1_KEY + SUFFIX)
    # WHEN the same task runs again (a replayed job, or S3 retrying it)
    response = app.lambda_handler(event, None)
    # THEN it succeeds and nothing is written
    assert without_strings(response) == expected_response(event, "Succeeded")
    assert puts == []
    assert s3.head_object(Bucket=BUCKET, Key=V1_KEY + SUFFIX)["ETag"] == before


@pytest.mark.usefixtures("lam")
def test_a_missing_object_is_a_permanent_failure(s3: S3Client) -> None:
    event = batch("s3_batch_v2.json")
    response = app.lambda_handler(event, None)
    assert without_strings(response) == expected_response(event, "PermanentFailure")
    assert response["results"][0]["resultString"].startswith("object missing: HeadObject")
    assert sidecar_keys(s3) == []


@pytest.mark.usefixtures("lam")
def test_a_bad_image_gets_an_error_sidecar_and_a_permanent_failure(s3: S3Client) -> None:
    s3.put_object(Bucket=BUCKET, Key=V1_KEY, Body=b"this is not a JPEG at all")
    event = batch("s3_batch_v1.json")
    response = app.lambda_handler(event, None)
    assert without_strings(response) == expected_response(event, "PermanentFailure")
    sidecar = read_sidecar(s3, V1_KEY)
    assert sidecar.status == "error" and sidecar.error
    assert response["results"][0]["resultString"] == sidecar.error
    assert "\n" not in sidecar.error


@pytest.mark.usefixtures("lam")
def test_throttling_is_a_temporary_failure(s3: S3Client, photos: dict[str, Image.Image]) -> None:
    s3.put_object(Bucket=BUCKET, Key=V1_KEY, Body=encode(photos["coffee"], "JPEG"))
    inject_errors("GetObject", V1_KEY)
    event = batch("s3_batch_v1.json")
    response = app.lambda_handler(event, None)
    assert without_strings(response) == expected_response(event, "TemporaryFailure")
    assert "SlowDown" in response["results"][0]["resultString"]
    assert sidecar_keys(s3) == []


def test_an_unobtainable_model_is_a_temporary_failure(
    monkeypatch: pytest.MonkeyPatch, s3: S3Client, photos: dict[str, Image.Image], tmp_path: Path
) -> None:
    # GIVEN a function whose model can be neither found nor downloaded (no network here)
    s3.put_object(Bucket=BUCKET, Key=V1_KEY, Body=encode(photos["coffee"], "JPEG"))
    settings = {"model_url": "http://127.0.0.1:9/nothing.onnx"}
    with cold_lambda(monkeypatch, tmp_path / "cache", **settings):
        event = batch("s3_batch_v1.json")
        response = app.lambda_handler(event, None)
    assert without_strings(response) == expected_response(event, "TemporaryFailure")
    assert response["results"][0]["resultString"].startswith("model unavailable:")


@pytest.mark.usefixtures("lam")
@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("photos/cat.jpg" + SUFFIX, "skipped: a dinoembed sidecar"),
        ("inventory/manifest.csv", "skipped: not an image key"),
    ],
)
def test_keys_that_need_no_sidecar_succeed_as_skipped(s3: S3Client, key: str, reason: str) -> None:
    # An S3 Inventory manifest lists every object: sidecars and non-images too.
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"{}")
    heads = count_requests("HeadObject", key)
    event = batch("s3_batch_v1.json", key=key)
    response = app.lambda_handler(event, None)
    assert response["results"][0] == {
        "taskId": event["tasks"][0]["taskId"],
        "resultCode": "Succeeded",
        "resultString": reason,
    }
    assert heads == []
    assert app.runtime().model_loads == 0


def test_schema_versions_and_buckets_are_read_from_both_shapes() -> None:
    v1, v2 = normalise(load_event("s3_batch_v1.json")), normalise(load_event("s3_batch_v2.json"))
    assert v1.batch is not None and v2.batch is not None
    assert (v1.kind, v1.batch.schema_version, v1.batch.user_arguments) == ("batch", "1.0", {})
    assert (v2.batch.schema_version, dict(v2.batch.user_arguments)) == (
        "2.0",
        {"requestedBy": "backfill-2026-11"},
    )
    assert [(r.bucket, r.key, r.task_id) for r in v1.refs] == [
        (BUCKET, V1_KEY, "dGFza2lkZ29lc2hlcmUK")
    ]
    assert [(r.bucket, r.key) for r in v2.refs] == [(BUCKET, V2_KEY)]


@pytest.mark.parametrize("version", ["3.0", ""])
def test_an_unknown_schema_version_is_refused(version: str) -> None:
    event = load_event("s3_batch_v2.json")
    event["invocationSchemaVersion"] = version
    with pytest.raises(UnrecognisedEventError, match="S3 Batch Operations schema"):
        normalise(event)


def test_a_task_without_a_key_is_refused() -> None:
    event = load_event("s3_batch_v1.json")
    del event["tasks"][0]["s3Key"]
    with pytest.raises(UnrecognisedEventError, match="malformed S3 Batch Operations"):
        normalise(event)
