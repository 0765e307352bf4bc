"""The model on a cold start: fetched from ``s3://`` once per execution environment, verified."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import pytest
from PIL import Image

from dinoembed.errors import TransientError
from dinoembed.handler import app
from tests.helpers import encode
from tests.test_lambda_support import (
    BUCKET,
    SUFFIX,
    cold_lambda,
    load_event,
    mocked_s3,
    sidecar_keys,
    stamp,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MODEL_BUCKET = "dinoembed-models-example"
MODEL_KEY = "models/tiny model.onnx"


@pytest.fixture
def s3(
    monkeypatch: pytest.MonkeyPatch, tiny_model: Path, photos: dict[str, Image.Image]
) -> Iterator[S3Client]:
    with mocked_s3(monkeypatch) as client:
        client.create_bucket(Bucket=MODEL_BUCKET)
        client.put_object(Bucket=MODEL_BUCKET, Key=MODEL_KEY, Body=tiny_model.read_bytes())
        for key, name in (("photos/red flower.jpg", "coffee"), ("photos/cat.jpg", "astronaut")):
            client.put_object(Bucket=BUCKET, Key=key, Body=encode(photos[name], "JPEG"))
        yield client


def model_downloads() -> list[str]:
    """Requests for the model object made by the function's own S3 client."""
    hits: list[str] = []

    def hook(request: Any, **_: Any) -> None:
        if unquote(urlsplit(request.url).path).endswith("/" + MODEL_KEY):
            hits.append(request.method)

    app.runtime().s3_client.meta.events.register_first("before-send.s3.GetObject", hook)
    return hits


def test_model_is_fetched_from_s3_once_per_execution_environment(
    monkeypatch: pytest.MonkeyPatch, s3: S3Client, tiny_model: Path, tmp_path: Path
) -> None:
    # GIVEN a function configured with an s3:// model URL and its sha256, and an empty /tmp
    sha = hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    cache = tmp_path / "tmp-dinoembed"
    url = f"s3://{MODEL_BUCKET}/{MODEL_KEY}"
    with cold_lambda(monkeypatch, cache, model_url=url, model_sha256=sha):
        downloads = model_downloads()
        # WHEN two invocations run in the same execution environment
        app.lambda_handler(stamp(load_event("s3_put.json"), s3), None)
        app.lambda_handler(stamp(load_event("sqs_batch.json"), s3), None)
        loads = app.runtime().model_loads
    # THEN the model was downloaded and loaded exactly once, into the cache, verified
    assert downloads == ["GET"]
    assert loads == 1
    assert (cache / "models" / f"{sha}.onnx").read_bytes() == tiny_model.read_bytes()
    assert sidecar_keys(s3) == [f"photos/cat.jpg{SUFFIX}", f"photos/red flower.jpg{SUFFIX}"]
    # AND a new execution environment sharing that /tmp reuses the cached file
    with cold_lambda(monkeypatch, cache, model_url=url, model_sha256=sha):
        downloads = model_downloads()
        app.runtime().embedder()
    assert downloads == []


def test_wrong_sha256_fails_cleanly_and_is_retried(
    monkeypatch: pytest.MonkeyPatch, s3: S3Client, tmp_path: Path
) -> None:
    # GIVEN a model URL whose bytes do not match the configured sha256
    cache = tmp_path / "tmp-dinoembed"
    url = f"s3://{MODEL_BUCKET}/{MODEL_KEY}"
    with cold_lambda(monkeypatch, cache, model_url=url, model_sha256="0" * 64):
        # WHEN a direct invocation arrives THEN it raises, naming the mismatch
        with pytest.raises(TransientError, match="sha256"):
            app.lambda_handler(stamp(load_event("s3_put.json"), s3), None)
        # AND an SQS batch hands back every message that named an image
        response = app.lambda_handler(stamp(load_event("sqs_batch.json"), s3), None)
        loads = app.runtime().model_loads
    assert sorted(f["itemIdentifier"] for f in response["batchItemFailures"]) == sorted(
        [
            "059f36b4-87a3-44ab-83d2-661975830a7d",
            "2e1424d4-f796-459a-8184-9c92662be6da",
            "a8f3c1d2-0b9e-4f6a-9c7d-3e2b1a0f9e8d",
            "c0ffee00-1111-4222-8333-944455556666",
        ]
    )
    # AND nothing was written, and nothing unverified was left in the cache
    assert loads == 0
    assert sidecar_keys(s3) == []
    leftovers = [p.name for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert leftovers == []


def test_missing_model_object_is_transient(
    monkeypatch: pytest.MonkeyPatch, s3: S3Client, tmp_path: Path
) -> None:
    url = f"s3://{MODEL_BUCKET}/models/absent.onnx"
    with (
        cold_lambda(monkeypatch, tmp_path, model_url=url, model_sha256="1" * 64),
        pytest.raises(TransientError, match=r"absent\.onnx"),
    ):
        app.lambda_handler(stamp(load_event("s3_put.json"), s3), None)
