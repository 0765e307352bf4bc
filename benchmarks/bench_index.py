"""Benchmark of the vector index paths at bucket scale, against the all-pairs (sidecar) paths.

Runs dinoembed's own code (``handler.index_sync.sync_index``,
``collections.index.index_duplicates``) against **simulated** services in this process:
an S3 that lists 1,000 keys a page and serves sidecars (generated on demand), and an S3
Vectors index that lists 1,000 vectors a page with their metadata (generated from the key
number, so the simulation itself holds nothing). Nothing here measures AWS latency: the
times are dinoembed's client-side work; the request counts are what the real services
would be asked; peak memory is what dinoembed's code allocated (tracemalloc).

Rows, at ``--n`` images (384-d, 1% planted near-duplicate pairs, 0.5% identical files):

- ``sync_steady``: ``index sync`` over a bucket whose index is in step (every image's
  vector records its current ETag): listings only, no sidecar read, nothing put;
- ``sync_initial`` (``--initial``): ``index sync`` into an empty index: every sidecar
  read (one GET each) and put (500 a request);
- ``dupes_index``: ``dupes`` from the recorded neighbours + exact tier (the listing);
- ``dupes_all_pairs`` (``--all-pairs``): the all-pairs path's search and grouping on the
  same vectors (``similar_pairs`` + ``group_duplicates``), which on S3 also needs every
  sidecar read first (one GET each; its parse cost is measured per sidecar and scaled).

Usage: ``.venv/bin/python -m benchmarks.bench_index --n 100000 [--initial] [--all-pairs]``
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from dinoembed.collections.collection import Entry
from dinoembed.collections.dupes import candidates, group_duplicates
from dinoembed.collections.index import MAX_LIST, encode_neighbours
from dinoembed.common.defaults import DEFAULT_MODEL_NAME, DEFAULT_MODEL_SHA256
from dinoembed.handler.index_sync import sync_index
from dinoembed.handler.vectors import S3VectorsIndex
from dinoembed.results.schema import Embedding, EmbeddingResult, ModelInfo, Neighbour, SourceInfo

DIM = 384
SUFFIX = ".dinov2.json"
INDEX = "dinov2-vits14-4df36ef0-crop-l2"
MODEL = ModelInfo(
    name=DEFAULT_MODEL_NAME, sha256=DEFAULT_MODEL_SHA256, preprocess="center-crop", input_size=224
)
T = TypeVar("T")


def key(i: int) -> str:
    return f"photos/{i // 1000:04d}/img-{i:07d}.jpg"


def etag(i: int, generation: int = 0) -> str:
    """An MD5-shaped ETag, cheap to make (the simulation should cost little)."""
    return f'"{generation:08x}{i:024x}"'


def twin_of(i: int, n: int) -> int | None:
    """Planted: i+1 near-duplicates i for i % 100 == 0; i+1 identical to i for i % 200 == 50."""
    if i % 100 == 1 and i - 1 < n:
        return i - 1
    return None


def identical(i: int) -> bool:
    return i % 200 == 51


class SimS3:
    """list_objects_v2 pages and get_object for ``n`` images and their sidecars."""

    def __init__(self, n: int, vector: Callable[[int], list[float]]) -> None:
        self.n, self.vector = n, vector
        self.calls: Counter[str] = Counter()

    def get_paginator(self, name: str) -> SimS3:
        return self

    def paginate(self, Bucket: str, Prefix: str) -> Iterator[dict[str, Any]]:  # noqa: N803
        """Pages made as they are asked for (the simulation holds no listing of its own)."""
        for start in range(0, self.n, 500):
            self.calls["ListObjectsV2"] += 1
            page = []
            for i in range(start, min(start + 500, self.n)):
                page.append({"Key": key(i), "ETag": etag(i), "Size": 1000 + i})
                page.append({"Key": key(i) + SUFFIX, "ETag": etag(i, 9), "Size": 9000})
            yield {"Contents": page}

    def get_object(self, Bucket: str, Key: str, **_: Any) -> dict[str, Any]:  # noqa: N803
        self.calls["GetObject"] += 1
        i = int(Key.rsplit("-", 1)[1].split(".")[0])
        return {"Body": io.BytesIO(sidecar(i, self.vector(i))), "ETag": etag(i, 9)}


def sidecar(i: int, vector: list[float]) -> bytes:
    return EmbeddingResult(
        file_path=f"s3://bucket/{key(i)}",
        status="success",
        embedding=Embedding(embedding=vector, embedding_dim=DIM, normalized=True),
        model=MODEL,
        source=SourceInfo(size=1000 + i, etag=etag(i), width=4000, height=3000),
    ).to_bytes()


def metadata(i: int, n: int) -> dict[str, Any]:
    sha = f"{i - 1 if identical(i) else i:064x}"
    md: dict[str, Any] = {
        "prefixes": ["photos/", f"photos/{i // 1000:04d}/"],
        "etag": etag(i),
        "sha256": sha,
        "size": 1000 + (i - 1 if identical(i) else i),
        "width": 4000,
        "height": 3000,
    }
    near = []
    if i % 100 == 0 and i + 1 < n:
        near.append(Neighbour(key=key(i + 1), score=0.97))
    if twin_of(i, n) is not None:
        near.append(Neighbour(key=key(i - 1), score=0.97))
    md["neighbours"] = encode_neighbours(near)
    return md


class SimVectors:
    """An S3 Vectors index of ``filled`` vectors (metadata generated from the key number)."""

    def __init__(self, n: int, filled: bool) -> None:
        self.n, self.filled = n, filled
        self.calls: Counter[str] = Counter()
        self.put_count = 0

    def list_vectors(self, **kw: Any) -> dict[str, Any]:
        self.calls["ListVectors"] += 1
        if not self.filled:
            return {"vectors": []}
        start = int(kw.get("nextToken") or 0)
        stop = min(start + min(kw["maxResults"], MAX_LIST), self.n)
        out: dict[str, Any] = {
            "vectors": [
                {"key": key(i), "metadata": metadata(i, self.n)} for i in range(start, stop)
            ]
        }
        if stop < self.n:
            out["nextToken"] = str(stop)
        return out

    def put_vectors(self, **kw: Any) -> dict[str, Any]:
        self.calls["PutVectors"] += 1
        self.put_count += len(kw["vectors"])
        return {}


def measured(fn: Callable[[], T], *counters: Counter[str]) -> tuple[T, dict[str, float]]:
    """Run ``fn`` twice: timed alone, then under tracemalloc (which slows allocation-heavy
    code) for the peak of what it allocated. ``counters`` keep the first run's requests."""
    start = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - start
    kept = [Counter(c) for c in counters]
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    for counter, first in zip(counters, kept, strict=True):
        counter.clear()
        counter.update(first)
    return value, {"seconds": round(seconds, 2), "peak_mb": round(peak / 2**20, 1)}


def unit(rng: np.random.Generator) -> list[float]:
    v = rng.standard_normal(DIM).astype(np.float32)
    return (v / np.linalg.norm(v)).tolist()


def row_sync_steady(n: int) -> dict[str, Any]:
    s3, vectors = SimS3(n, lambda i: []), SimVectors(n, filled=True)
    index = S3VectorsIndex(vectors, "vb", INDEX)
    summary, cost = measured(
        lambda: sync_index(s3, "bucket", "", SUFFIX, index), s3.calls, vectors.calls
    )
    assert summary.unchanged == n and summary.put == 0 and not s3.calls["GetObject"]
    return {**cost, "requests": dict(s3.calls) | dict(vectors.calls), "summary": summary.to_json()}


def row_sync_initial(n: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    s3, vectors = SimS3(n, lambda i: unit(rng)), SimVectors(n, filled=False)
    index = S3VectorsIndex(vectors, "vb", INDEX)
    summary, cost = measured(
        lambda: sync_index(s3, "bucket", "", SUFFIX, index), s3.calls, vectors.calls
    )
    assert summary.put == n
    return {**cost, "requests": dict(s3.calls) | dict(vectors.calls)}


def row_dupes_index(n: int) -> dict[str, Any]:
    from dinoembed.collections.index import index_duplicates

    vectors = SimVectors(n, filled=True)
    index = S3VectorsIndex(vectors, "vb", INDEX)
    found, cost = measured(
        lambda: index_duplicates(index.listing(metadata=True), 0.95), vectors.calls
    )
    kinds = Counter(g.kind for g in found.groups)
    return {**cost, "requests": dict(vectors.calls), "groups": dict(kinds), "images": found.images}


def row_dupes_all_pairs(n: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    for i in range(1, n, 100):
        x[i] = x[i - 1] + 0.12 * rng.standard_normal(DIM).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    entries = [
        Entry(key(i) + SUFFIX, "", key(i), None, i, 1000 + i, None, 4000, 3000) for i in range(n)
    ]

    def search() -> int:
        pairs, _ = candidates(x, 0.95)
        return len(group_duplicates(entries, pairs, 0.95))

    groups, cost = measured(search)
    sample = 2000
    blobs = [sidecar(i, x[i].tolist()) for i in range(sample)]
    start = time.perf_counter()
    for blob in blobs:
        EmbeddingResult.read_json(blob)
    parse = (time.perf_counter() - start) / sample
    return {
        **cost,
        "groups": groups,
        "requests": {"ListObjectsV2": -(-2 * n // 1000), "GetObject": n},
        "sidecar_parse_s_at_n": round(parse * n, 1),
        "matrix_mb": x.nbytes >> 20,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_index")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--initial", action="store_true", help="also sync into an empty index")
    parser.add_argument("--all-pairs", action="store_true", help="also run the all-pairs dupes")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"n": args.n, "dim": DIM, "cpus": len(os.sched_getaffinity(0))}
    report["sync_steady"] = row_sync_steady(args.n)
    report["dupes_index"] = row_dupes_index(args.n)
    if args.initial:
        report["sync_initial"] = row_sync_initial(args.n)
    if args.all_pairs:
        report["dupes_all_pairs"] = row_dupes_all_pairs(args.n)
    text = json.dumps(report, indent=2)
    sys.stdout.write(text + "\n")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
