"""``dinoembed serve s3://bucket/prefix``: the app over an S3 prefix's sidecars (moto, then
SeaweedFS), searched by key, thumbnails read from the bucket."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from dinoembed.pipeline import ImageItem, build_pipeline
from dinoembed.settings import Settings
from tests.helpers import encode
from tests.s3_backends import S3Endpoint
from tests.serve_support import SUFFIX, app_over
from tests.test_lambda_support import BUCKET

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@pytest.fixture
def s3(s3_endpoint: S3Endpoint, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Client:
    monkeypatch.setenv("DINOEMBED_CACHE_DIR", str(tmp_path / "cache"))
    return s3_endpoint.client


def _loader(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def test_serve_over_an_s3_prefix(
    s3: S3Client, photos: dict[str, Image.Image], tiny_settings: Settings
) -> None:
    # GIVEN three photos and their sidecars under photos/, and one outside the prefix
    pipeline = build_pipeline(tiny_settings)
    vectors = {}
    for key, name in [
        ("photos/a.jpg", "coffee"),
        ("photos/b.jpg", "rocket"),
        ("photos/sub/c.jpg", "chelsea"),
        ("other/d.jpg", "astronaut"),
    ]:
        data = encode(photos[name], "JPEG")
        s3.put_object(Bucket=BUCKET, Key=key, Body=data)
        res = pipeline.embed_one(ImageItem(f"s3://{BUCKET}/{key}", _loader(data))).result
        s3.put_object(Bucket=BUCKET, Key=key + SUFFIX, Body=res.to_bytes())
        assert res.embedding is not None
        v = np.asarray(res.embedding.embedding)
        vectors[key] = v / np.linalg.norm(v)
    # WHEN the app serves the prefix and is asked by key
    with TestClient(app_over(tiny_settings, f"s3://{BUCKET}/photos/")) as client:
        found = client.post("/search", json={"key": "photos/a.jpg"}).json()
        thumb = client.get("/thumb", params={"key": "photos/b.jpg"})
        outside = client.get("/thumb", params={"key": "other/d.jpg"})
    # THEN the results are the prefix's other images by cosine, keyed by S3 key
    expected = sorted(
        ["photos/b.jpg", "photos/sub/c.jpg"],
        key=lambda k: -float(vectors[k] @ vectors["photos/a.jpg"]),
    )
    assert [r["key"] for r in found["results"]] == expected
    assert [r["path"] for r in found["results"]] == [f"s3://{BUCKET}/{k}" for k in expected]
    assert found["collection"] == f"s3://{BUCKET}/photos/"
    # ... thumbnails come from the bucket, and only for images of the collection
    assert thumb.status_code == 200
    assert Image.open(io.BytesIO(thumb.content)).size[0] == 192
    assert outside.status_code == 404
