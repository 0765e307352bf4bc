"""The HTTP API over a bucket's vector index, as each host wires it: the Function URL
function (``handler.http.index_backend``: ``DINOEMBED_VECTOR_INDEX`` +
``DINOEMBED_SERVE_LOCATION``) and ``dinoembed serve s3://…`` (``cli.serve``). S3: moto
in-process; S3 Vectors: the moto server with QueryVectors (tests/vectors_server.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from dinoembed.cli.commands import main
from dinoembed.cli.serve import build_app
from dinoembed.errors import ConfigError
from dinoembed.handler import http
from dinoembed.settings import Settings
from tests.test_index_cli import INDEX, collection
from tests.test_lambda_support import BUCKET, mocked_s3
from tests.test_serve_lambda import answer_json, request
from tests.vectors_server import Vectors, VectorsServer, open_vectors

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Client]:
    with mocked_s3(monkeypatch) as client:
        yield client


@pytest.fixture
def index(
    s3: S3Client, vectors_server: VectorsServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Vectors]:
    yield from open_vectors(vectors_server, monkeypatch, INDEX)


@pytest.fixture
def synced(s3: S3Client, index: Vectors, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """A bucket of images with sidecars, its index filled by ``index sync``."""
    vecs = collection(s3)
    assert main(["index", "sync", f"s3://{BUCKET}/", "--index", index.uri]) == 0
    capsys.readouterr()
    return vecs


def post_json(handler: Any, path: str, doc: dict[str, Any]) -> tuple[int, Any]:
    response = handler(request("POST", path, json.dumps(doc).encode(), "application/json"), None)
    return response["statusCode"], answer_json(response)


def test_the_function_url_searches_the_buckets_index(
    s3: S3Client, index: Vectors, synced: dict[str, list[float]], tmp_path: Any
) -> None:
    # GIVEN the search function configured as the template configures it
    settings = Settings(
        vector_index=index.uri, serve_location=f"s3://{BUCKET}/", cache_dir=tmp_path
    )
    handler: Any = http.build_handler(settings, s3)  # the default opener: the index
    # WHEN an image of the bucket is searched by its key
    status, doc = post_json(handler, "/search", {"key": "photos/img00.jpg"})
    # THEN the answer is the index's: the nearest images by cosine (numpy on the same
    # vectors; identical vectors may come in either order), the image itself left out
    assert status == 200, doc
    query = np.array(synced["photos/img00.jpg"])
    cosine = {k: float(np.dot(query, v)) for k, v in synced.items() if k != "photos/img00.jpg"}
    expected = sorted(cosine.values(), reverse=True)[: len(doc["results"])]
    assert len(doc["results"]) == 10
    assert [r["score"] for r in doc["results"]] == pytest.approx(expected, abs=1e-5)
    for r in doc["results"]:
        assert r["score"] == pytest.approx(cosine[r["key"]], abs=1e-5)
    # AND the recorded neighbours answer /duplicates (sync records none without --neighbours)
    dupes = answer_json(handler(request("GET", "/duplicates", query="key=photos/img00.jpg"), None))
    assert dupes["key"] == "photos/img00.jpg" and isinstance(dupes["neighbours"], list)


def test_the_function_url_refuses_an_index_of_another_recipe(
    s3: S3Client, index: Vectors, synced: dict[str, list[float]], tmp_path: Any
) -> None:
    # GIVEN a search function whose model is not the one the index was made for
    settings = Settings(
        vector_index=index.uri,
        serve_location=f"s3://{BUCKET}/",
        model_sha256="c" * 64,
        cache_dir=tmp_path,
    )
    handler: Any = http.build_handler(settings, s3)
    # WHEN it is asked to search THEN it answers 503 instead of mixing two models' vectors
    status, doc = post_json(handler, "/search", {"key": "photos/img00.jpg"})
    assert status == 503 and "\n" not in doc["error"]


def test_serve_refuses_an_index_of_another_recipe(
    s3: S3Client, index: Vectors, synced: dict[str, list[float]], tiny_settings: Settings
) -> None:
    # GIVEN `dinoembed serve s3://…` with the index configured and the tiny model loaded
    settings = tiny_settings.model_copy(update={"vector_index": index.uri})
    # WHEN the app is built THEN it stops with one line naming the index this model needs
    with pytest.raises(ConfigError, match=r"needs the index [a-z0-9-]+") as err:
        build_app(settings, f"s3://{BUCKET}/photos/")
    assert INDEX in str(err.value) and "\n" not in str(err.value)
