"""The S3 Vectors client (handler/vectors.py) against a moto server, and the test server's
own QueryVectors checked against numpy (tests/vectors_server.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.config import Config

from dinoembed.collections.index import (
    MAX_TOP_K,
    IndexLimitError,
    VectorRecord,
    folder_prefixes,
    index_name,
)
from dinoembed.handler.vectors import (
    IndexNotFoundError,
    S3VectorsIndex,
    VectorsTransientError,
    make_vectors_client,
    parse_index_uri,
)
from dinoembed.results.schema import ModelInfo
from dinoembed.results.sidecars import Recipe
from tests.vectors_server import (
    CALLS,
    DIM,
    Vectors,
    VectorsServer,
    inject,
    open_vectors,
    reference_query,
)

INDEX = "test-index"


@pytest.fixture
def vectors(vectors_server: VectorsServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Vectors]:
    yield from open_vectors(vectors_server, monkeypatch, INDEX)


@pytest.fixture
def index(vectors: Vectors) -> S3VectorsIndex:
    return S3VectorsIndex(make_vectors_client(), vectors.bucket, vectors.index)


def unit_rows(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def records(rows: np.ndarray, folder: str = "photos/") -> list[VectorRecord]:
    return [
        VectorRecord(
            f"{folder}{i:05d}.jpg",
            row.tolist(),
            {"prefixes": folder_prefixes(f"{folder}{i:05d}.jpg")},
        )
        for i, row in enumerate(rows)
    ]


def test_reference_query_ranks_as_numpy_cosine() -> None:
    # GIVEN 50 random vectors (not normalised) and a query
    rng = np.random.default_rng(7)
    data = rng.standard_normal((50, DIM))
    query = rng.standard_normal(DIM)
    stored: dict[str, tuple[list[float], dict[str, Any]]] = {
        f"k{i}": (row.tolist(), {}) for i, row in enumerate(data)
    }
    # WHEN the test server's brute-force QueryVectors answers top 10
    hits = reference_query(stored, query.tolist(), 10)
    # THEN keys and distances are numpy's 1 - cosine, nearest first
    cos = data @ query / (np.linalg.norm(data, axis=1) * np.linalg.norm(query))
    order = np.argsort(1 - cos, kind="stable")[:10]
    assert [h.key for h in hits] == [f"k{i}" for i in order]
    assert np.allclose([h.distance for h in hits], 1 - cos[order], atol=1e-12)


def test_reference_query_filters_list_metadata_by_element() -> None:
    # GIVEN vectors whose "prefixes" metadata lists their folders
    stored: dict[str, tuple[list[float], dict[str, object]]] = {
        "a/x.jpg": ([1.0, 0.0], {"prefixes": ["a/"]}),
        "a/b/y.jpg": ([1.0, 0.1], {"prefixes": ["a/", "a/b/"]}),
        "c/z.jpg": ([1.0, 0.0], {"prefixes": ["c/"]}),
    }
    # WHEN filtered by {"prefixes": {"$eq": "a/"}}
    hits = reference_query(stored, [1.0, 0.0], 10, where={"prefixes": {"$eq": "a/"}})
    # THEN only keys under a/ come back
    assert sorted(h.key for h in hits) == ["a/b/y.jpg", "a/x.jpg"]


def test_query_returns_cosines_matching_numpy(index: S3VectorsIndex) -> None:
    # GIVEN 120 unit vectors put in the index (more than one request would hold at 100)
    rows = unit_rows(120)
    index.put(records(rows))
    query = unit_rows(1, seed=99)[0]
    # WHEN queried for the 5 nearest
    hits = index.query(query.tolist(), top_k=5)
    # THEN keys and scores are numpy's top-5 cosines
    cos = rows @ query
    best = np.argsort(-cos)[:5]
    assert [h.key for h in hits] == [f"photos/{i:05d}.jpg" for i in best]
    assert np.allclose([h.score for h in hits], cos[best], atol=1e-5)


def test_query_restricted_to_a_prefix(index: S3VectorsIndex) -> None:
    # GIVEN the same vectors under two folders
    rows = unit_rows(10)
    index.put(records(rows, "a/") + records(rows, "b/"))
    # WHEN queried under b/ and under a prefix that is no folder
    under_b = index.query(rows[0].tolist(), top_k=3, prefix="b/")
    partial = index.query(rows[0].tolist(), top_k=3, prefix="a/0000")
    # THEN only keys under it come back
    assert under_b[0].key == "b/00000.jpg"
    assert all(h.key.startswith("b/") for h in under_b)
    assert [h.key for h in partial] == ["a/00000.jpg", *[h.key for h in partial][1:]]
    assert all(h.key.startswith("a/0000") for h in partial)


def test_put_is_split_into_requests_of_500(index: S3VectorsIndex) -> None:
    # GIVEN 1,201 vectors
    rows = unit_rows(1201)
    # WHEN put
    index.put(records(rows))
    # THEN three PutVectors requests carried them, and the listing (paged) has them all
    assert CALLS["PutVectors"] == 3
    listed = list(index.listing(page_size=500))
    assert len(listed) == 1201 and CALLS["ListVectors"] == 3


def test_get_is_split_into_requests_of_100(index: S3VectorsIndex) -> None:
    index.put(records(unit_rows(250)))
    found = index.get([f"photos/{i:05d}.jpg" for i in range(250)] + ["photos/none.jpg"])
    assert len(found) == 250
    assert CALLS["GetVectors"] == 3


@pytest.mark.parametrize("top_k", [0, MAX_TOP_K + 1])
def test_top_k_outside_1_to_100_is_refused(index: S3VectorsIndex, top_k: int) -> None:
    with pytest.raises(IndexLimitError, match="1 to 100"):
        index.query([1.0] * DIM, top_k=top_k)
    assert CALLS["QueryVectors"] == 0


@pytest.mark.parametrize(
    ("vector", "why"),
    [
        ([0.0] * DIM, "all zeros"),
        ([float("nan")] + [1.0] * (DIM - 1), "non-finite"),
        ([float("inf")] * DIM, "non-finite"),
    ],
)
def test_bad_vectors_are_refused_before_sending(
    index: S3VectorsIndex, vector: list[float], why: str
) -> None:
    with pytest.raises(IndexLimitError, match=why):
        index.put([VectorRecord("photos/a.jpg", vector)])
    assert CALLS["PutVectors"] == 0


def test_keys_over_1024_bytes_are_refused(index: S3VectorsIndex) -> None:
    long_key = "é" * 513  # 1,026 bytes
    with pytest.raises(IndexLimitError, match="1026 bytes"):
        index.put([VectorRecord(long_key, [1.0] * DIM)])
    assert CALLS["PutVectors"] == 0


def test_throttling_is_retried_with_backoff(index: S3VectorsIndex) -> None:
    # GIVEN the service throttles the next two PutVectors
    inject("PutVectors", 2)
    # WHEN a vector is put
    index.put(records(unit_rows(1)))
    # THEN it landed on the third attempt
    assert CALLS["PutVectors"] == 3
    assert index.vector_of("photos/00000.jpg") is not None


def test_throttling_beyond_the_retries_is_transient(vectors: Vectors) -> None:
    # GIVEN a client allowed 2 attempts, and a service throttling the next 5 puts
    client = boto3.client(
        "s3vectors", config=Config(retries={"mode": "adaptive", "total_max_attempts": 2})
    )
    index = S3VectorsIndex(client, vectors.bucket, vectors.index)
    inject("PutVectors", 5)
    # WHEN a vector is put  THEN it fails as a transient error (the record is retried later)
    with pytest.raises(VectorsTransientError, match="TooManyRequestsException"):
        index.put(records(unit_rows(1)))
    assert CALLS["PutVectors"] == 2


def test_delete_is_verified_by_reading_back(index: S3VectorsIndex) -> None:
    # GIVEN two indexed keys
    index.put(records(unit_rows(2)))
    # WHEN one known and one never-indexed key are deleted
    index.delete(["photos/00000.jpg", "photos/never.jpg"])
    # THEN the known one is gone, the other key is not reported as a failure
    assert index.vector_of("photos/00000.jpg") is None
    assert index.vector_of("photos/00001.jpg") is not None
    assert CALLS["GetVectors"] >= 1  # the read-back


def test_a_delete_that_did_not_take_is_transient(
    index: S3VectorsIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a service that answers 200 to DeleteVectors but deletes nothing
    index.put(records(unit_rows(1)))
    monkeypatch.setattr(index.client, "delete_vectors", lambda **kwargs: {})
    # WHEN the key is deleted  THEN the read-back finds it and the delete fails, retryably
    with pytest.raises(VectorsTransientError, match="still indexed"):
        index.delete(["photos/00000.jpg"])


def test_missing_index_is_a_clear_error(vectors: Vectors) -> None:
    index = S3VectorsIndex(make_vectors_client(), vectors.bucket, "no-such-index")
    with pytest.raises(IndexNotFoundError, match="s3vectors://"):
        index.query([1.0] * DIM, top_k=1)


def test_neighbours_of_reads_the_metadata(index: S3VectorsIndex) -> None:
    index.put([VectorRecord("a.jpg", [1.0] * DIM, {"neighbours": '[["b.jpg",0.99]]'})])
    got = index.neighbours_of("a.jpg")
    assert got is not None and [(h.key, h.score) for h in got] == [("b.jpg", 0.99)]
    assert index.neighbours_of("zzz.jpg") is None


@pytest.mark.parametrize(
    ("uri", "ok"),
    [
        ("s3vectors://vb/idx", True),
        ("s3vectors://vb", False),
        ("s3://vb/idx", False),
        ("s3vectors://vb/a/b", False),
        ("arn:aws:s3vectors:us-east-1:123456789012:bucket/vb/index/idx", True),
        ("arn:aws:s3vectors:us-east-1:123456789012:bucket/vb", False),
    ],
)
def test_parse_index_uri(uri: str, ok: bool) -> None:
    if ok:
        assert parse_index_uri(uri) == ("vb", "idx")
    else:
        with pytest.raises(Exception, match="s3vectors://VECTOR_BUCKET/INDEX"):
            parse_index_uri(uri)


@pytest.mark.parametrize(
    ("name", "sha", "preprocess", "normalize", "expected"),
    [
        ("dinov2_vits14", "4df36ef0716a", "center-crop", True, "dinov2-vits14-4df36ef0-crop-l2"),
        ("dinov2_vitb14", "ABCDEF0123", "squash", False, "dinov2-vitb14-abcdef01-squash-raw"),
        ("standin:tiny", "0123456789", "center-crop", True, "standin-tiny-01234567-crop-l2"),
        ("x" * 100, "0123456789", "center-crop", True, "x" * 46 + "-01234567-crop-l2"),
    ],
)
def test_index_name_per_recipe(
    name: str, sha: str, preprocess: str, normalize: bool, expected: str
) -> None:
    model = ModelInfo(name=name, sha256=sha, preprocess=preprocess, input_size=224)  # type: ignore[arg-type]
    got = index_name(Recipe(model, normalize))
    assert got == expected and 3 <= len(got) <= 63
