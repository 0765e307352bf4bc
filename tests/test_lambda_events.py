"""The event normaliser: every accepted shape, URL-decoded keys, garbage named precisely."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote_plus

import boto3
import pytest
from moto import mock_aws

from dinoembed.handler.events import ObjectRef, UnrecognisedEventError, normalise
from tests.test_lambda_support import (
    BUCKET,
    REGION,
    aws_test_env,
    load_event,
)


def test_direct_s3_put_decodes_plus_as_space() -> None:
    # GIVEN S3's notification for "photos/red flower.jpg" (S3 sends "red+flower.jpg")
    event = load_event("s3_put.json")
    # WHEN it is normalised
    inv = normalise(event)
    # THEN one object is named, with the key S3's API knows, size and quoted ETag
    assert inv.kind == "s3"
    assert inv.refs == [
        ObjectRef(
            bucket=BUCKET,
            key="photos/red flower.jpg",
            size=183402,
            etag='"9b2cf535f27731c974343645a3985328"',
        )
    ]
    assert inv.refs[0].uri == f"s3://{BUCKET}/photos/red flower.jpg"


def test_multi_record_event_keeps_order_and_marks_removals() -> None:
    # GIVEN a notification with several records, one of them an ObjectRemoved event
    inv = normalise(load_event("s3_put_multi.json"))
    # THEN every key is decoded, in order (the handler filters non-images later)
    assert [(ref.key, ref.action) for ref in inv.refs] == [
        ("photos/cat.jpg", "embed"),
        ("photos/a+b.png", "embed"),
        ("photos/café été.jpeg", "embed"),
        ("photos/UPPER.JPG", "embed"),
        ("photos/notes.txt", "embed"),
        ("photos/cat.jpg.dinov2.json", "embed"),
        ("photos/old.jpg", "delete"),
    ]
    assert inv.ignored == 0
    assert [ref.key for ref in inv.deleted] == ["photos/old.jpg"]
    assert len(inv.to_embed) == 6


@pytest.mark.parametrize(
    "event_name", ["ObjectRemoved:Delete", "ObjectRemoved:DeleteMarkerCreated"]
)
def test_s3_removals_name_objects_to_delete(event_name: str) -> None:
    record = load_event("s3_put.json")
    record["Records"][0]["eventName"] = event_name
    (ref,) = normalise(record).refs
    assert (ref.key, ref.action) == ("photos/red flower.jpg", "delete")


@pytest.mark.parametrize("event_name", ["ObjectRestore:Completed", "LifecycleTransition", ""])
def test_other_s3_records_are_ignored(event_name: str) -> None:
    record = load_event("s3_put.json")
    record["Records"][0]["eventName"] = event_name
    inv = normalise(record)
    assert (inv.refs, inv.ignored) == ([], 1)


@pytest.mark.parametrize(
    "key",
    ["red flower.jpg", "a+b.png", "100% café/été 1+1=2.jpeg", "日本語 写真.webp", "x%2By.jpg"],
)
def test_keys_round_trip_through_s3_url_encoding(key: str) -> None:
    # GIVEN a record whose key is URL-encoded as S3 encodes it (quote_plus)
    record = load_event("s3_put.json")
    record["Records"][0]["s3"]["object"]["key"] = quote_plus(key)
    # WHEN normalised THEN the original key comes back
    assert normalise(record).refs[0].key == key


def test_sqs_batch_unwraps_s3_and_sns_and_names_the_garbage() -> None:
    # GIVEN an SQS batch: S3 notification, SNS envelope, garbage, another S3 one, test event
    inv = normalise(load_event("sqs_batch.json"))
    # THEN the objects carry their message ids and only the garbage message is bad
    assert inv.kind == "sqs"
    assert [(ref.key, ref.message_id) for ref in inv.refs] == [
        ("photos/cat.jpg", "059f36b4-87a3-44ab-83d2-661975830a7d"),
        ("photos/red flower.jpg", "2e1424d4-f796-459a-8184-9c92662be6da"),
        ("photos/deleted.jpg", "c0ffee00-1111-4222-8333-944455556666"),
    ]
    assert inv.bad_messages == ["a8f3c1d2-0b9e-4f6a-9c7d-3e2b1a0f9e8d"]
    assert inv.ignored == 1  # the s3:TestEvent message


@pytest.mark.parametrize(
    "body",
    [
        "not json at all",
        json.dumps(["a", "list"]),
        json.dumps({"hello": "world"}),
        json.dumps({"Records": []}),
        json.dumps({"Records": [{"eventSource": "aws:dynamodb"}]}),
        json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put"}]}),
        json.dumps({"Type": "Notification", "Message": "not json"}),
    ],
)
def test_sqs_message_that_is_not_an_s3_notification_is_bad(body: str) -> None:
    # GIVEN one good message and one odd one
    event = load_event("sqs_batch.json")
    event["Records"] = [event["Records"][0], {**event["Records"][0], "messageId": "m-bad"}]
    event["Records"][1]["body"] = body
    # WHEN normalised
    inv = normalise(event)
    # THEN only the odd one is reported, the good one still yields its object
    assert inv.bad_messages == ["m-bad"]
    assert [ref.key for ref in inv.refs] == ["photos/cat.jpg"]


def test_eventbridge_object_created() -> None:
    inv = normalise(load_event("eventbridge_object_created.json"))
    assert inv.kind == "eventbridge"
    assert inv.refs == [
        ObjectRef(
            bucket=BUCKET,
            key="photos/café été.jpeg",
            size=183402,
            etag='"9b2cf535f27731c974343645a3985328"',
        )
    ]


def test_eventbridge_object_deleted() -> None:
    inv = normalise(load_event("eventbridge_object_deleted.json"))
    assert inv.kind == "eventbridge"
    assert inv.refs == [ObjectRef(bucket=BUCKET, key="photos/IMG_0001.HEIC", action="delete")]


def test_eventbridge_deleted_inside_sqs_keeps_its_message_id() -> None:
    event = load_event("sqs_batch.json")
    event["Records"] = [event["Records"][0]]
    event["Records"][0]["body"] = json.dumps(load_event("eventbridge_object_deleted.json"))
    (ref,) = normalise(event).refs
    assert (ref.key, ref.action, ref.message_id) == (
        "photos/IMG_0001.HEIC",
        "delete",
        event["Records"][0]["messageId"],
    )


@pytest.mark.parametrize("detail_type", ["Object Restore Completed", "Object Tags Added"])
def test_eventbridge_other_detail_types_are_ignored(detail_type: str) -> None:
    event = load_event("eventbridge_object_created.json")
    event["detail-type"] = detail_type
    inv = normalise(event)
    assert (inv.kind, inv.refs, inv.ignored) == ("eventbridge", [], 1)


def test_sns_records_invoking_directly() -> None:
    inv = normalise(load_event("sns_notification.json"))
    assert (inv.kind, [ref.key for ref in inv.refs]) == ("sns", ["photos/a+b.png"])


def test_s3_test_event_names_nothing() -> None:
    inv = normalise(load_event("s3_test_event.json"))
    assert (inv.kind, inv.refs, inv.bad_messages) == ("test", [], [])


@pytest.mark.parametrize(
    "event",
    [[], "text", {}, {"Records": []}, {"detail-type": "Scheduled Event", "source": "aws.events"}],
)
def test_unrecognised_direct_events_raise(event: Any) -> None:
    with pytest.raises(UnrecognisedEventError):
        normalise(event)


def test_version_id_is_kept() -> None:
    event = load_event("s3_put.json")
    event["Records"][0]["s3"]["object"]["versionId"] = "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY"
    assert normalise(event).refs[0].version_id == "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY"


def test_notifications_moto_sends_to_sqs_decode_to_the_uploaded_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a bucket notifying an SQS queue (moto encodes keys as S3 documents)
    aws_test_env(monkeypatch)
    keys = ["in/red flower.jpg", "in/a+b.png", "in/café été.jpeg", "in/x%2By.webp"]
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        sqs = boto3.client("sqs", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET)
        url = sqs.create_queue(QueueName="uploads")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        s3.put_bucket_notification_configuration(
            Bucket=BUCKET,
            NotificationConfiguration={
                "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]
            },
        )
        # WHEN objects are uploaded and the queue is read as Lambda's poller would
        for key in keys:
            s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    event = {
        "Records": [
            {"messageId": m["MessageId"], "body": m["Body"], "eventSource": "aws:sqs"}
            for m in messages
            if "s3:TestEvent" not in m["Body"]
        ]
    }
    # THEN the normaliser recovers exactly the uploaded keys
    inv = normalise(event)
    assert sorted(ref.key for ref in inv.refs) == sorted(keys)
    assert inv.bad_messages == []
