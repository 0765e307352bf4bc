"""S3 prefixes on moto: collections and backfill past one listing page (> 1,000 objects)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import numpy as np
import pytest
from PIL import Image

from dinoembed.cli import main
from dinoembed.collections.collection import CollectionCache, load_collection
from dinoembed.handler.collection_s3 import QueueError, S3SidecarSource, notification, send_to_queue
from dinoembed.handler.events import ObjectRef, normalise
from dinoembed.handler.process import Processor
from dinoembed.handler.s3io import S3Objects
from dinoembed.model.store import sha256_file
from dinoembed.pipeline import Pipeline
from dinoembed.results.schema import EmbeddingResult, ModelInfo
from tests.helpers import encode
from tests.s3_backends import S3Endpoint
from tests.test_lambda_support import BUCKET, REGION
from tests.test_use_support import MODEL_A, MODEL_B, SUFFIX, result, unit_rows

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

PREFIX = "photos/"
MANY = 1_030  # more than one ListObjectsV2 page (1,000 keys)


@pytest.fixture
def s3(s3_endpoint: S3Endpoint, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Client:
    """The example bucket on moto, then on SeaweedFS (tests/s3_backends.py)."""
    monkeypatch.setenv("DINOEMBED_CACHE_DIR", str(tmp_path / "cache"))
    return s3_endpoint.client


def put_sidecar(client: S3Client, key: str, res: EmbeddingResult) -> str:
    return client.put_object(Bucket=BUCKET, Key=key + SUFFIX, Body=res.to_json().encode())["ETag"]


def put_vectors(client: S3Client, vectors: np.ndarray, model: ModelInfo = MODEL_A) -> list[str]:
    keys = []
    for i, vector in enumerate(vectors):
        key = f"{PREFIX}{i // 100:02d}/img-{i:05d}.jpg"
        put_sidecar(client, key, result(f"s3://{BUCKET}/{key}", vector.tolist(), model, f'"e{i}"'))
        keys.append(key)
    return keys


def tiny_png(i: int) -> bytes:
    rng = np.random.default_rng(i)
    return encode(Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)), "PNG")


def test_s3_collection_reads_every_sidecar_then_only_changes(s3: S3Client, tmp_path: Path) -> None:
    # GIVEN more sidecars than one listing page, one error result and one stray object
    vectors = unit_rows(np.random.default_rng(1), MANY, 16)
    keys = put_vectors(s3, vectors)
    put_sidecar(s3, f"{PREFIX}bad.jpg", result(f"s3://{BUCKET}/{PREFIX}bad.jpg", None))
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}readme.txt", Body=b"hello")
    source = S3SidecarSource(s3, BUCKET, PREFIX, SUFFIX, workers=8)
    cache = CollectionCache.for_location(tmp_path / "cache", source.location, SUFFIX)
    # WHEN loading it (concurrent reads), then again after one sidecar changed
    collection, stats = load_collection(source, cache)
    assert (len(collection), stats.read, stats.skipped) == (MANY, MANY + 1, 1)
    order = np.argsort(keys)  # rows follow the sidecar keys
    np.testing.assert_allclose(collection.matrix, vectors[order], atol=1e-6)
    assert collection.rows[0].etag == '"e0"'
    changed = unit_rows(np.random.default_rng(2), 1, 16)[0]
    put_sidecar(s3, keys[5], result(f"s3://{BUCKET}/{keys[5]}", changed.tolist()))
    again, stats = load_collection(source, cache)
    # THEN the refresh read just that one, and sees the new vector
    assert (stats.read, stats.reused) == (1, MANY)
    row = {e.path: e.row for e in again.rows}[f"s3://{BUCKET}/{keys[5]}"]
    np.testing.assert_allclose(again.matrix[row], changed, atol=1e-6)


def test_dupes_and_similar_on_an_s3_prefix(
    s3: S3Client, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN sidecars on S3 where image 3 and image 7 are near-duplicates
    vectors = unit_rows(np.random.default_rng(3), 20, 384)
    vectors[7] = vectors[3] + 0.01 * np.random.default_rng(4).standard_normal(384)
    keys = put_vectors(s3, vectors)
    # WHEN / THEN dupes finds that pair
    assert main(["dupes", f"s3://{BUCKET}/{PREFIX}", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [g["paths"] for g in doc["groups"]] == [
        [f"s3://{BUCKET}/{keys[3]}", f"s3://{BUCKET}/{keys[7]}"]
    ]
    # AND similar with image 3's sidecar (an s3:// URI) ranks image 7 first
    query = f"s3://{BUCKET}/{keys[3]}{SUFFIX}"
    assert (
        main(["similar", query, "--in", f"s3://{BUCKET}/{PREFIX}", "--top-k", "3", "--json"]) == 0
    )
    results = json.loads(capsys.readouterr().out)["results"]
    assert results[0]["path"] == f"s3://{BUCKET}/{keys[7]}" and len(results) == 3
    assert results[0]["etag"] == '"e7"'


def test_mixed_models_on_s3_are_refused(s3: S3Client, capsys: pytest.CaptureFixture[str]) -> None:
    put_vectors(s3, unit_rows(np.random.default_rng(5), 3, 8), MODEL_A)
    put_sidecar(s3, f"{PREFIX}z.jpg", result(f"s3://{BUCKET}/{PREFIX}z.jpg", [1.0] * 8, MODEL_B))
    assert main(["dupes", f"s3://{BUCKET}/{PREFIX}"]) == 2
    err = capsys.readouterr().err
    assert "model-a" in err and "model-b" in err and f"{PREFIX}z.jpg{SUFFIX}" in err


class Bucket:
    """A prefix with images in every state a backfill must tell apart."""

    def __init__(self, client: S3Client, model: ModelInfo, images: int) -> None:
        self.client = client
        self.current: dict[str, str] = {}  # key -> ETag of its (current) sidecar
        self.todo: set[str] = set()
        for i in range(images):
            key = (
                f"{PREFIX}{i % 3}/img {i}+x.png" if i % 50 == 0 else f"{PREFIX}{i % 3}/img-{i}.png"
            )
            etag = client.put_object(Bucket=BUCKET, Key=key, Body=tiny_png(i))["ETag"]
            uri = f"s3://{BUCKET}/{key}"
            if i < 5:  # no sidecar
                self.todo.add(key)
                continue
            if i < 8:  # a sidecar for an older version of the image
                put_sidecar(client, key, result(uri, [1.0] * 4, model, '"older"'))
                self.todo.add(key)
            elif i < 10:  # a sidecar made by another model
                put_sidecar(client, key, result(uri, [1.0] * 4, MODEL_B, etag))
                self.todo.add(key)
            else:
                self.current[key] = put_sidecar(client, key, result(uri, [1.0] * 4, model, etag))
        client.put_object(Bucket=BUCKET, Key=f"{PREFIX}notes.txt", Body=b"not an image")

    def sidecar(self, key: str) -> EmbeddingResult:
        body = self.client.get_object(Bucket=BUCKET, Key=key + SUFFIX)["Body"].read()
        return EmbeddingResult.model_validate_json(body)

    def untouched(self) -> bool:
        return all(
            self.client.head_object(Bucket=BUCKET, Key=key + SUFFIX)["ETag"] == etag
            for key, etag in self.current.items()
        )


def test_backfill_embeds_only_images_without_a_current_sidecar(
    s3: S3Client, embedder: Pipeline, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN 515 images, 10 of them without an up-to-date sidecar: with their sidecars and
    # a text file, 1,021 objects (two listing pages)
    bucket = Bucket(s3, embedder.model, images=515)
    # WHEN backfilling the prefix locally
    code = main(["backfill", f"s3://{BUCKET}/{PREFIX}", "--model", str(tiny_model)])
    summary = json.loads(capsys.readouterr().out)
    # THEN exactly those 10 were embedded, with sidecars for their current version
    assert code == 0
    assert summary | {"location": None} == {
        "location": None, "images": 515, "current": 505, "todo": 10,
        "embedded": 10, "errors": 0, "skipped": 0, "failed": 0, "queued": 0,
    }  # fmt: skip
    for key in bucket.todo:
        sidecar = bucket.sidecar(key)
        etag = s3.head_object(Bucket=BUCKET, Key=key)["ETag"]
        assert sidecar.ok and sidecar.source.etag == etag and sidecar.model == embedder.model
        assert sidecar.file_path == f"s3://{BUCKET}/{key}"
    assert bucket.untouched()
    # AND a second run finds nothing to do
    assert main(["backfill", f"s3://{BUCKET}/{PREFIX}", "--model", str(tiny_model)]) == 0
    assert json.loads(capsys.readouterr().out)["todo"] == 0


@pytest.fixture
def queue(s3: S3Client) -> str:
    sqs = boto3.client("sqs", region_name=REGION)
    return str(sqs.create_queue(QueueName="dinoembed-backfill-test")["QueueUrl"])


def drain(queue_url: str) -> list[Any]:
    sqs = boto3.client("sqs", region_name=REGION)
    messages: list[Any] = []
    while batch := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages"):
        messages.extend(batch)
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)
            ],
        )
    return messages


@pytest.mark.moto_only("SQS: SeaweedFS has none")
def test_backfill_to_a_queue_sends_notifications_the_function_understands(
    s3: S3Client,
    queue: str,
    embedder: Pipeline,
    tiny_model: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN a prefix like the one above (smaller: paging is tested there), and the queue
    bucket = Bucket(s3, embedder.model, images=60)
    # WHEN backfilling through the queue (the model is only hashed, not loaded)
    code = main(
        ["backfill", f"s3://{BUCKET}/{PREFIX}", "--queue-url", queue, "--model", str(tiny_model)]
    )
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and (summary["todo"], summary["queued"], summary["embedded"]) == (10, 10, 0)
    # THEN the queue holds one S3 notification per image, keys encoded as S3 encodes them
    messages = drain(queue)
    assert len(messages) == 10
    event = {
        "Records": [
            {"eventSource": "aws:sqs", "messageId": m["MessageId"], "body": m["Body"]}
            for m in messages
        ]
    }
    invocation = normalise(event)
    assert invocation.bad_messages == []
    assert {ref.key for ref in invocation.refs} == bucket.todo
    assert sum(" " in ref.key and "+" in ref.key for ref in invocation.refs) == 1
    for ref in invocation.refs:
        assert ref.etag == s3.head_object(Bucket=BUCKET, Key=ref.key)["ETag"]
    # AND the function's processor turns them into current sidecars
    report = Processor(S3Objects(s3), lambda: embedder, SUFFIX).process(invocation.refs)
    assert report.tally.embedded == 10 and not report.failed
    assert bucket.untouched()
    assert (
        main(
            [
                "backfill",
                f"s3://{BUCKET}/{PREFIX}",
                "--queue-url",
                queue,
                "--model",
                str(tiny_model),
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["queued"] == 0


def test_notification_is_shaped_like_s3s() -> None:
    ref = ObjectRef("b", "a dir/red flower+1.jpg", size=12, etag='"abc"')
    body = notification(ref, "eu-west-1")
    record = body["Records"][0]
    assert record["eventSource"] == "aws:s3" and record["eventName"].startswith("ObjectCreated:")
    assert record["s3"]["object"] == {"key": "a+dir/red+flower%2B1.jpg", "size": 12, "eTag": "abc"}
    assert normalise(body).refs == [ObjectRef("b", "a dir/red flower+1.jpg", 12, '"abc"')]


def test_queue_mode_compares_with_the_model_files_digest(tiny_model: Path) -> None:
    from dinoembed.pipeline import expected_model
    from dinoembed.settings import Settings

    assert expected_model(Settings(model_path=tiny_model)) == (
        sha256_file(tiny_model),
        "center-crop",
    )
    assert expected_model(Settings(model_sha256="c" * 64, preprocess="squash")) == (
        "c" * 64,
        "squash",
    )


class RefusingQueue:
    """An SQS client whose send_message_batch refuses some keys for the first ``times`` tries
    (moto never refuses entries; this is the one failure it cannot produce)."""

    def __init__(self, refuse: set[str], times: int) -> None:
        self.refuse, self.times = refuse, times
        self.tries: dict[str, int] = {}
        self.batches: list[int] = []
        self.delivered: list[str] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:  # noqa: N803
        self.batches.append(len(Entries))
        failed = []
        for entry in Entries:
            key = normalise(json.loads(entry["MessageBody"])).refs[0].key
            self.tries[key] = self.tries.get(key, 0) + 1
            if key in self.refuse and self.tries[key] <= self.times:
                failed.append({"Id": entry["Id"], "Code": "InternalError", "SenderFault": False})
            else:
                self.delivered.append(key)
        return {"Successful": [], "Failed": failed}


def refs(count: int) -> list[ObjectRef]:
    return [ObjectRef(BUCKET, f"p/{i:02d}.jpg", size=1, etag=f'"{i}"') for i in range(count)]


def test_queue_sends_in_batches_of_ten_and_retries_refused_entries_once() -> None:
    queue = RefusingQueue({"p/03.jpg", "p/21.jpg"}, times=1)
    assert send_to_queue(queue, "url", refs(23), REGION) == 23
    assert queue.batches == [10, 1, 10, 3, 1]
    assert sorted(queue.delivered) == [r.key for r in refs(23)]


def test_entries_refused_twice_are_reported_after_the_rest_is_sent() -> None:
    queue = RefusingQueue({"p/12.jpg"}, times=2)
    with pytest.raises(QueueError, match=r"refused 1 message.*p/12\.jpg"):
        send_to_queue(queue, "url", refs(15), REGION)
    assert len(queue.delivered) == 14


def test_dupes_on_s3_measures_the_images_through_the_source(
    s3: S3Client, photos: dict[str, Image.Image], capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN on S3: a photo, a byte-identical copy and a half-size copy, whose sidecars
    # (as older ones) record neither sha256 nor pixel sizes
    chelsea = photos["chelsea"]
    full, half = encode(chelsea, "PNG"), encode(chelsea.resize((225, 150)), "PNG")
    base = np.random.default_rng(5).standard_normal(16)
    images = {"a.png": (full, base), "b.png": (full, base), "c.png": (half, base + 0.01)}
    for name, (data, vector) in images.items():
        key = f"{PREFIX}{name}"
        s3.put_object(Bucket=BUCKET, Key=key, Body=data)
        put_sidecar(s3, key, result(f"s3://{BUCKET}/{key}", vector.tolist()))
    # WHEN looking for duplicates
    assert main(["dupes", f"s3://{BUCKET}/{PREFIX}", "--threshold", "0.9", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    # THEN the copy is exact (hashed from the objects) and the keep has the most pixels
    uri = f"s3://{BUCKET}/{PREFIX}"
    assert [(g["kind"], g["paths"], g["keep"]) for g in doc["groups"]] == [
        ("exact", [f"{uri}a.png", f"{uri}b.png"], f"{uri}a.png"),
        ("similar", [f"{uri}a.png", f"{uri}c.png"], f"{uri}a.png"),
    ]
    assert doc["groups"][1]["keep_reason"] == "most pixels (451x300)"
    digest = __import__("hashlib").sha256(full).hexdigest()
    assert {i["sha256"] for i in doc["groups"][0]["images"]} == {digest}


def test_backfill_with_a_bad_image_exits_1(
    s3: S3Client, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a prefix holding one object that is not an image
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}bad.jpg", Body=b"not a jpeg")
    # WHEN backfilling it
    code = main(["backfill", f"s3://{BUCKET}/{PREFIX}", "--model", str(tiny_model)])
    # THEN its error sidecar is written, and the exit status says an image failed
    summary = json.loads(capsys.readouterr().out)
    assert (summary["embedded"], summary["errors"], summary["failed"]) == (0, 1, 0)
    assert code == 1
    body = s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}bad.jpg{SUFFIX}")["Body"].read()
    assert EmbeddingResult.model_validate_json(body).status == "error"
