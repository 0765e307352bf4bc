"""Deleting an image deletes its sidecar only when the image is really gone (moto, SeaweedFS)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import ClientError
from PIL import Image

from dinoembed.handler import app
from dinoembed.handler.s3io import S3Objects
from tests.helpers import encode
from tests.test_lambda_handler import count_requests
from tests.test_lambda_support import (
    BUCKET,
    SUFFIX,
    load_event,
    sidecar_keys,
    stamp,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

KEY = "photos/IMG_0001.HEIC"


def created(key: str) -> dict[str, Any]:
    event = load_event("eventbridge_object_created.json")
    event["detail"]["object"]["key"] = key
    return event


def deleted(key: str) -> dict[str, Any]:
    event = load_event("eventbridge_object_deleted.json")
    event["detail"]["object"]["key"] = key
    return event


def s3_removed(key: str) -> dict[str, Any]:
    event = load_event("s3_put.json")
    event["Records"][0]["eventName"] = "ObjectRemoved:Delete"
    event["Records"][0]["s3"]["object"] = {"key": key, "sequencer": "0A1B2C3D4E5F678902"}
    return event


def in_sqs(event: dict[str, Any]) -> dict[str, Any]:
    batch = load_event("sqs_batch.json")
    batch["Records"] = [{**batch["Records"][0], "body": json.dumps(event)}]
    return batch


def embedded(s3: S3Client, key: str, photo: Image.Image, fmt: str = "PNG") -> str:
    """Upload ``key`` and let the function embed it; the sidecar's ETag."""
    s3.put_object(Bucket=BUCKET, Key=key, Body=encode(photo, fmt))
    assert app.lambda_handler(stamp(created(key), s3), None)["embedded"] == 1
    return s3.head_object(Bucket=BUCKET, Key=key + SUFFIX)["ETag"]


@pytest.mark.usefixtures("lam")
@pytest.mark.parametrize("shape", ["eventbridge", "s3", "sqs-eventbridge", "sqs-s3"])
def test_deleting_an_image_deletes_its_sidecar(
    s3: S3Client, photos: dict[str, Image.Image], shape: str
) -> None:
    # GIVEN an embedded image and one more, untouched
    embedded(s3, KEY, photos["coffee"])
    embedded(s3, "photos/other.jpg", photos["astronaut"], "JPEG")
    # WHEN the image is deleted and the function gets the deletion event
    s3.delete_object(Bucket=BUCKET, Key=KEY)
    event = {
        "eventbridge": deleted(KEY),
        "s3": s3_removed(KEY),
        "sqs-eventbridge": in_sqs(deleted(KEY)),
        "sqs-s3": in_sqs(s3_removed(KEY)),
    }[shape]
    response = app.lambda_handler(event, None)
    # THEN its sidecar is gone, and nothing else
    assert sidecar_keys(s3) == ["photos/other.jpg" + SUFFIX]
    if shape.startswith("sqs"):
        assert response == {"batchItemFailures": []}
    else:
        assert response["deleted"] == 1 and response["embedded"] == 0
    assert app.runtime().model_loads == 1  # the deletion needed no model of its own


@pytest.mark.usefixtures("lam")
def test_a_deletion_alone_loads_no_model(s3: S3Client) -> None:
    s3.put_object(Bucket=BUCKET, Key=KEY + SUFFIX, Body=b"{}")
    response = app.lambda_handler(deleted(KEY), None)
    assert response["deleted"] == 1
    assert app.runtime().model_loads == 0
    assert sidecar_keys(s3) == []


@pytest.mark.usefixtures("lam")
def test_a_deletion_that_arrives_after_a_reupload_keeps_the_new_sidecar(
    s3: S3Client, photos: dict[str, Image.Image]
) -> None:
    # GIVEN an image deleted, then uploaded again (another photo) and embedded again
    embedded(s3, KEY, photos["coffee"])
    s3.delete_object(Bucket=BUCKET, Key=KEY)
    new_sidecar = embedded(s3, KEY, photos["chelsea"])
    # WHEN the late deletion event arrives
    response = app.lambda_handler(deleted(KEY), None)
    # THEN the image exists, so its (new) sidecar stays, untouched
    assert response["deleted"] == 0 and response["skipped"] == 1
    assert s3.head_object(Bucket=BUCKET, Key=KEY + SUFFIX)["ETag"] == new_sidecar


@pytest.mark.usefixtures("lam")
def test_a_sidecar_rewritten_between_the_check_and_the_delete_survives(
    s3: S3Client, photos: dict[str, Image.Image]
) -> None:
    # GIVEN a deleted image whose sidecar is rewritten after the function read it
    # (as a concurrent invocation embedding a re-upload would)
    embedded(s3, KEY, photos["coffee"])
    s3.delete_object(Bucket=BUCKET, Key=KEY)
    rewritten = b'{"rewritten": true}'

    def rewrite(**_: Any) -> None:
        s3.put_object(Bucket=BUCKET, Key=KEY + SUFFIX, Body=rewritten)

    app.runtime().s3_client.meta.events.register("before-call.s3.DeleteObject", rewrite)
    # WHEN the deletion is handled
    response = app.lambda_handler(deleted(KEY), None)
    # THEN the conditional delete (If-Match on the sidecar read) leaves the new one alone
    assert response["deleted"] == 0
    assert s3.get_object(Bucket=BUCKET, Key=KEY + SUFFIX)["Body"].read() == rewritten


@pytest.mark.usefixtures("lam")
@pytest.mark.parametrize("event", [deleted, s3_removed])
def test_deleting_a_sidecar_itself_deletes_nothing(
    s3: S3Client, photos: dict[str, Image.Image], event: Any
) -> None:
    # GIVEN an embedded image, and someone deletes (an object named like) its sidecar's sidecar
    embedded(s3, KEY, photos["coffee"])
    deletes = count_requests("DeleteObject", KEY + SUFFIX + SUFFIX)
    heads = count_requests("HeadObject", KEY + SUFFIX)
    # WHEN the deletion event of the sidecar arrives
    response = app.lambda_handler(event(KEY + SUFFIX), None)
    # THEN it is ignored without even looking: no HEAD, no DELETE, sidecar intact
    assert (response["deleted"], response["skipped"]) == (0, 1)
    assert deletes == [] and heads == []
    assert sidecar_keys(s3) == [KEY + SUFFIX]


@pytest.mark.usefixtures("lam")
def test_deleting_a_non_image_deletes_nothing(s3: S3Client) -> None:
    s3.put_object(Bucket=BUCKET, Key="notes.txt" + SUFFIX, Body=b"{}")
    response = app.lambda_handler(deleted("notes.txt"), None)
    assert (response["deleted"], response["skipped"]) == (0, 1)
    assert sidecar_keys(s3) == ["notes.txt" + SUFFIX]


@pytest.mark.usefixtures("lam")
def test_a_deletion_without_a_sidecar_is_fine(s3: S3Client) -> None:
    response = app.lambda_handler(deleted(KEY), None)
    assert (response["deleted"], response["skipped"]) == (0, 1)


@pytest.mark.usefixtures("lam")
def test_throttling_during_a_deletion_retries_that_message(s3: S3Client) -> None:
    # GIVEN a deleted image whose sidecar's deletion is throttled
    s3.put_object(Bucket=BUCKET, Key=KEY + SUFFIX, Body=b"{}")
    throttled = {
        "Error": {"Code": "SlowDown", "Message": "injected"},
        "ResponseMetadata": {"HTTPStatusCode": 503},
    }

    # (moto performs a DeleteObject even when a before-send hook answers for it, so the
    # throttling is raised before the call instead: botocore's own ClientError.)
    def throttle(**_: Any) -> None:
        raise ClientError(throttled, "DeleteObject")  # type: ignore[arg-type]

    app.runtime().s3_client.meta.events.register("before-call.s3.DeleteObject", throttle)
    # WHEN the SQS message arrives THEN it is given back for a retry; the sidecar is intact
    event = in_sqs(deleted(KEY))
    response = app.lambda_handler(event, None)
    assert response == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}
    assert sidecar_keys(s3) == [KEY + SUFFIX]


def test_s3objects_refuses_to_delete_anything_but_a_sidecar(s3: S3Client) -> None:
    s3.put_object(Bucket=BUCKET, Key=KEY, Body=b"image")
    etag = s3.head_object(Bucket=BUCKET, Key=KEY)["ETag"]
    with pytest.raises(ValueError, match=r"not a \.dinov2\.json sidecar"):
        S3Objects(s3).delete_sidecar(BUCKET, KEY, suffix=SUFFIX, etag=etag)
    assert s3.head_object(Bucket=BUCKET, Key=KEY)["ETag"] == etag
