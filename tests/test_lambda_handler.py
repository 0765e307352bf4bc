"""``lambda_handler`` end to end on moto's S3 with the tiny model: sidecars, skips, failures."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import pytest
from botocore.awsrequest import AWSResponse, HTTPHeaders
from moto.core.botocore_stubber import MockRawResponse
from PIL import Image

from dinoembed.errors import TransientError
from dinoembed.handler import app
from tests.helpers import encode
from tests.test_lambda_support import (
    BUCKET,
    SUFFIX,
    cli_embed,
    cold_lambda,
    load_event,
    read_sidecar,
    sidecar_keys,
    stamp,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

SQS_IDS = {
    "cat": "059f36b4-87a3-44ab-83d2-661975830a7d",
    "red": "2e1424d4-f796-459a-8184-9c92662be6da",
    "garbage": "a8f3c1d2-0b9e-4f6a-9c7d-3e2b1a0f9e8d",
    "deleted": "c0ffee00-1111-4222-8333-944455556666",
}


@pytest.fixture
def upload(s3: S3Client, photos: dict[str, Image.Image]) -> Callable[..., bytes]:
    def put(key: str, photo: str = "coffee", fmt: str = "JPEG", data: bytes | None = None) -> bytes:
        body = data if data is not None else encode(photos[photo], fmt)
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        return body

    return put


def inject_errors(
    operation: str, key: str, *, status: int = 503, code: str = "SlowDown"
) -> list[str]:
    """Make S3 answer ``status`` to ``operation`` on ``key`` (a real botocore response)."""
    hits: list[str] = []

    def hook(request: Any, **_: Any) -> AWSResponse | None:
        if unquote(urlsplit(request.url).path).endswith("/" + key):
            hits.append(request.method)
            body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>"
            return AWSResponse(request.url, status, HTTPHeaders(), MockRawResponse(body))
        return None

    app.runtime().s3_client.meta.events.register_first(f"before-send.s3.{operation}", hook)
    return hits


def count_requests(operation: str, key: str) -> list[str]:
    hits: list[str] = []

    def hook(request: Any, **_: Any) -> None:
        if unquote(urlsplit(request.url).path).endswith("/" + key):
            hits.append(request.method)

    app.runtime().s3_client.meta.events.register_first(f"before-send.s3.{operation}", hook)
    return hits


def invoke(event: dict[str, Any]) -> dict[str, Any]:
    return app.lambda_handler(event, None)


@pytest.mark.usefixtures("lam")
def test_direct_put_writes_the_same_embedding_as_the_cli(
    s3: S3Client, upload: Callable[..., bytes], tiny_model: Path, tmp_path: Path
) -> None:
    # GIVEN "photos/red flower.jpg" in the bucket and S3's notification for it
    data = upload("photos/red flower.jpg")
    head = s3.head_object(Bucket=BUCKET, Key="photos/red flower.jpg")
    # WHEN the function is invoked
    response = invoke(stamp(load_event("s3_put.json"), s3))
    # THEN the sidecar sits beside the image, as JSON, naming the decoded key and the source
    assert response == {"kind": "s3", "embedded": 1, "errors": 0, "skipped": 0, "deleted": 0}
    sidecar = read_sidecar(s3, "photos/red flower.jpg")
    sidecar_head = s3.head_object(Bucket=BUCKET, Key="photos/red flower.jpg" + SUFFIX)
    assert sidecar_head["ContentType"] == "application/json"
    assert sidecar.status == "success"
    assert sidecar.file_path == f"s3://{BUCKET}/photos/red flower.jpg"
    assert sidecar.source.etag == head["ETag"]
    assert sidecar.source.size == len(data)
    # AND the embedding is exactly what `dinoembed embed` prints for the same bytes
    local = tmp_path / "red flower.jpg"
    local.write_bytes(data)
    reference = cli_embed(local, tiny_model)
    assert sidecar.embedding is not None and reference.embedding is not None
    assert sidecar.embedding == reference.embedding
    assert sidecar.model == reference.model


@pytest.mark.usefixtures("lam")
@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("s3_put.json", ["photos/red flower.jpg"]),
        ("eventbridge_object_created.json", ["photos/café été.jpeg"]),
        ("sns_notification.json", ["photos/a+b.png"]),
        (
            "s3_put_multi.json",
            ["photos/UPPER.JPG", "photos/a+b.png", "photos/café été.jpeg", "photos/cat.jpg"],
        ),
    ],
)
def test_each_event_shape_embeds_the_decoded_keys(
    s3: S3Client, upload: Callable[..., bytes], fixture: str, expected: list[str]
) -> None:
    # GIVEN every object the fixtures name (images, a text file, a sidecar-named key)
    upload("photos/red flower.jpg", "coffee")
    upload("photos/café été.jpeg", "chelsea")
    upload("photos/a+b.png", "rocket", "PNG")
    upload("photos/cat.jpg", "astronaut")
    upload("photos/UPPER.JPG", "china")
    upload("photos/notes.txt", data=b"just text")
    # WHEN the event arrives
    response = invoke(stamp(load_event(fixture), s3))
    # THEN exactly the named images got a successful sidecar, each under its decoded key
    assert sidecar_keys(s3) == sorted(key + SUFFIX for key in expected)
    for key in expected:
        assert read_sidecar(s3, key).file_path == f"s3://{BUCKET}/{key}"
        assert read_sidecar(s3, key).status == "success"
    assert response["embedded"] == len(expected)


@pytest.mark.usefixtures("lam")
def test_sqs_batch_lists_exactly_the_garbage_message(
    s3: S3Client, upload: Callable[..., bytes]
) -> None:
    # GIVEN a batch: cat.jpg, red flower.jpg via SNS, garbage, a deleted object, a test event
    upload("photos/cat.jpg", "astronaut")
    upload("photos/red flower.jpg", "coffee")
    # WHEN it is processed
    response = invoke(stamp(load_event("sqs_batch.json"), s3))
    # THEN only the garbage is retried; the missing object is skipped, not failed
    assert response == {"batchItemFailures": [{"itemIdentifier": SQS_IDS["garbage"]}]}
    assert sidecar_keys(s3) == [f"photos/cat.jpg{SUFFIX}", f"photos/red flower.jpg{SUFFIX}"]


@pytest.mark.usefixtures("lam")
def test_sqs_transient_error_fails_only_its_message(
    s3: S3Client, upload: Callable[..., bytes]
) -> None:
    # GIVEN S3 throttles every read of photos/cat.jpg
    upload("photos/cat.jpg", "astronaut")
    upload("photos/red flower.jpg", "coffee")
    hits = inject_errors("GetObject", "photos/cat.jpg")
    # WHEN the batch is processed
    response = invoke(stamp(load_event("sqs_batch.json"), s3))
    # THEN cat's message is handed back with the garbage; red flower's is done
    assert hits
    assert response == {
        "batchItemFailures": [
            {"itemIdentifier": SQS_IDS["garbage"]},
            {"itemIdentifier": SQS_IDS["cat"]},
        ]
    }
    assert sidecar_keys(s3) == [f"photos/red flower.jpg{SUFFIX}"]


@pytest.mark.usefixtures("lam")
@pytest.mark.parametrize("fixture", ["s3_put.json", "eventbridge_object_created.json"])
def test_direct_invocations_raise_on_transient_errors(
    s3: S3Client, upload: Callable[..., bytes], fixture: str
) -> None:
    upload("photos/red flower.jpg")
    upload("photos/café été.jpeg")
    inject_errors("GetObject", "photos/red flower.jpg", status=500, code="InternalError")
    inject_errors("GetObject", "photos/café été.jpeg", status=500, code="InternalError")
    with pytest.raises(TransientError, match="must be retried"):
        invoke(stamp(load_event(fixture), s3))
    assert sidecar_keys(s3) == []


@pytest.mark.usefixtures("lam")
def test_missing_object_is_skipped_not_failed(s3: S3Client) -> None:
    # GIVEN a notification for an object deleted before we got to it
    response = invoke(load_event("s3_put.json"))
    assert response == {"kind": "s3", "embedded": 0, "errors": 0, "skipped": 1, "deleted": 0}
    assert sidecar_keys(s3) == []


@pytest.mark.usefixtures("lam")
def test_recursion_guard_and_non_images_write_nothing(
    s3: S3Client, upload: Callable[..., bytes]
) -> None:
    # GIVEN a sidecar-named object and a text file, each announced
    upload("photos/cat.jpg.dinov2.json", data=b'{"not": "ours"}')
    upload("photos/notes.txt", data=b"hello")
    event = load_event("s3_put_multi.json")
    event["Records"] = [event["Records"][4], event["Records"][5]]
    before = s3.list_objects_v2(Bucket=BUCKET)["Contents"]
    # WHEN the function sees those events
    response = invoke(stamp(event, s3))
    # THEN nothing is written or changed
    assert response["skipped"] == 2 and response["embedded"] == 0
    after = s3.list_objects_v2(Bucket=BUCKET)["Contents"]
    assert [(o["Key"], o["ETag"]) for o in after] == [(o["Key"], o["ETag"]) for o in before]


@pytest.mark.usefixtures("lam")
def test_replaying_an_event_leaves_the_sidecar_untouched(
    s3: S3Client, upload: Callable[..., bytes]
) -> None:
    # GIVEN an image already embedded
    upload("photos/red flower.jpg")
    event = stamp(load_event("s3_put.json"), s3)
    invoke(event)
    key = "photos/red flower.jpg" + SUFFIX
    first = s3.get_object(Bucket=BUCKET, Key=key)
    first_body = first["Body"].read()
    # WHEN the same event is delivered again (at-least-once)
    puts = count_requests("PutObject", key)
    response = invoke(event)
    # THEN it is skipped: no write attempted, same bytes, same ETag
    second = s3.get_object(Bucket=BUCKET, Key=key)
    assert response["skipped"] == 1 and response["embedded"] == 0
    assert puts == []
    assert second["ETag"] == first["ETag"]
    assert second["Body"].read() == first_body


@pytest.mark.usefixtures("lam")
def test_overwritten_image_replaces_its_sidecar(s3: S3Client, upload: Callable[..., bytes]) -> None:
    # GIVEN an image embedded once, then overwritten with another photo
    upload("photos/red flower.jpg", "coffee")
    invoke(stamp(load_event("s3_put.json"), s3))
    old = read_sidecar(s3, "photos/red flower.jpg")
    upload("photos/red flower.jpg", "chelsea")
    # WHEN the new notification arrives
    invoke(stamp(load_event("s3_put.json"), s3))
    # THEN the sidecar now describes the new object
    new = read_sidecar(s3, "photos/red flower.jpg")
    assert new.source.etag == s3.head_object(Bucket=BUCKET, Key="photos/red flower.jpg")["ETag"]
    assert new.source.etag != old.source.etag
    assert new.embedding is not None and old.embedding is not None
    assert new.embedding.embedding != old.embedding.embedding


@pytest.mark.usefixtures("lam")
def test_stale_event_for_an_overwritten_object_is_skipped(
    s3: S3Client, upload: Callable[..., bytes]
) -> None:
    # GIVEN a notification for the first version, but the object was overwritten since
    upload("photos/red flower.jpg", "coffee")
    stale = stamp(load_event("s3_put.json"), s3)
    upload("photos/red flower.jpg", "chelsea")
    # WHEN the stale notification is processed THEN nothing is written (the new one will be)
    response = invoke(stale)
    assert response["skipped"] == 1
    assert sidecar_keys(s3) == []


@pytest.mark.usefixtures("lam")
def test_sidecar_of_another_model_is_replaced(s3: S3Client, upload: Callable[..., bytes]) -> None:
    upload("photos/red flower.jpg")
    event = stamp(load_event("s3_put.json"), s3)
    invoke(event)
    key = "photos/red flower.jpg" + SUFFIX
    doc = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    doc["model"]["sha256"] = "f" * 64
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(doc).encode())
    response = invoke(event)
    assert response["embedded"] == 1
    assert read_sidecar(s3, "photos/red flower.jpg").model.sha256 != "f" * 64


@pytest.mark.usefixtures("lam")
def test_concurrent_writer_wins_the_race_and_we_call_it_done(
    s3: S3Client, upload: Callable[..., bytes]
) -> None:
    # GIVEN another invocation writes the sidecar between our check and our write
    upload("photos/red flower.jpg")
    key = "photos/red flower.jpg" + SUFFIX
    rival = b'{"written": "by another invocation"}'

    def rival_write(request: Any, **_: Any) -> None:
        if unquote(urlsplit(request.url).path).endswith("/" + key) and not raced:
            raced.append(True)
            s3.put_object(Bucket=BUCKET, Key=key, Body=rival)

    raced: list[bool] = []
    app.runtime().s3_client.meta.events.register_first("before-send.s3.PutObject", rival_write)
    # WHEN our write happens (If-None-Match: *)
    response = invoke(stamp(load_event("s3_put.json"), s3))
    # THEN S3 refuses it, the rival's sidecar stays, and the record counts as done
    assert raced == [True]
    assert response == {"kind": "s3", "embedded": 0, "errors": 0, "skipped": 1, "deleted": 0}
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == rival


@pytest.mark.usefixtures("s3")
def test_too_large_objects_get_an_error_sidecar_without_download(
    monkeypatch: pytest.MonkeyPatch,
    s3: S3Client,
    upload: Callable[..., bytes],
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    # GIVEN DINOEMBED_MAX_BYTES below the image's size
    data = upload("photos/red flower.jpg")
    with cold_lambda(monkeypatch, tmp_path, model_path=str(tiny_model), max_bytes="10000"):
        reads = count_requests("GetObject", "photos/red flower.jpg")
        # WHEN it is announced
        response = invoke(stamp(load_event("s3_put.json"), s3))
    # THEN it is never downloaded, and its sidecar says why, without failing the record
    assert reads == []
    assert response["errors"] == 1
    sidecar = read_sidecar(s3, "photos/red flower.jpg")
    assert sidecar.status == "error" and sidecar.embedding is None
    assert sidecar.error == f"file too large: {len(data)} bytes exceeds 10000 bytes"


@pytest.mark.usefixtures("lam")
def test_bad_images_get_error_sidecars_and_the_rest_succeed(
    s3: S3Client, upload: Callable[..., bytes]
) -> None:
    upload("photos/cat.jpg", data=b"%PDF-1.7 this is a PDF")
    upload("photos/a+b.png", "rocket", "PNG")
    upload("photos/café été.jpeg", data=encode_truncated())
    upload("photos/UPPER.JPG", "china")
    event = load_event("s3_put_multi.json")
    event["Records"] = event["Records"][:4]
    response = invoke(stamp(event, s3))
    assert (response["embedded"], response["errors"]) == (2, 2)
    pdf, truncated = read_sidecar(s3, "photos/cat.jpg"), read_sidecar(s3, "photos/café été.jpeg")
    assert pdf.status == "error" and "PDF" in (pdf.error or "")
    assert truncated.status == "error" and truncated.embedding is None
    assert read_sidecar(s3, "photos/a+b.png").status == "success"


def encode_truncated() -> bytes:
    img = Image.new("RGB", (300, 200), (200, 30, 60))
    return encode(img, "JPEG")[:400]


@pytest.mark.usefixtures("lam")
def test_event_without_size_and_etag_asks_s3(s3: S3Client, upload: Callable[..., bytes]) -> None:
    upload("photos/red flower.jpg")
    event = load_event("s3_put.json")
    del event["Records"][0]["s3"]["object"]["size"]
    del event["Records"][0]["s3"]["object"]["eTag"]
    heads = count_requests("HeadObject", "photos/red flower.jpg")
    invoke(event)
    assert heads == ["HEAD"]
    sidecar = read_sidecar(s3, "photos/red flower.jpg")
    assert sidecar.source.etag == s3.head_object(Bucket=BUCKET, Key="photos/red flower.jpg")["ETag"]


@pytest.mark.usefixtures("lam")
def test_one_json_log_line_per_image_and_emf_metrics(
    s3: S3Client, upload: Callable[..., bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    upload("photos/red flower.jpg")
    invoke(stamp(load_event("s3_put.json"), s3))
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    images = [line for line in lines if line.get("key") == "photos/red flower.jpg"]
    assert len(images) == 1
    assert images[0]["status"] == "success" and images[0]["bucket"] == BUCKET
    assert images[0]["service"] == "dinoembed" and images[0]["level"] == "INFO"
    assert images[0]["seconds"] > 0
    emf = [line for line in lines if "_aws" in line]
    assert len(emf) == 1
    assert emf[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "dinoembed"
    counts = [emf[0][name] for name in ("ImagesEmbedded", "ImageErrors", "ImagesSkipped")]
    assert counts == [[1.0], [0.0], [0.0]]
    assert emf[0]["EmbedLatency"][0] > 0


@pytest.mark.usefixtures("lam")
def test_s3_test_event_is_acknowledged_without_loading_the_model(s3: S3Client) -> None:
    response = invoke(load_event("s3_test_event.json"))
    assert response == {"kind": "test", "embedded": 0, "errors": 0, "skipped": 0, "deleted": 0}
    assert app.runtime().model_loads == 0
    assert sidecar_keys(s3) == []
