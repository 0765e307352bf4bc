"""One event normaliser: whatever invoked the function, a list of S3 objects to look at.

Accepted shapes (AWS's own JSON, as documented for each service):

- a direct S3 notification (``{"Records": [{"eventSource": "aws:s3", ...}]}``);
- SQS messages whose body is an S3 notification, an SNS envelope around one
  (SQS -> SNS -> S3 without raw delivery), or an EventBridge event;
- SNS records invoking the function directly (``"EventSource": "aws:sns"``);
- an EventBridge "Object Created" or "Object Deleted" event from S3;
- S3's ``s3:TestEvent``, which names no object and is acknowledged;
- an S3 Batch Operations invocation (schema 1.0 with ``s3BucketArn``, 2.0 with
  ``s3Bucket`` and ``userArguments``), read through Powertools' ``S3BatchOperationEvent``.

``ObjectCreated:*`` records and "Object Created" events name images to embed
(``action="embed"``); ``ObjectRemoved:*`` records and "Object Deleted" events name
images whose sidecar may have to go (``action="delete"``). Other records are ignored.

S3 notifications carry keys URL-encoded ("red flower.jpg" arrives as
"red+flower.jpg"), so every key is decoded with ``unquote_plus``; EventBridge
keys are decoded the same way (as aws-lambda-powertools does). The functions
here are pure: they only read the event.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote_plus

from dinoembed.errors import PermanentError

Kind = Literal["s3", "sqs", "sns", "eventbridge", "test", "batch"]
Action = Literal["embed", "delete"]


class UnrecognisedEventError(PermanentError):
    """The event (or one SQS message) is not an S3 object notification."""


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """One object an event announced. ``message_id`` is the SQS message it came in, if any;
    ``action`` says whether it was created (embed it) or deleted (its sidecar may go)."""

    bucket: str
    key: str
    size: int | None = None
    etag: str | None = None
    version_id: str | None = None
    message_id: str | None = None
    action: Action = "embed"
    task_id: str | None = None  # the S3 Batch Operations task that named it

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True, slots=True)
class BatchJob:
    """What an S3 Batch Operations response must echo back, and the job's own arguments."""

    schema_version: str
    invocation_id: str
    job_id: str
    user_arguments: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Invocation:
    """The objects to process and the SQS messages that could not be understood."""

    kind: Kind
    refs: list[ObjectRef] = field(default_factory=list)
    bad_messages: list[str] = field(default_factory=list)
    ignored: int = 0
    batch: BatchJob | None = None

    @property
    def to_embed(self) -> list[ObjectRef]:
        return [ref for ref in self.refs if ref.action == "embed"]

    @property
    def deleted(self) -> list[ObjectRef]:
        return [ref for ref in self.refs if ref.action == "delete"]


def normalise(event: Any) -> Invocation:
    """Any accepted event -> :class:`Invocation`; raises :class:`UnrecognisedEventError`."""
    if not isinstance(event, Mapping):
        raise UnrecognisedEventError(f"event must be a JSON object, got {type(event).__name__}")
    if _is_test_event(event):
        return Invocation("test")
    if event.get("source") == "aws.s3" and "detail" in event:
        return _eventbridge_invocation(event)
    if "invocationSchemaVersion" in event and "tasks" in event:
        return _batch_invocation(event)
    records = event.get("Records")
    if not isinstance(records, list) or not records:
        raise UnrecognisedEventError(f"not an S3, SQS, SNS or EventBridge event: {_keys(event)}")
    first = records[0] if isinstance(records[0], Mapping) else {}
    if first.get("eventSource") == "aws:sqs":
        return _sqs_invocation(records)
    if first.get("EventSource") == "aws:sns":
        refs, ignored = _from_sns_records(records, None)
        return Invocation("sns", refs, ignored=ignored)
    refs, ignored = _from_s3_records(records, None)
    return Invocation("s3", refs, ignored=ignored)


def _sqs_invocation(records: list[Any]) -> Invocation:
    refs: list[ObjectRef] = []
    bad: list[str] = []
    ignored = 0
    for record in records:
        message_id = str(record.get("messageId", "")) if isinstance(record, Mapping) else ""
        try:
            body = json.loads(record["body"])
            found, skipped = _from_message_body(body, message_id)
        except (KeyError, TypeError, ValueError, UnrecognisedEventError):
            bad.append(message_id)
            continue
        refs.extend(found)
        ignored += skipped
    return Invocation("sqs", refs, bad, ignored)


def _from_message_body(body: Any, message_id: str | None) -> tuple[list[ObjectRef], int]:
    """The body of an SQS message or an SNS notification: one of the shapes, unwrapped."""
    if not isinstance(body, Mapping):
        raise UnrecognisedEventError("message body is not a JSON object")
    if _is_test_event(body):
        return [], 1
    if body.get("Type") == "Notification" and "Message" in body:
        return _from_message_body(json.loads(body["Message"]), message_id)
    if body.get("source") == "aws.s3" and "detail" in body:
        return _from_eventbridge(body, message_id)
    records = body.get("Records")
    if not isinstance(records, list) or not records:
        raise UnrecognisedEventError(f"message is not an S3 notification: {_keys(body)}")
    return _from_s3_records(records, message_id)


def _from_sns_records(records: list[Any], message_id: str | None) -> tuple[list[ObjectRef], int]:
    refs: list[ObjectRef] = []
    ignored = 0
    for record in records:
        try:
            found, skipped = _from_message_body(json.loads(record["Sns"]["Message"]), message_id)
        except (KeyError, TypeError, ValueError) as err:
            raise UnrecognisedEventError(f"SNS record without an S3 notification: {err}") from err
        refs.extend(found)
        ignored += skipped
    return refs, ignored


def _from_s3_records(records: list[Any], message_id: str | None) -> tuple[list[ObjectRef], int]:
    """S3 notification records: ``ObjectCreated:*`` and ``ObjectRemoved:*`` name objects."""
    refs: list[ObjectRef] = []
    ignored = 0
    for record in records:
        try:
            if record.get("eventSource") != "aws:s3":
                raise UnrecognisedEventError(f"record is not from S3: {_keys(record)}")
            action = _S3_ACTIONS.get(str(record.get("eventName", "")).split(":", 1)[0])
            if action is None:
                ignored += 1
                continue
            s3 = record["s3"]
            obj = s3["object"]
            refs.append(
                ObjectRef(
                    bucket=_name(s3["bucket"]["name"], "bucket name"),
                    key=unquote_plus(_name(obj["key"], "object key")),
                    size=_int_or_none(obj.get("size")),
                    etag=normalise_etag(obj.get("eTag")),
                    version_id=_str_or_none(obj.get("versionId")),
                    message_id=message_id,
                    action=action,
                )
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise UnrecognisedEventError(f"malformed S3 record: missing {err}") from err
    return refs, ignored


BATCH_SCHEMA_VERSIONS = ("1.0", "2.0")


def _batch_invocation(event: Mapping[str, Any]) -> Invocation:
    """S3 Batch Operations: one ref per task (S3 sends one task per invocation today).

    Keys are URL-encoded in the invocation as in the manifest; Powertools' ``s3_key``
    decodes them with ``unquote_plus``, as AWS's own example function does.
    """
    # Imported here: Powertools' data_classes package imports every event class it has
    # (~25 ms), which no other kind of invocation needs on its cold start.
    from aws_lambda_powertools.utilities.data_classes import S3BatchOperationEvent

    parsed = S3BatchOperationEvent(dict(event))
    try:
        version = str(parsed.invocation_schema_version)
        if version not in BATCH_SCHEMA_VERSIONS:
            raise UnrecognisedEventError(
                f"S3 Batch Operations schema {version} is not one of {BATCH_SCHEMA_VERSIONS}"
            )
        job = parsed.job
        arguments = job.user_arguments
        batch = BatchJob(
            schema_version=version,
            invocation_id=_name(parsed.invocation_id, "invocation id"),
            job_id=str(job.get_id),
            user_arguments={str(k): str(v) for k, v in arguments.items()},
        )
        refs = [
            ObjectRef(
                bucket=_name(task.s3_bucket, "bucket name"),
                key=_name(task.s3_key, "object key"),
                version_id=_str_or_none(task.s3_version_id),
                task_id=_name(task.task_id, "task id"),
            )
            for task in parsed.tasks
        ]
    except (KeyError, TypeError, AttributeError) as err:
        raise UnrecognisedEventError(
            f"malformed S3 Batch Operations invocation: missing {err}"
        ) from err
    return Invocation("batch", refs, batch=batch)


def _eventbridge_invocation(event: Mapping[str, Any]) -> Invocation:
    refs, ignored = _from_eventbridge(event, None)
    return Invocation("eventbridge", refs, ignored=ignored)


def _from_eventbridge(
    event: Mapping[str, Any], message_id: str | None
) -> tuple[list[ObjectRef], int]:
    action = _EVENTBRIDGE_ACTIONS.get(str(event.get("detail-type")))
    if action is None:
        return [], 1
    try:
        detail = event["detail"]
        obj = detail["object"]
        ref = ObjectRef(
            bucket=_name(detail["bucket"]["name"], "bucket name"),
            key=unquote_plus(_name(obj["key"], "object key")),
            size=_int_or_none(obj.get("size")),
            etag=normalise_etag(obj.get("etag") or obj.get("eTag")),
            version_id=_str_or_none(obj.get("version-id")),
            message_id=message_id,
            action=action,
        )
    except (KeyError, TypeError, AttributeError) as err:
        raise UnrecognisedEventError(f"malformed EventBridge S3 event: missing {err}") from err
    return [ref], 0


_S3_ACTIONS: dict[str, Action] = {"ObjectCreated": "embed", "ObjectRemoved": "delete"}
_EVENTBRIDGE_ACTIONS: dict[str, Action] = {"Object Created": "embed", "Object Deleted": "delete"}


def _is_test_event(event: Mapping[str, Any]) -> bool:
    return event.get("Event") == "s3:TestEvent"


def normalise_etag(etag: Any) -> str | None:
    """ETags as S3's API returns them: in double quotes (events leave the quotes out)."""
    if not etag or not isinstance(etag, str):
        return None
    return '"' + etag.strip('"') + '"'


def _name(value: Any, what: str) -> str:
    """A bucket name or key must be a non-empty string; anything else is a malformed event."""
    if not isinstance(value, str) or not value:
        raise UnrecognisedEventError(f"malformed S3 event: the {what} is not a string")
    return value


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int_or_none(value: Any) -> int | None:
    """A size: a non-negative integer, or None when the event's value is anything else."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number >= 0 else None


def _keys(obj: Any) -> str:
    if isinstance(obj, Mapping):
        names = sorted(" ".join(str(k).split())[:40] or repr(k) for k in obj)
        return "keys " + ", ".join(names[:8])
    return type(obj).__name__
