"""``dinoembed index sync``, and ``similar`` / ``dupes`` answered by the vector index, checked
against the sidecar (all-pairs) path on the same data. S3: moto in-process; S3 Vectors: the
moto server with QueryVectors (tests/vectors_server.py)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from dinoembed.cli.commands import main
from dinoembed.common.defaults import DEFAULT_MODEL_NAME, DEFAULT_MODEL_SHA256
from dinoembed.handler import vectors as vectors_module
from dinoembed.results.schema import Embedding, EmbeddingResult, ModelInfo, SourceInfo
from tests.test_lambda_support import BUCKET, SUFFIX, mocked_s3
from tests.vectors_server import DIM, Vectors, VectorsServer, inject, open_vectors

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MODEL = ModelInfo(
    name=DEFAULT_MODEL_NAME, sha256=DEFAULT_MODEL_SHA256, preprocess="center-crop", input_size=224
)
INDEX = "dinov2-vits14-4df36ef0-crop-l2"  # the index MODEL's recipe needs (SPEC section 10)


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Client]:
    with mocked_s3(monkeypatch) as client:
        yield client


@pytest.fixture
def index(
    s3: S3Client, vectors_server: VectorsServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Vectors]:
    yield from open_vectors(vectors_server, monkeypatch, INDEX)


def unit(v: np.ndarray) -> list[float]:
    return (v / np.linalg.norm(v)).astype(np.float32).tolist()


def add_image(
    s3: S3Client, key: str, vector: list[float] | None, data: bytes, *, error: bool = False
) -> str:
    """Upload ``key`` and its sidecar (a success with ``vector``, or an error); the ETag."""
    s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    etag = str(s3.head_object(Bucket=BUCKET, Key=key)["ETag"])
    if vector is None and not error:
        return etag
    source = SourceInfo(
        size=len(data), etag=etag, sha256=hashlib.sha256(data).hexdigest(), width=64, height=48
    )
    result = EmbeddingResult(
        file_path=f"s3://{BUCKET}/{key}",
        status="error" if error else "success",
        error="not an image: test" if error else None,
        embedding=None
        if error
        else Embedding(embedding=vector or [], embedding_dim=DIM, normalized=True),
        model=MODEL,
        source=source,
    )
    s3.put_object(Bucket=BUCKET, Key=key + SUFFIX, Body=result.to_bytes())
    return etag


def collection(s3: S3Client, n: int = 24, seed: int = 3) -> dict[str, list[float]]:
    """``n`` images under photos/ with: a near-duplicate trio (0, 1, 2), an identical pair
    (3, 4: the same bytes), a near-duplicate of that pair (5), the rest unrelated."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, DIM))
    vecs = {}
    for i in range(n):
        v = base[i]
        if i in (1, 2):
            v = base[0] + 0.08 * rng.standard_normal(DIM)
        if i == 4:
            v = base[3]
        if i == 5:
            v = base[3] + 0.1 * rng.standard_normal(DIM)
        key = f"photos/img{i:02d}.jpg"
        data = b"pixels-3" if i in (3, 4) else f"pixels-{i}".encode()
        vecs[key] = unit(v)
        add_image(s3, key, vecs[key], data)
    return vecs


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    try:
        doc = json.loads(out) if out.strip() else None
    except ValueError:
        doc = out
    return code, doc, err


def test_sync_fills_an_empty_index_from_current_success_sidecars_only(
    s3: S3Client, index: Vectors, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN 3 success sidecars, an error sidecar, an image without one, a stale one
    vecs = {f"a/{i}.jpg": unit(np.arange(1, DIM + 1) * (i + 1) % 7 + 1.0) for i in range(3)}
    for i, (key, vec) in enumerate(vecs.items()):
        add_image(s3, key, vec, f"a{i}".encode())
    add_image(s3, "a/bad.jpg", None, b"bad", error=True)
    add_image(s3, "a/new.jpg", None, b"new")
    add_image(s3, "a/stale.jpg", unit(np.ones(DIM)), b"old")
    s3.put_object(Bucket=BUCKET, Key="a/stale.jpg", Body=b"changed since")
    # WHEN index sync runs
    code, doc, _ = run(capsys, "index", "sync", f"s3://{BUCKET}/a/", "--index", index.uri)
    # THEN exactly the three current success sidecars are put, with their vectors
    assert code == 0
    assert {
        k: doc[k] for k in ("sidecars", "vectors", "put", "deleted", "unchanged", "failed")
    } == {"sidecars": 3, "vectors": 0, "put": 3, "deleted": 0, "unchanged": 0, "failed": 0}
    stored = index.stored()
    assert sorted(stored) == sorted(vecs)
    for key, vec in vecs.items():
        assert np.allclose(stored[key][0], vec, atol=1e-6)


def test_a_second_sync_changes_nothing_and_reads_no_sidecar(
    s3: S3Client, index: Vectors, capsys: pytest.CaptureFixture[str]
) -> None:
    collection(s3, n=6)
    assert run(capsys, "index", "sync", f"s3://{BUCKET}/", "--index", index.uri)[0] == 0
    reads: list[str] = []
    # every GET the second run makes (moto: the in-process client's events)
    from dinoembed.handler import s3io

    original = s3io.make_aws_client

    def counting(service: str, config: Any) -> Any:
        client = original(service, config)
        if service == "s3":
            client.meta.events.register(
                "before-send.s3.GetObject", lambda **kw: reads.append("GET")
            )
        return client

    mp = pytest.MonkeyPatch()
    mp.setattr(s3io, "make_aws_client", counting)
    try:
        code, doc, _ = run(capsys, "index", "sync", f"s3://{BUCKET}/", "--index", index.uri)
    finally:
        mp.undo()
    assert code == 0 and doc["unchanged"] == 6 and doc["put"] == 0 and doc["deleted"] == 0
    assert reads == []


def test_sync_deletes_vectors_of_gone_images_and_replaces_changed_ones(
    s3: S3Client, index: Vectors, capsys: pytest.CaptureFixture[str]
) -> None:
    vecs = collection(s3, n=6)
    run(capsys, "index", "sync", f"s3://{BUCKET}/", "--index", index.uri)
    # GIVEN one image deleted (its sidecar left behind) and one re-embedded after a change
    s3.delete_object(Bucket=BUCKET, Key="photos/img00.jpg")
    changed = unit(np.ones(DIM))
    add_image(s3, "photos/img01.jpg", changed, b"another photo")
    # WHEN sync runs again
    code, doc, _ = run(capsys, "index", "sync", f"s3://{BUCKET}/", "--index", index.uri)
    # THEN the gone image's vector is deleted, the changed one put, the rest unchanged
    assert code == 0
    assert (doc["deleted"], doc["put"], doc["unchanged"], doc["vectors"]) == (1, 1, 4, 6)
    stored = index.stored()
    assert "photos/img00.jpg" not in stored and len(stored) == len(vecs) - 1
    assert np.allclose(stored["photos/img01.jpg"][0], changed, atol=1e-6)


def test_dry_run_counts_and_writes_nothing(
    s3: S3Client, index: Vectors, capsys: pytest.CaptureFixture[str]
) -> None:
    collection(s3, n=4)
    code, doc, _ = run(
        capsys, "index", "sync", f"s3://{BUCKET}/", "--index", index.uri, "--dry-run"
    )
    assert code == 0 and doc["put"] == 4 and doc["dry_run"] is True
    assert index.stored() == {}


def test_failed_puts_are_counted_and_exit_1(
    s3: S3Client,
    index: Vectors,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(vectors_module, "MAX_ATTEMPTS", 1)
    collection(s3, n=4)
    inject("PutVectors", 1)
    code, doc, _ = run(capsys, "index", "sync", f"s3://{BUCKET}/", "--index", index.uri)
    assert code == 1 and doc["failed"] == 4 and doc["put"] == 0
    # AND a second run repairs it
    code, doc, _ = run(capsys, "index", "sync", f"s3://{BUCKET}/", "--index", index.uri)
    assert code == 0 and doc["put"] == 4 and len(index.stored()) == 4


def test_sync_refuses_an_index_of_another_recipe(
    s3: S3Client, index: Vectors, capsys: pytest.CaptureFixture[str]
) -> None:
    collection(s3, n=3)
    index.create_index("dinov2-vitb14-0123abcd-crop-l2")
    other = f"s3vectors://{index.bucket}/dinov2-vitb14-0123abcd-crop-l2"
    code, doc, err = run(capsys, "index", "sync", f"s3://{BUCKET}/", "--index", other)
    assert code == 2 and doc is None
    assert err.count("\n") == 1 and INDEX in err and "refusing to write" in err


def test_sync_without_an_index_is_a_clear_error(
    s3: S3Client, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "index", "sync", f"s3://{BUCKET}/")
    assert code == 2 and "no vector index" in err


def test_dupes_through_recorded_neighbours_equal_the_all_pairs_groups(
    s3: S3Client,
    index: Vectors,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a collection with a similar trio, an identical pair and its near twin, indexed
    # with neighbours recorded
    collection(s3)
    code, doc, _ = run(
        capsys, "index", "sync", f"s3://{BUCKET}/", "--index", index.uri, "--neighbours"
    )
    assert code == 0 and doc["neighbours"] == 24
    # WHEN dupes runs through the index, and then the all-pairs way (no index)
    _, through_index, _ = run(
        capsys, "dupes", f"s3://{BUCKET}/photos/", "--json", "--index", index.uri
    )
    _, all_pairs, _ = run(capsys, "dupes", f"s3://{BUCKET}/photos/", "--json")

    # THEN the groups are the same: kind, members, keep, scores
    def shape(doc: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [(g["kind"], g["paths"], g["keep"], g["keep_reason"]) for g in doc["groups"]]

    assert shape(through_index) == shape(all_pairs)
    assert [g["kind"] for g in all_pairs["groups"]] == ["exact", "similar", "similar"]
    for a, b in zip(through_index["groups"], all_pairs["groups"], strict=True):
        assert a["min_score"] == pytest.approx(b["min_score"], abs=1e-5)
        assert a["max_score"] == pytest.approx(b["max_score"], abs=1e-5)
    assert through_index["images"] == all_pairs["images"] == 24


def test_a_neighbour_whose_image_is_gone_is_dropped(
    s3: S3Client, index: Vectors, capsys: pytest.CaptureFixture[str]
) -> None:
    collection(s3, n=6)
    run(capsys, "index", "sync", f"s3://{BUCKET}/", "--index", index.uri, "--neighbours")
    # GIVEN img00 deleted and the index synced (its vector goes, its neighbours' records stay)
    s3.delete_object(Bucket=BUCKET, Key="photos/img00.jpg")
    run(capsys, "index", "sync", f"s3://{BUCKET}/", "--index", index.uri)
    assert "photos/img00.jpg" in json.dumps(index.stored()["photos/img01.jpg"][1])
    # WHEN dupes runs  THEN the trio is a pair
    _, doc, _ = run(capsys, "dupes", f"s3://{BUCKET}/", "--json", "--index", index.uri)
    similar = [g["paths"] for g in doc["groups"] if g["kind"] == "similar"]
    assert [f"s3://{BUCKET}/photos/img01.jpg", f"s3://{BUCKET}/photos/img02.jpg"] in similar
    assert all(f"s3://{BUCKET}/photos/img00.jpg" not in p for p in similar)


def test_similar_through_the_index_prints_what_the_sidecar_path_prints(
    s3: S3Client, index: Vectors, capsys: pytest.CaptureFixture[str]
) -> None:
    collection(s3)
    run(capsys, "index", "sync", f"s3://{BUCKET}/", "--index", index.uri)
    query = f"s3://{BUCKET}/photos/img00.jpg"
    _, through_index, _ = run(
        capsys, "similar", query, "--in", f"s3://{BUCKET}/photos/", "--json", "--index", index.uri
    )
    # (the sidecar path embeds an s3:// image query; its sidecar gives the same vector)
    _, all_rows, _ = run(
        capsys, "similar", query + SUFFIX, "--in", f"s3://{BUCKET}/photos/", "--json"
    )
    assert through_index["query"] == all_rows["query"] == query
    assert [r["path"] for r in through_index["results"]] == [r["path"] for r in all_rows["results"]]
    assert [r["etag"] for r in through_index["results"]] == [r["etag"] for r in all_rows["results"]]
    for a, b in zip(through_index["results"], all_rows["results"], strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
    assert len(through_index["results"]) == 10


def test_similar_top_k_above_100_is_an_argument_error(
    s3: S3Client, index: Vectors, capsys: pytest.CaptureFixture[str]
) -> None:
    collection(s3, n=3)
    code, _, err = run(
        capsys,
        "similar",
        f"s3://{BUCKET}/photos/img00.jpg",
        "--in",
        f"s3://{BUCKET}/",
        "--index",
        index.uri,
        "--top-k",
        "101",
    )
    assert code == 2 and "--top-k 101" in err and "at most 100" in err
