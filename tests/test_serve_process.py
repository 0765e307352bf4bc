"""``dinoembed serve`` as a real process on 127.0.0.1, asked over HTTP with httpx.

The seed plugin's own example client runs against it unchanged but for the URL; twelve
requests at once are all answered with their own image's vector; a missing token, a bad
body and an oversize body get their status; SIGTERM stops it cleanly (exit status 0).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from dinoembed.api import Embedder
from dinoembed.settings import Settings
from tests.helpers import encode
from tests.serve_support import Server, make_collection, start_server

TOKEN = "token-for-the-test"


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
    photos: dict[str, Image.Image],
    tiny_settings: Settings,
) -> Iterator[tuple[Server, Path]]:
    tmp = tmp_path_factory.mktemp("serve")
    folder = make_collection(tmp / "photos", photos, tiny_settings)
    server = start_server(folder, tiny_settings, tmp)
    yield server, folder
    assert server.stop() == 0


def test_the_seed_example_client_works_unchanged_but_for_the_url(
    served: tuple[Server, Path],
    tmp_path: Path,
    photos: dict[str, Image.Image],
    tiny_settings: Settings,
) -> None:
    server, _ = served
    image_paths = []
    for name in ("coffee", "rocket"):
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(encode(photos[name], "JPEG", quality=90))
        image_paths.append(str(path))

    def get_job_result(job_id: str) -> Any:  # the seed leaves this to the reader
        return httpx.get(f"{server.url}/jobs/{job_id}").json()

    async def workflow() -> dict[str, list[float]]:
        # --- the seed's example workflow, steps 1 and 2, the URL changed ---
        async def generate_embedding(image_path: str) -> dict:
            async with httpx.AsyncClient() as client:
                with open(image_path, "rb") as f:
                    response = await client.post(
                        f"{server.url}/jobs/dino_embedding",
                        files={"file": f},
                        data={"normalize": "true", "priority": "5"},
                    )
                return response.json()

        # Generate embeddings for all images
        job_ids = []
        for image_path in image_paths:
            result = await generate_embedding(image_path)
            job_ids.append(result["job_id"])

        embeddings_db = {}
        for job_id in job_ids:
            result = get_job_result(job_id)  # Your job retrieval logic
            if result["status"] == "ok":
                for file_result in result["task_output"]["files"]:
                    if file_result["status"] == "success":
                        embeddings_db[file_result["file_path"]] = file_result["embedding"][
                            "embedding"
                        ]
        return embeddings_db

    embeddings_db = asyncio.run(workflow())
    # THEN each image's embedding is the Python API's for the same file
    embedder = Embedder(tiny_settings.model_path)
    assert sorted(embeddings_db) == ["coffee.jpg", "rocket.jpg"]
    for image_path in image_paths:
        expected = embedder.embed([Path(image_path).read_bytes()])[0].embedding
        assert expected is not None
        assert embeddings_db[Path(image_path).name] == expected.embedding


def test_twelve_concurrent_requests_are_answered_each_with_its_own_image(
    served: tuple[Server, Path], photos: dict[str, Image.Image], tiny_settings: Settings
) -> None:
    server, _ = served
    images = {name: encode(photos[name], "PNG") for name in photos}
    embedder = Embedder(tiny_settings.model_path)
    expected = {n: embedder.embed([b])[0].embedding for n, b in images.items()}
    order = [name for name in images for _ in range(2)]

    async def ask_all() -> list[tuple[str, httpx.Response]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:

            async def one(name: str) -> tuple[str, httpx.Response]:
                files = {"file": (f"{name}.png", images[name], "image/png")}
                return name, await client.post("/embed", files=files)

            return await asyncio.gather(*(one(n) for n in order))

    answers = asyncio.run(ask_all())
    assert len(answers) == 12
    for name, response in answers:
        assert response.status_code == 200
        doc = response.json()
        assert doc["file_path"] == f"{name}.png"
        assert doc["embedding"]["embedding"] == expected[name].embedding  # type: ignore[union-attr]


def test_bad_and_oversize_bodies(served: tuple[Server, Path]) -> None:
    server, _ = served
    bad = httpx.post(
        f"{server.url}/embed", content=b"GIF89a-not-really", headers={"content-type": "image/gif"}
    )
    assert bad.status_code == 422 and bad.json()["status"] == "error"
    # an oversize body is refused on its Content-Length alone: the server answers without
    # waiting for a byte of it (this client sends none)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(
            b"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 1000000000\r\n\r\n"
        )
        chunks = []
        while chunk := s.recv(65536):  # the server closes the connection after its answer
            chunks.append(chunk)
        head = b"".join(chunks).decode("latin-1")
    assert head.startswith("HTTP/1.1 413"), head
    assert '"error":' in head and "too large" in head


def test_token_is_required_and_sigterm_stops_cleanly(
    tmp_path: Path, photos: dict[str, Image.Image], tiny_settings: Settings
) -> None:
    folder = make_collection(tmp_path / "photos", photos, tiny_settings)
    server = start_server(folder, tiny_settings, tmp_path, TOKEN)
    try:
        data = encode(photos["coffee"], "JPEG")
        headers = {"content-type": "image/jpeg"}
        missing = httpx.post(f"{server.url}/embed", content=data, headers=headers)
        given = httpx.post(
            f"{server.url}/embed",
            content=data,
            headers={**headers, "authorization": f"Bearer {TOKEN}"},
        )
        health = httpx.get(f"{server.url}/health")
    finally:
        code = server.stop()
    assert missing.status_code == 401 and "bearer token" in missing.json()["error"]
    assert given.status_code == 200 and health.status_code == 200
    assert health.json()["auth"] is True
    # THEN SIGTERM ended it with status 0 and the port is free again
    assert code == 0
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", server.port)) != 0
