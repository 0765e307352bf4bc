"""Benchmark of ``dinoembed cluster`` at 100,000 vectors of 384 dimensions.

Synthetic unit vectors (seeded) with a known answer: ``--clusters`` planted groups
(noisy copies of a random centre, cosine ~0.8 to it) holding 80 % of the rows, and
20 % isolated random rows. Each step runs in a fresh subprocess so its peak RSS
(``ru_maxrss``) is its own:

- ``kmeans``: ``--k`` clusters (MiniBatchKMeans above 20,000 rows);
- ``density``: HDBSCAN on a 20,000-row sample after PCA to 32 dimensions, the other
  rows assigned to the nearest centroid.

Agreement with the planted groups: the adjusted Rand index over the planted rows
that were clustered, and how many planted rows were left unclustered.

Usage: ``.venv/bin/python -m benchmarks.clustering [--n 100000] [--k 500] [--out PATH]``
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dinoembed.collections import clustering
from dinoembed.common.vectors import normalize_rows

DIM = 384


def vectors(n: int, groups: int, seed: int = 0) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """``n`` unit rows: 80 % in ``groups`` planted groups, the rest isolated (label -1)."""
    rng = np.random.default_rng(seed)
    planted = int(n * 0.8)
    centres = rng.standard_normal((groups, DIM), dtype=np.float32)
    labels = np.full(n, -1, dtype=np.int64)
    labels[:planted] = rng.integers(0, groups, planted)
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    x[:planted] = centres[labels[:planted]] + 0.75 * x[:planted]
    return normalize_rows(x), labels


def step(name: str, n: int, k: int, groups: int) -> dict[str, Any]:
    from sklearn.metrics import adjusted_rand_score

    matrix, truth = vectors(n, groups)
    start = time.perf_counter()
    result = clustering.kmeans(matrix, k) if name == "kmeans" else clustering.density(matrix)
    seconds = time.perf_counter() - start
    labels = np.full(n, -1, dtype=np.int64)
    for cluster in result.clusters:
        labels[list(cluster.members)] = cluster.id
    planted = truth >= 0
    kept = planted & (labels >= 0)
    return {
        "step": name,
        "method": result.method,
        "rows": n,
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "matrix_mb": round(matrix.nbytes / 2**20),
        "clusters": len(result.clusters),
        "unclustered": len(result.unclustered),
        "isolated_rows_unclustered": int(np.count_nonzero(labels[~planted] == -1)),
        "isolated_rows": int(np.count_nonzero(~planted)),
        "planted_rows_unclustered": int(np.count_nonzero(labels[planted] == -1)),
        "adjusted_rand_planted_clustered": round(
            float(adjusted_rand_score(truth[kept], labels[kept])), 4
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=500)
    parser.add_argument("--groups", type=int, default=500, help="planted groups")
    parser.add_argument("--only", choices=["kmeans", "density"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.only:
        print(json.dumps(step(args.only, args.n, args.k, args.groups)))
        return 0
    results = []
    for name in ("kmeans", "density"):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.clustering",
                "--only",
                name,
                "--n",
                str(args.n),
                "--k",
                str(args.k),
                "--groups",
                str(args.groups),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(done.stdout.splitlines()[-1]))
    doc = {"cpus": os.cpu_count(), "load_before": os.getloadavg()[0], "steps": results}
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
