"""The HTTP API through its Lambda entry, with Function URL events (the IAM-signed shape of
Powertools' sample ``lambdaFunctionUrlEvent.json``; fixture in infra/events).

The same app as ``dinoembed serve``: embed, the seed's job route, search against an index
(an in-memory fake with the S3 Vectors index's shape), 413 with the upload hint for a body
over the Function URL's 6 MB, 404/405, and requests in flight at once.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dinoembed.api import Embedder
from dinoembed.collections.index import Hit
from dinoembed.handler import http
from dinoembed.settings import Settings
from dinoembed.web.backends import IndexBackend, SearchBackend
from tests.helpers import encode
from tests.test_lambda_support import load_event


class FakeIndex:
    """In-memory stand-in for ``dinoembed.collections.index.VectorIndex`` (exact cosine)."""

    def __init__(self, vectors: dict[str, list[float]], neighbours: dict[str, list[Hit]]):
        self.vectors = vectors
        self.neighbours = neighbours
        self.asked: list[int] = []

    @property
    def name(self) -> str:
        return "s3vectors://vectors-bucket/dinov2-test"

    def query(self, vector: Sequence[float], *, top_k: int, prefix: str = "") -> list[Hit]:
        self.asked.append(top_k)
        q = np.asarray(vector) / np.linalg.norm(vector)
        scored = [
            Hit(k, float(np.dot(q, np.asarray(v) / np.linalg.norm(v))))
            for k, v in self.vectors.items()
            if k.startswith(prefix)
        ]
        return sorted(scored, key=lambda h: -h.score)[:top_k]

    def vector_of(self, key: str) -> list[float] | None:
        return self.vectors.get(key)

    def neighbours_of(self, key: str) -> list[Hit] | None:
        return self.neighbours.get(key) if key in self.vectors else None


def request(
    method: str,
    path: str,
    body: bytes = b"",
    content_type: str | None = None,
    query: str = "",
) -> dict[str, Any]:
    """A Function URL event for one request (body base64-encoded, as for binary bodies)."""
    event = copy.deepcopy(load_event("function_url_get_health.json"))
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["requestContext"]["http"]["method"] = method
    event["rawQueryString"] = query
    if body:
        event["body"] = base64.b64encode(body).decode()
        event["isBase64Encoded"] = True
        event["headers"]["content-length"] = str(len(body))
    if content_type:
        event["headers"]["content-type"] = content_type
    return event


def answer_json(response: dict[str, Any]) -> Any:
    body = response["body"]
    if response.get("isBase64Encoded"):
        body = base64.b64decode(body)
    return json.loads(body)


@pytest.fixture
def index() -> FakeIndex:
    rng = np.random.default_rng(3)
    vectors = {f"photos/{i}.jpg": rng.standard_normal(8).tolist() for i in range(6)}
    vectors["photos/copy-of-0.jpg"] = list(vectors["photos/0.jpg"])
    neighbours = {"photos/0.jpg": [Hit("photos/copy-of-0.jpg", 1.0)]}
    return FakeIndex(vectors, neighbours)


@pytest.fixture
def handler(tiny_settings: Settings, index: FakeIndex) -> Any:
    def open_backend(settings: Settings, client: Any) -> SearchBackend:
        return IndexBackend(index, lambda key, limit: b"")

    return http.build_handler(tiny_settings, client=None, open_backend=open_backend)


def test_embed_through_the_function_url(
    handler: Any, photos: dict[str, Image.Image], tiny_settings: Settings
) -> None:
    # GIVEN an image posted raw through the Function URL
    data = encode(photos["chelsea"], "JPEG")
    response = handler(request("POST", "/embed", data, "image/jpeg"), None)
    # THEN the result document equals the Python API's
    expected = Embedder(tiny_settings.model_path).embed([data])[0]
    doc = answer_json(response)
    assert response["statusCode"] == 200
    assert expected.embedding is not None
    assert doc["embedding"]["embedding"] == expected.embedding.embedding


def test_seed_job_route_through_the_function_url(
    handler: Any, photos: dict[str, Image.Image]
) -> None:
    # GIVEN the seed's multipart form, encoded as a client would send it
    import httpx

    form = httpx.Request(
        "POST",
        "https://x/jobs/dino_embedding",
        files={"file": ("cat.jpg", encode(photos["chelsea"], "JPEG"), "image/jpeg")},
        data={"normalize": "true", "priority": "5"},
    )
    body = form.read()
    event = request("POST", "/jobs/dino_embedding", body, form.headers["content-type"])
    # WHEN it goes through the Lambda entry
    job = answer_json(handler(event, None))
    # THEN the finished job comes back, its vector of unit length
    assert job["status"] == "ok" and job["task_output"]["files"][0]["status"] == "success"
    vector = job["task_output"]["files"][0]["embedding"]["embedding"]
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_search_and_duplicates_ask_the_index(handler: Any, index: FakeIndex) -> None:
    # WHEN searching by key and asking for its duplicates
    body = json.dumps({"key": "photos/0.jpg"}).encode()
    found = answer_json(
        handler(request("POST", "/search", body, "application/json", "top_k=3"), None)
    )
    dupes = answer_json(handler(request("GET", "/duplicates", query="key=photos/0.jpg"), None))
    # THEN the results are the index's cosine ranking without the key itself
    q = np.asarray(index.vectors["photos/0.jpg"])
    ranked = sorted(
        (k for k in index.vectors if k != "photos/0.jpg"),
        key=lambda k: -float(np.dot(q, index.vectors[k]) / np.linalg.norm(index.vectors[k])),
    )
    assert [r["key"] for r in found["results"]] == ranked[:3]
    assert found["collection"] == index.name and index.asked == [4]
    assert dupes["neighbours"] == [{"key": "photos/copy-of-0.jpg", "score": 1.0}]


def test_top_k_over_the_service_limit_is_400(handler: Any, index: FakeIndex) -> None:
    body = json.dumps({"key": "photos/0.jpg"}).encode()
    response = handler(request("POST", "/search", body, "application/json", "top_k=101"), None)
    assert response["statusCode"] == 400 and "top_k" in answer_json(response)["error"]
    assert index.asked == []


def test_over_six_megabytes_is_413_with_the_upload_hint(handler: Any) -> None:
    big = b"\xff\xd8" + b"\0" * (6 * 1024 * 1024)
    response = handler(request("POST", "/embed", big, "image/jpeg"), None)
    assert response["statusCode"] == 413
    error = answer_json(response)["error"]
    assert "6 MB" in error and "upload the image to the bucket" in error


@pytest.mark.parametrize(
    ("method", "path", "status"), [("GET", "/nope", 404), ("PUT", "/embed", 405)]
)
def test_unknown_routes_and_methods(handler: Any, method: str, path: str, status: int) -> None:
    response = handler(request(method, path), None)
    assert response["statusCode"] == status and set(answer_json(response)) == {"error"}


def test_health_from_the_fixture_event_and_the_page(handler: Any) -> None:
    health = handler(load_event("function_url_get_health.json"), None)
    doc = answer_json(health)
    assert health["statusCode"] == 200 and doc["index"].startswith("s3vectors://")
    assert doc["model"]["loaded"] is False  # nothing has asked for an embedding yet
    page = handler(request("GET", "/"), None)
    assert page["statusCode"] == 200 and "text/html" in page["headers"]["content-type"]


def test_interleaved_requests_are_not_mixed_up(
    handler: Any, photos: dict[str, Image.Image], tiny_settings: Settings
) -> None:
    images = {n: encode(photos[n], "PNG") for n in photos}
    embedder = Embedder(tiny_settings.model_path)
    expected = {n: embedder.embed([b])[0].embedding for n, b in images.items()}

    def post(name: str) -> tuple[str, Any]:
        return name, answer_json(
            handler(request("POST", "/embed", images[name], "image/png"), None)
        )

    # Lambda gives an execution environment one request at a time (concurrency is more
    # environments; the in-process and served tests cover requests at once in one process)
    answers = [post(n) for _ in range(2) for n in images]
    for name, doc in answers:
        assert doc["embedding"]["embedding"] == expected[name].embedding  # type: ignore[union-attr]


def test_the_lambda_entry_builds_once_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tiny_model: Path, tmp_path: Path
) -> None:
    # GIVEN a cold execution environment configured as the template configures it
    monkeypatch.setenv("DINOEMBED_MODEL_PATH", str(tiny_model))
    monkeypatch.setenv("DINOEMBED_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    http.reset()
    try:
        # WHEN two requests arrive
        first = http.lambda_handler(load_event("function_url_get_health.json"), None)
        second = http.lambda_handler(request("POST", "/search", b"{}", "application/json"), None)
    finally:
        http.reset()
    # THEN health answers, and search says plainly that no index is wired
    assert first["statusCode"] == 200
    assert second["statusCode"] == 503 and "no collection" in answer_json(second)["error"]
