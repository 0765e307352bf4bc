"""The HTTP API (SPEC section 11), in-process: every route, its errors and its limits.

The app is built as ``dinoembed serve`` builds it, over a folder embedded by the tiny
stand-in model; answers are checked against the sidecars' own vectors and the Python
API's output, computed independently of the app.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from dinoembed.api import Embedder
from dinoembed.settings import Settings
from tests.helpers import encode
from tests.serve_support import app_over, make_collection, result_of, sidecar_vectors

TOKEN = "s3cret-token"


@pytest.fixture
def folder(tmp_path: Path, photos: dict[str, Image.Image], tiny_settings: Settings) -> Path:
    return make_collection(tmp_path / "photos", photos, tiny_settings)


@pytest.fixture
def client(folder: Path, tiny_settings: Settings) -> Iterator[TestClient]:
    with TestClient(app_over(tiny_settings, folder)) as c:
        yield c


def jpeg(photos: dict[str, Image.Image], name: str = "coffee") -> bytes:
    return encode(photos[name], "JPEG", quality=90)


# --- POST /embed ---------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [True, False])
def test_embed_raw_body_equals_the_python_api(
    client: TestClient, photos: dict[str, Image.Image], tiny_settings: Settings, normalize: bool
) -> None:
    # GIVEN an image's bytes and the Python API's result for the same bytes
    data = jpeg(photos)
    expected = Embedder(tiny_settings.model_path, normalize=normalize).embed([data])[0]
    # WHEN posting them raw
    query = "" if normalize else "?normalize=false"
    response = client.post(f"/embed{query}", content=data, headers={"content-type": "image/jpeg"})
    # THEN the answer is the same result document, vector for vector
    assert response.status_code == 200
    got = result_of(response.json())
    assert got.status == "success" and got.embedding is not None and expected.embedding
    assert got.embedding.normalized is normalize
    assert got.embedding.embedding == expected.embedding.embedding
    assert got.model == expected.model and got.source.sha256 == expected.source.sha256


def test_embed_multipart_file_honours_normalize(
    client: TestClient, photos: dict[str, Image.Image]
) -> None:
    # GIVEN the seed's form with normalize=false
    files = {"file": ("cat.jpg", jpeg(photos), "image/jpeg")}
    # WHEN posting it
    response = client.post("/embed", files=files, data={"normalize": "false"})
    # THEN the raw vector comes back, named after the uploaded file
    doc = response.json()
    assert response.status_code == 200 and doc["file_path"] == "cat.jpg"
    assert doc["embedding"]["normalized"] is False
    assert abs(np.linalg.norm(doc["embedding"]["embedding"]) - 1.0) > 1e-3


@pytest.mark.parametrize(
    ("body", "content_type", "status", "says"),
    [
        (b"this is not an image", "image/jpeg", 422, "not an image"),
        (b"", "image/png", 400, "empty body"),
        (b'{"a": 1}', "application/json", 400, "Content-Type application/json"),
        (b"--x\r\nbroken", "multipart/form-data; boundary=x", 400, ""),
    ],
)
def test_embed_bad_bodies_get_one_line_errors(
    client: TestClient, body: bytes, content_type: str, status: int, says: str
) -> None:
    # WHEN posting something that is not an image
    response = client.post("/embed", content=body, headers={"content-type": content_type})
    # THEN the status says what kind of failure, and the body has a one-line error
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert says in error and "\n" not in error and error
    if status == 422:  # the error result itself (SPEC section 4)
        assert response.json()["status"] == "error"


def test_embed_form_without_file_is_400(client: TestClient) -> None:
    response = client.post("/embed", data={"normalize": "true"}, files={"other": ("x", b"1")})
    assert response.status_code == 400 and "'file'" in response.json()["error"]


def test_embed_bad_normalize_is_400(client: TestClient, photos: dict[str, Image.Image]) -> None:
    files = {"file": ("a.jpg", jpeg(photos), "image/jpeg")}
    response = client.post("/embed", files=files, data={"normalize": "maybe"})
    assert response.status_code == 400 and "normalize" in response.json()["error"]


# --- limits, routes, methods ---------------------------------------------------------------


def test_a_body_over_the_limit_is_refused_before_it_is_read(
    folder: Path, tiny_settings: Settings
) -> None:
    # GIVEN a server whose images may be at most 1000 bytes
    app = app_over(tiny_settings.model_copy(update={"max_bytes": 1000}), folder)
    with TestClient(app) as c:
        # WHEN a body declares more than the limit (plus the form allowance)
        big = b"x" * (1000 + 64 * 1024 + 1)

        def chunks() -> object:
            for start in range(0, len(big), 4096):
                yield big[start : start + 4096]

        declared = c.post(
            "/embed",
            content=big,
            headers={"content-type": "image/jpeg", "content-length": str(len(big))},
        )
        streamed = c.post("/embed", content=chunks(), headers={"content-type": "image/jpeg"})
    # THEN both get 413 with a one-line error (the streamed one has no Content-Length)
    for response in (declared, streamed):
        assert response.status_code == 413
        assert "too large" in response.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nowhere", 404), ("GET", "/embed", 405), ("DELETE", "/search", 405)],
)
def test_unknown_routes_and_wrong_methods(
    client: TestClient, method: str, path: str, status: int
) -> None:
    response = client.request(method, path)
    assert response.status_code == status
    assert set(response.json()) == {"error"}


def test_health_says_version_model_and_index(client: TestClient, folder: Path) -> None:
    doc = client.get("/health").json()
    assert doc["model"]["loaded"] is True and len(doc["model"]["sha256"]) == 64
    assert doc["model"]["name"] == "standin:tiny"
    assert doc["index"] == str(folder) and doc["version"]


# --- the seed's job routes ----------------------------------------------------------------


def test_job_is_done_at_once_and_can_be_read_again(
    client: TestClient, photos: dict[str, Image.Image], tiny_settings: Settings
) -> None:
    # GIVEN the seed's form
    files = {"file": ("cat.jpg", jpeg(photos), "image/jpeg")}
    # WHEN posting it to the seed's route
    job = client.post(
        "/jobs/dino_embedding", files=files, data={"normalize": "true", "priority": "5"}
    ).json()
    # THEN the job is finished, its output the seed's shape, its vector the Python API's
    expected = Embedder(tiny_settings.model_path).embed([jpeg(photos)])[0].embedding
    assert job["status"] == "ok" and job["task_type"] == "dino_embedding"
    output = job["task_output"]
    assert output["total_files"] == 1 and output["normalize"] is True
    first = output["files"][0]
    assert first["status"] == "success" and first["error"] is None
    assert expected is not None and first["embedding"]["embedding"] == expected.embedding
    assert first["embedding"]["embedding_dim"] == len(expected.embedding)
    # ... and GET /jobs/{id} returns it again; an unknown id is a plain 404
    assert client.get(f"/jobs/{job['job_id']}").json() == job
    gone = client.get("/jobs/no-such-job")
    assert gone.status_code == 404 and "not held" in gone.json()["error"]


def test_job_priority_out_of_range_is_400(
    client: TestClient, photos: dict[str, Image.Image]
) -> None:
    files = {"file": ("cat.jpg", jpeg(photos), "image/jpeg")}
    response = client.post("/jobs/dino_embedding", files=files, data={"priority": "11"})
    assert response.status_code == 400 and "priority" in response.json()["error"]


def test_jobs_are_bounded() -> None:
    from dinoembed.web.jobs import JobStore

    # GIVEN room for two jobs WHEN three arrive THEN the oldest is forgotten
    store = JobStore(2)
    for n in range(3):
        store.put({"job_id": str(n)})
    assert store.get("0") is None and store.get("1") and store.get("2")


# --- POST /search, GET /duplicates, GET /thumb ----------------------------------------------


def test_search_by_image_ranks_by_cosine(
    client: TestClient, folder: Path, photos: dict[str, Image.Image]
) -> None:
    # GIVEN the collection's vectors, read from its sidecars
    vectors = sidecar_vectors(folder)
    # WHEN searching with the bytes of coffee.jpg
    data = (folder / "coffee.jpg").read_bytes()
    response = client.post("/search?top_k=3", content=data, headers={"content-type": "image/jpeg"})
    # THEN the answer is the top 3 by cosine to coffee's vector, coffee itself first at 1.0
    doc = response.json()
    q = vectors["coffee.jpg"]
    expected = sorted(vectors, key=lambda k: -float(vectors[k] @ q))[:3]
    assert [r["key"] for r in doc["results"]] == expected
    for r in doc["results"]:
        assert r["score"] == pytest.approx(float(vectors[r["key"]] @ q), abs=1e-5)
        assert r["path"] == str(folder / r["key"])
    assert doc["results"][0]["key"] == "coffee.jpg"
    assert doc["model"]["name"].startswith("standin:")


def test_search_by_key_leaves_the_key_out_and_honours_prefix_and_min_score(
    client: TestClient, folder: Path
) -> None:
    vectors = sidecar_vectors(folder)
    q = vectors["astronaut.jpg"]
    # WHEN searching by key, everything
    everything = client.post("/search?top_k=10", json={"key": "astronaut.jpg"}).json()["results"]
    # THEN the key itself is not among the results, its twin is, at cosine 1
    keys = [r["key"] for r in everything]
    assert "astronaut.jpg" not in keys and keys[0] == "twin/astronaut.jpg"
    assert everything[0]["score"] == pytest.approx(1.0, abs=1e-5)
    # WHEN restricted to a prefix, or to a minimum score
    twins = client.post("/search?prefix=twin/", json={"key": "astronaut.jpg"}).json()["results"]
    cut = sorted(float(vectors[k] @ q) for k in vectors if k != "astronaut.jpg")[-2]
    high = client.post(f"/search?min_score={cut}", json={"key": "astronaut.jpg"}).json()
    # THEN only what qualifies comes back
    assert [r["key"] for r in twins] == ["twin/astronaut.jpg"]
    assert len(high["results"]) == 2 and all(r["score"] >= cut - 1e-6 for r in high["results"])


def test_search_by_vector(client: TestClient, folder: Path) -> None:
    vectors = sidecar_vectors(folder)
    raw = (vectors["rocket.jpg"] * 3.0).tolist()  # any length: cosine
    doc = client.post("/search?top_k=1", json={"vector": raw}).json()
    assert doc["results"][0]["key"] == "rocket.jpg"


@pytest.mark.parametrize(
    ("query", "body", "status", "says"),
    [
        ("", {"key": "nope.jpg"}, 404, "no such image"),
        ("", {"vector": [1.0, 2.0]}, 400, "numbers"),
        ("", {"vector": ["a"]}, 400, "list of numbers"),
        ("", {"something": 1}, 400, "expected JSON"),
        ("?top_k=0", {"key": "coffee.jpg"}, 400, "top_k"),
        ("?top_k=many", {"key": "coffee.jpg"}, 400, "top_k"),
        ("?min_score=nan", {"key": "coffee.jpg"}, 400, "min_score"),
    ],
)
def test_search_bad_queries(
    client: TestClient, query: str, body: dict[str, object], status: int, says: str
) -> None:
    response = client.post(f"/search{query}", json=body)
    assert response.status_code == status and says in response.json()["error"]


def test_search_with_a_non_image_is_422(client: TestClient) -> None:
    response = client.post("/search", content=b"nope", headers={"content-type": "image/png"})
    assert response.status_code == 422 and "not an image" in response.json()["error"]


def test_duplicates_are_the_images_at_or_above_the_threshold(
    client: TestClient, folder: Path
) -> None:
    vectors = sidecar_vectors(folder)
    doc = client.get("/duplicates", params={"key": "twin/astronaut.jpg"}).json()
    expected = [
        k
        for k in vectors
        if k != "twin/astronaut.jpg"
        and float(vectors[k] @ vectors["twin/astronaut.jpg"]) >= doc["threshold"]
    ]
    assert [n["key"] for n in doc["neighbours"]] == expected == ["astronaut.jpg"]
    assert client.get("/duplicates", params={"key": "nope"}).status_code == 404
    assert client.get("/duplicates").status_code == 400


def test_thumb_is_a_small_jpeg_of_that_image_and_only_of_collection_images(
    client: TestClient, folder: Path
) -> None:
    response = client.get("/thumb", params={"key": "rocket.jpg"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(response.content))
    original = Image.open(folder / "rocket.jpg")
    assert max(thumb.size) == 192
    assert abs(thumb.size[0] / thumb.size[1] - original.size[0] / original.size[1]) < 0.02
    for key in ("../../etc/passwd", "rocket.jpg.dinov2.json", "nope.jpg"):
        assert client.get("/thumb", params={"key": key}).status_code == 404


def test_search_without_a_collection_is_503(tiny_settings: Settings) -> None:
    with TestClient(app_over(tiny_settings, None)) as c:
        response = c.post("/search", json={"key": "a.jpg"})
        assert c.get("/health").json()["index"] is None
    assert response.status_code == 503 and "dinoembed serve" in response.json()["error"]


# --- token, concurrency -------------------------------------------------------------------


def test_token_needed_everywhere_but_health_and_the_page(
    folder: Path, tiny_settings: Settings, photos: dict[str, Image.Image]
) -> None:
    from pydantic import SecretStr

    settings = tiny_settings.model_copy(update={"serve_token": SecretStr(TOKEN)})
    with TestClient(app_over(settings, folder)) as c:
        data = jpeg(photos)
        headers = {"content-type": "image/jpeg"}
        missing = c.post("/embed", content=data, headers=headers)
        wrong = c.post("/embed", content=data, headers={**headers, "authorization": "Bearer x"})
        right = c.post(
            "/embed", content=data, headers={**headers, "authorization": f"Bearer {TOKEN}"}
        )
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200
        assert c.get("/static/page.js").status_code == 200
        assert c.get("/duplicates?key=coffee.jpg").status_code == 401
    assert missing.status_code == 401 and "missing bearer token" in missing.json()["error"]
    assert wrong.status_code == 401 and "wrong" in wrong.json()["error"]
    assert right.status_code == 200


def test_concurrent_requests_are_all_answered_and_none_mixed_up(
    client: TestClient, photos: dict[str, Image.Image], tiny_settings: Settings
) -> None:
    # GIVEN six different photos, each with its own expected vector (Python API)
    images = {name: encode(photos[name], "PNG") for name in photos}
    embedder = Embedder(tiny_settings.model_path)
    expected = {n: embedder.embed([b])[0].embedding for n, b in images.items()}
    order = [name for name in images for _ in range(2)]  # 12 requests, each photo twice

    def post(name: str) -> tuple[str, dict[str, object]]:
        files = {"file": (f"{name}.png", images[name], "image/png")}
        return name, client.post("/embed", files=files).json()

    # WHEN 12 requests run at once
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(post, order))
    # THEN each answer carries its own image's name and vector
    assert len(answers) == 12
    for name, doc in answers:
        assert doc["file_path"] == f"{name}.png"
        assert doc["embedding"]["embedding"] == expected[name].embedding  # type: ignore[union-attr,index]
