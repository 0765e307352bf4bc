"""The Lambda keeps the vector index in step with its sidecars (SPEC section 10): S3 on
moto and SeaweedFS, S3 Vectors on a moto server with QueryVectors (tests/vectors_server.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from PIL import Image

from dinoembed.collections.index import index_name
from dinoembed.handler import app, vectors
from dinoembed.pipeline import Pipeline
from tests.helpers import encode
from tests.test_lambda_batch_ops import V1_KEY, batch, without_strings
from tests.test_lambda_deletes import created, deleted, in_sqs
from tests.test_lambda_support import BUCKET, SUFFIX, read_sidecar, stamp
from tests.vectors_server import CALLS, Vectors, VectorsServer, inject, open_vectors

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@pytest.fixture
def index(
    lam: None,
    vectors_server: VectorsServer,
    monkeypatch: pytest.MonkeyPatch,
    embedder: Pipeline,
) -> Iterator[Vectors]:
    """The index the tiny model's recipe needs, named in DINOEMBED_VECTOR_INDEX; the
    function's S3 Vectors client makes one attempt (so an injected failure fails)."""
    monkeypatch.setattr(vectors, "MAX_ATTEMPTS", 1)
    dim = embedder.engine.spec.dim
    for v in open_vectors(vectors_server, monkeypatch, index_name(embedder.recipe), dim):
        monkeypatch.setenv("DINOEMBED_VECTOR_INDEX", v.uri)
        yield v


@pytest.fixture
def put(s3: S3Client, photos: dict[str, Image.Image]) -> Callable[..., str]:
    def upload(key: str, photo: str = "coffee", data: bytes | None = None) -> str:
        s3.put_object(Bucket=BUCKET, Key=key, Body=data or encode(photos[photo], "JPEG"))
        return str(s3.head_object(Bucket=BUCKET, Key=key)["ETag"])

    return upload


def emf(out: str) -> dict[str, Any]:
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return next(line for line in lines if "_aws" in line)


def test_a_new_image_is_indexed_with_its_sidecars_vector_and_metadata(
    s3: S3Client, index: Vectors, put: Callable[..., str]
) -> None:
    # GIVEN an uploaded image
    etag = put("photos/cat.jpg")
    # WHEN the function embeds it
    app.lambda_handler(stamp(created("photos/cat.jpg"), s3), None)
    # THEN the index holds its vector (the sidecar's, as float32) under the image's key
    stored = index.stored()
    sidecar = read_sidecar(s3, "photos/cat.jpg")
    assert list(stored) == ["photos/cat.jpg"] and sidecar.embedding is not None
    data, metadata = stored["photos/cat.jpg"]
    assert np.allclose(data, sidecar.embedding.embedding, atol=1e-6)
    # AND metadata enough to answer without the sidecar
    assert metadata["etag"] == etag and metadata["prefixes"] == ["photos/"]
    assert metadata["size"] == sidecar.source.size


def test_a_duplicate_upload_records_its_neighbour(
    s3: S3Client, index: Vectors, put: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN cat.jpg embedded and indexed
    put("photos/cat.jpg", "coffee")
    app.lambda_handler(stamp(created("photos/cat.jpg"), s3), None)
    capsys.readouterr()
    # WHEN the same photo lands again under another key, and an unrelated one too
    put("photos/copy.jpg", "coffee")
    put("photos/other.jpg", "rocket")
    app.lambda_handler(stamp(created("photos/copy.jpg"), s3), None)
    metrics = emf(capsys.readouterr().out)
    app.lambda_handler(stamp(created("photos/other.jpg"), s3), None)
    # THEN the copy's sidecar and its vector's metadata name cat.jpg (cosine 1.0)
    copy = read_sidecar(s3, "photos/copy.jpg")
    assert copy.neighbours is not None
    assert [(n.key, round(n.score, 4)) for n in copy.neighbours] == [("photos/cat.jpg", 1.0)]
    assert json.loads(index.stored()["photos/copy.jpg"][1]["neighbours"]) == [
        ["photos/cat.jpg", pytest.approx(1.0, abs=1e-5)]
    ]
    # AND an unrelated photo records none, the first one recorded none either
    assert read_sidecar(s3, "photos/other.jpg").neighbours == []
    assert read_sidecar(s3, "photos/cat.jpg").neighbours == []
    # AND the metric counts the upload that had a duplicate
    assert metrics["UploadsWithDuplicates"] == [1.0] and metrics["VectorsPut"] == [1.0]


def test_an_error_result_is_not_indexed(
    s3: S3Client, index: Vectors, put: Callable[..., str]
) -> None:
    put("photos/bad.jpg", data=b"not an image at all")
    app.lambda_handler(stamp(created("photos/bad.jpg"), s3), None)
    assert read_sidecar(s3, "photos/bad.jpg").status == "error"
    assert index.stored() == {}


def test_three_deliveries_of_one_batch_index_each_image_once(
    s3: S3Client, index: Vectors, put: Callable[..., str]
) -> None:
    # GIVEN an SQS batch announcing two images
    put("photos/a.jpg", "coffee")
    put("photos/b.jpg", "rocket")
    batch_event = in_sqs(stamp(created("photos/a.jpg"), s3))
    second = in_sqs(stamp(created("photos/b.jpg"), s3))["Records"][0]
    batch_event["Records"].append({**second, "messageId": "second-message"})
    # WHEN it is delivered three times (at-least-once delivery)
    responses = [app.lambda_handler(batch_event, None) for _ in range(3)]
    # THEN no delivery fails, each image has one vector, the sidecars were written once
    assert responses == [{"batchItemFailures": []}] * 3
    assert sorted(index.stored()) == ["photos/a.jpg", "photos/b.jpg"]
    assert read_sidecar(s3, "photos/a.jpg").created_at  # written by the first delivery
    stored = index.stored()
    for key in ("photos/a.jpg", "photos/b.jpg"):
        embedding = read_sidecar(s3, key).embedding
        assert embedding is not None
        assert np.allclose(stored[key][0], embedding.embedding, atol=1e-6)


def test_a_put_that_fails_once_is_retried_and_the_retry_indexes(
    s3: S3Client, index: Vectors, put: Callable[..., str]
) -> None:
    # GIVEN S3 Vectors throttles the next PutVectors
    put("photos/a.jpg")
    event = in_sqs(stamp(created("photos/a.jpg"), s3))
    inject("PutVectors", 1)
    # WHEN the message is delivered
    first = app.lambda_handler(event, None)
    # THEN the sidecar is written but the message is handed back for a retry
    message_id = event["Records"][0]["messageId"]
    assert first == {"batchItemFailures": [{"itemIdentifier": message_id}]}
    sidecar_etag = s3.head_object(Bucket=BUCKET, Key="photos/a.jpg" + SUFFIX)["ETag"]
    assert index.stored() == {}
    # WHEN SQS delivers it again
    second = app.lambda_handler(event, None)
    # THEN the vector is put although the sidecar is current (and not rewritten)
    assert second == {"batchItemFailures": []}
    assert list(index.stored()) == ["photos/a.jpg"]
    assert s3.head_object(Bucket=BUCKET, Key="photos/a.jpg" + SUFFIX)["ETag"] == sidecar_etag


def test_batch_operations_report_a_failed_put_as_temporary(
    s3: S3Client, index: Vectors, put: Callable[..., str]
) -> None:
    # GIVEN a Batch Operations task and a PutVectors that fails once
    put(V1_KEY)
    event = batch("s3_batch_v1.json")
    inject("PutVectors", 1)
    # WHEN the task runs, then runs again (S3 retries TemporaryFailure)
    first = app.lambda_handler(event, None)
    second = app.lambda_handler(event, None)
    # THEN the first is a TemporaryFailure, the retry succeeds and indexes
    assert without_strings(first)["results"][0]["resultCode"] == "TemporaryFailure"
    assert "cannot index" in first["results"][0]["resultString"]
    assert without_strings(second)["results"][0]["resultCode"] == "Succeeded"
    assert list(index.stored()) == [V1_KEY]


def test_deleting_an_image_deletes_its_vector_and_reads_it_back(
    s3: S3Client, index: Vectors, put: Callable[..., str]
) -> None:
    put("photos/a.jpg", "coffee")
    put("photos/b.jpg", "rocket")
    for key in ("photos/a.jpg", "photos/b.jpg"):
        app.lambda_handler(stamp(created(key), s3), None)
    s3.delete_object(Bucket=BUCKET, Key="photos/a.jpg")
    CALLS.clear()
    response = app.lambda_handler(deleted("photos/a.jpg"), None)
    assert response["deleted"] == 1
    assert list(index.stored()) == ["photos/b.jpg"]
    assert CALLS["DeleteVectors"] == 1 and CALLS["GetVectors"] == 1  # the read-back


def test_a_failed_vector_delete_is_retried_and_the_retry_deletes(
    s3: S3Client, index: Vectors, put: Callable[..., str]
) -> None:
    put("photos/a.jpg")
    app.lambda_handler(stamp(created("photos/a.jpg"), s3), None)
    s3.delete_object(Bucket=BUCKET, Key="photos/a.jpg")
    event = in_sqs(deleted("photos/a.jpg"))
    inject("DeleteVectors", 1)
    first = app.lambda_handler(event, None)
    assert first["batchItemFailures"]  # the sidecar went, the vector did not: retried
    second = app.lambda_handler(event, None)
    assert second == {"batchItemFailures": []}
    assert index.stored() == {}


def test_a_delete_racing_a_reupload_leaves_the_new_vector(
    s3: S3Client,
    index: Vectors,
    put: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN an indexed image, deleted
    put("photos/a.jpg", "coffee")
    app.lambda_handler(stamp(created("photos/a.jpg"), s3), None)
    s3.delete_object(Bucket=BUCKET, Key="photos/a.jpg")
    # AND a re-upload that lands (and is embedded and indexed) just as the delete event's
    # handler, having found the image gone, deletes the vector
    indexer = app.runtime().indexer
    assert indexer is not None
    real_delete = indexer.index.delete

    def delete_during_reupload(keys: list[str]) -> None:
        new_etag = put("photos/a.jpg", "rocket")
        app.lambda_handler(stamp(created("photos/a.jpg"), s3), None)
        assert index.stored()["photos/a.jpg"][1]["etag"] == new_etag
        real_delete(keys)

    monkeypatch.setattr(indexer.index, "delete", delete_during_reupload)
    # WHEN the delete event is handled
    app.lambda_handler(deleted("photos/a.jpg"), None)
    # THEN the re-uploaded image keeps its sidecar and its vector (put back)
    new = read_sidecar(s3, "photos/a.jpg")
    assert new.source.etag == s3.head_object(Bucket=BUCKET, Key="photos/a.jpg")["ETag"]
    stored = index.stored()
    assert stored["photos/a.jpg"][1]["etag"] == new.source.etag
    assert new.embedding is not None
    assert np.allclose(stored["photos/a.jpg"][0], new.embedding.embedding, atol=1e-6)


def test_an_index_for_another_recipe_is_refused_with_one_line_and_a_metric(
    s3: S3Client,
    index: Vectors,
    put: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN the function configured with the index of the real DINOv2 ViT-S/14 recipe
    index.create_index("dinov2-vits14-4df36ef0-crop-l2", dim=32)
    monkeypatch.setenv(
        "DINOEMBED_VECTOR_INDEX", f"s3vectors://{index.bucket}/dinov2-vits14-4df36ef0-crop-l2"
    )
    app.reset()
    put("photos/a.jpg")
    put("photos/b.jpg", "rocket")
    # WHEN it embeds two images in two invocations
    app.lambda_handler(stamp(created("photos/a.jpg"), s3), None)
    app.lambda_handler(stamp(created("photos/b.jpg"), s3), None)
    # THEN the sidecars are written, nothing is put, and one line names the needed index
    assert read_sidecar(s3, "photos/b.jpg").status == "success"
    assert CALLS["PutVectors"] == 0 and CALLS["QueryVectors"] == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    refusals = [x for x in lines if "refusing to write" in str(x.get("message", ""))]
    assert len(refusals) == 1 and refusals[0]["level"] == "ERROR"
    assert index.index in refusals[0]["message"]  # the index its recipe needs
    # AND every invocation publishes the metric
    assert [x["IndexRecipeMismatch"] for x in lines if "_aws" in x] == [[1.0], [1.0]]
