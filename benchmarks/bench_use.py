"""Benchmark of ``similar`` and ``dupes`` at 100,000 vectors of 384 dimensions.

Random unit vectors (seeded) with planted near-duplicates (noisy copies, cosine ~0.97),
so the answer is known. Measures, on this machine's cores:

- ``similar``: exact top-10 for one query (median over queries), and loading the
  collection's cache (``.npy`` + JSON index) that every ``similar`` run starts with;
- a cold collection: parsing sidecar JSON (per sidecar, extrapolated to N);
- ``dupes``: all pairs >= 0.95 and their groups, with the peak memory it allocated;
  ``--baseline`` also times the same search scoring every tile in full (no filter).

- warm ``similar`` on a folder (the cache memory-mapped, the folder unchanged) against
  reading the same cache eagerly, as every run did before;

Usage: ``.venv/bin/python -m benchmarks.bench_use [--n 100000] [--baseline] [--warm-only]
[--out PATH]`` (``--n 1000000 --warm-only`` for the million-image row).
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

import dinoembed.collections.similarity as sim
from dinoembed.collections.collection import (
    Collection,
    CollectionCache,
    Entry,
    FolderSource,
    collection_from_sidecars,
    load_collection,
)
from dinoembed.common.vectors import normalize_rows
from dinoembed.results.schema import Embedding, EmbeddingResult, ModelInfo, SourceInfo

T = TypeVar("T")
DIM = 384
THRESHOLD = 0.95
MODEL = ModelInfo(name="bench", sha256="0" * 64, preprocess="center-crop", input_size=224)


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def vectors(n: int, planted: int, seed: int = 0) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """``n`` unit rows; the last ``planted`` are noisy copies of distinct earlier rows."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    originals = rng.choice(n - planted, planted, replace=False)
    x[n - planted :] = x[originals] + 0.25 * rng.standard_normal((planted, DIM), dtype=np.float32)
    pairs = {(int(o), n - planted + i) for i, o in enumerate(originals)}
    return normalize_rows(x), pairs


def bench_similar(x: np.ndarray, queries: int = 30) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    seconds = []
    for q in rng.choice(x.shape[0], queries, replace=False):
        query = x[q]
        start = time.perf_counter()
        sim.top_k(x, query, 10)
        seconds.append(time.perf_counter() - start)
    return {"top10_median_ms": round(statistics.median(seconds) * 1000, 2)}


def bench_cache(x: np.ndarray) -> dict[str, Any]:
    entries = tuple(
        Entry(f"img-{i:06d}.jpg.dinov2.json", f"{i}:0:0", f"/photos/img-{i:06d}.jpg", None, i)
        for i in range(x.shape[0])
    )
    collection = Collection("/photos", MODEL, entries, x)
    with tempfile.TemporaryDirectory() as tmp:
        cache = CollectionCache(Path(tmp))
        _, save = timed(lambda: cache.save(collection))
        loaded, load = timed(lambda: cache.load("/photos"))
        assert loaded is not None and len(loaded) == x.shape[0]
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
    return {"cache_save_s": round(save, 3), "cache_load_s": round(load, 3), "cache_mb": size >> 20}


def bench_warm_similar(x: np.ndarray, folders: int = 1000) -> dict[str, Any]:
    """``similar`` on a folder after its first run: the cache loaded as the command loads
    it (folder check, memory-mapped matrix, lazy entries), one exact top-10, the ten
    entries printed. Against it, in the same run, reading the same cache eagerly (the
    whole matrix and every entry parsed), which is what every run did before.

    The folder tree is simulated: ``folders`` empty sub-folders (the warm path stats
    folders, never files), recorded as the listing would have recorded them."""
    entries = tuple(
        Entry(
            f"d{i % folders:04d}/img-{i:07d}.jpg.dinov2.json",
            f"{i}:0:0",
            f"/photos/d{i % folders:04d}/img-{i:07d}.jpg",
            None,
            i,
        )
        for i in range(x.shape[0])
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp, "photos")
        for d in range(folders):
            (root / f"d{d:04d}").mkdir(parents=True)
        then = time.time() - 60
        for folder in [root, *root.iterdir()]:
            os.utime(folder, (then, then))
        stamps = {
            f.relative_to(root).as_posix(): f.stat().st_mtime_ns for f in [root, *root.iterdir()]
        }
        source = FolderSource(root, ".dinov2.json")
        snapshot = {"walk": source.walk_key(), "listed_at_ns": time.time_ns(), "folders": stamps}
        cache = CollectionCache(Path(tmp, "cache"))
        _, save = timed(lambda: cache.save(Collection(str(root), MODEL, entries, x, snapshot)))
        query = x[12345 % x.shape[0]]

        def warm() -> list[str]:
            collection, stats = load_collection(FolderSource(root, ".dinov2.json"), cache)
            assert stats.read == 0 and len(collection) == x.shape[0]
            idx, _ = sim.top_k(collection.matrix, query, 10)
            return [collection.row(i).path for i in idx.tolist()]

        def eager() -> int:
            loaded = cache.load(str(root))
            assert loaded is not None
            matrix = np.array(loaded.matrix)  # read, not mapped
            return len(list(loaded.entries)) + matrix.shape[0]

        warm()  # the page cache as a second run finds it
        runs = [timed(warm)[1] for _ in range(3)]
        _, eager_s = timed(eager)
    return {
        "warm_cache_save_s": round(save, 2),
        "warm_similar_s": round(min(runs), 3),
        "eager_cache_read_s": round(eager_s, 2),
        "eager_over_warm": round(eager_s / min(runs), 1),
    }


def bench_parse(x: np.ndarray, sample: int = 2000) -> dict[str, Any]:
    blobs = [
        (
            f"img-{i}",
            EmbeddingResult(
                file_path=f"/photos/img-{i}.jpg",
                status="success",
                embedding=Embedding(
                    embedding=[float(str(v)) for v in x[i]], embedding_dim=DIM, normalized=True
                ),
                model=MODEL,
                source=SourceInfo(size=1, mtime=1.0),
            )
            .to_json()
            .encode(),
        )
        for i in range(sample)
    ]
    _, took = timed(lambda: collection_from_sidecars("/photos", blobs))
    per = took / sample
    return {"parse_per_sidecar_ms": round(per * 1000, 3), "parse_all_s": round(per * len(x), 1)}


def bench_dupes(x: np.ndarray, planted: set[tuple[int, int]]) -> dict[str, Any]:
    tracemalloc.start()  # numpy reports its buffers to tracemalloc
    pairs, took = timed(lambda: sim.similar_pairs(x, THRESHOLD))
    edges = list(zip(pairs.score.tolist(), pairs.left.tolist(), pairs.right.tolist(), strict=True))
    groups, grouping = timed(lambda: sim.linked_components(x.shape[0], edges))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    found = set(zip(pairs.left.tolist(), pairs.right.tolist(), strict=True))
    return {
        "pairs_s": round(took, 2),
        "groups_s": round(grouping, 3),
        "pairs": len(pairs),
        "groups": len(groups),
        "planted_found": len(planted & found),
        "planted": len(planted),
        "peak_allocated_mb": peak >> 20,
    }


def bench_baseline(x: np.ndarray) -> dict[str, Any]:
    saved = sim.MIN_DIM_FOR_FILTER
    sim.MIN_DIM_FOR_FILTER = DIM + 1  # no low-rank filter: every tile scored in full
    try:
        pairs, took = timed(lambda: sim.similar_pairs(x, THRESHOLD))
    finally:
        sim.MIN_DIM_FOR_FILTER = saved
    return {"full_scoring_s": round(took, 2), "full_scoring_pairs": len(pairs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_use")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--planted", type=int, default=1_000)
    parser.add_argument("--baseline", action="store_true", help="also time full tile scoring")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument(
        "--warm-only", action="store_true", help="only top-10 and warm `similar` (for 1,000,000)"
    )
    args = parser.parse_args(argv)
    x, planted = vectors(args.n, args.planted)
    report: dict[str, Any] = {
        "n": args.n,
        "dim": DIM,
        "threshold": THRESHOLD,
        "cpus": len(os.sched_getaffinity(0)),
        "matrix_mb": x.nbytes >> 20,
    }
    report |= bench_similar(x)
    report |= bench_warm_similar(x)
    if args.warm_only:
        return _emit(report, args.out)
    report |= bench_cache(x)
    report |= bench_parse(x)
    report |= bench_dupes(x, planted)
    if args.baseline:
        report |= bench_baseline(x)
    return _emit(report, args.out)


def _emit(report: dict[str, Any], out: Path | None) -> int:
    text = json.dumps(report, indent=2)
    sys.stdout.write(text + "\n")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
