"""Exact cosine similarity over an embedding matrix: top-k search and near-duplicate groups.

Pure numpy, float32. Rows are expected L2-normalised (``Collection`` does it), so a
dot product is the cosine.

- :func:`top_k`: one query against every row, in blocks, ``argpartition`` per block.
- :func:`similar_pairs`: every pair ``i < j`` with cosine >= threshold, exactly. The
  n x n score matrix is never held: square tiles go through a cheap *exact* filter
  first. With P the top ``r`` principal directions of the rows and ``res(x)`` the
  norm of the part of x outside them, Cauchy-Schwarz gives
  ``a.b <= (Pa).(Pb) + res(a) * res(b)``, so a tile's pairs whose low-rank score
  plus that bound stays under the threshold cannot qualify and are dropped; the
  few survivors are scored on all dimensions. Nothing above the threshold is ever
  missed; a tile where the filter would keep too much is simply scored in full.
  Tiles are shared out among threads, each with a single-threaded BLAS.
- :func:`linked_components`: connected components of those pairs (union-find), optionally
  never joining given pairs (``collections.dupes`` builds its groups on it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from dinoembed.common.vectors import Matrix

TILE = 1024
FILTER_RANK = 64
MIN_DIM_FOR_FILTER = 4 * FILTER_RANK
# Float32 rounding allowance for the filter (scores are within ~1e-6 of exact for unit rows).
SLACK = 1e-3
# When more than this share of a tile survives the filter, score the whole tile instead.
DENSE_SHARE = 0.02
BASIS_SAMPLE = 20_000


def top_k(
    matrix: Matrix, query: NDArray[np.floating], k: int, *, block: int = 65536
) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """Indices and scores of the ``k`` rows most similar to ``query``, best first.

    Ties are broken by the lower index, so the answer is deterministic.
    """
    q = np.asarray(query, dtype=np.float32).ravel()
    if matrix.ndim != 2 or q.shape[0] != matrix.shape[1]:
        raise ValueError(f"query has {q.shape[0]} dimensions, the matrix {matrix.shape[1:]}")
    n = matrix.shape[0]
    k = max(0, min(k, n))
    if k == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    best_idx: list[NDArray[np.int64]] = []
    best_score: list[Matrix] = []
    for start in range(0, n, block):
        scores = matrix[start : start + block] @ q
        keep = min(k, scores.shape[0])
        part = np.argpartition(-scores, keep - 1)[:keep]
        best_idx.append(part.astype(np.int64) + start)
        best_score.append(scores[part])
    idx = np.concatenate(best_idx)
    score = np.concatenate(best_score)
    order = np.lexsort((idx, -score))[:k]
    return idx[order], score[order].astype(np.float32)


@dataclass(frozen=True, slots=True)
class Pairs:
    """Pairs ``(left[i], right[i])`` with ``left < right`` and their cosine ``score[i]``."""

    left: NDArray[np.int64]
    right: NDArray[np.int64]
    score: Matrix

    def __len__(self) -> int:
        return int(self.left.shape[0])


class _LowRank:
    """The rows projected on their top principal directions, and the residual norms.

    The directions come from a sample of rows (they only decide how much the filter
    prunes, never whether it is exact: any orthonormal basis gives a valid bound).
    """

    def __init__(self, matrix: Matrix, rank: int, sample: int = BASIS_SAMPLE) -> None:
        rows = matrix
        if matrix.shape[0] > sample:
            pick = np.random.default_rng(0).choice(matrix.shape[0], sample, replace=False)
            rows = matrix[np.sort(pick)]
        _, vectors = np.linalg.eigh((rows.T @ rows).astype(np.float64))
        basis = np.ascontiguousarray(vectors[:, ::-1][:, :rank], dtype=np.float32)
        self.low: Matrix = np.ascontiguousarray(matrix @ basis)
        energy = np.einsum("ij,ij->i", matrix, matrix) - np.einsum("ij,ij->i", self.low, self.low)
        self.residual: Matrix = np.sqrt(np.clip(energy, 0.0, None)).astype(np.float32)


def usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def similar_pairs(
    matrix: Matrix, threshold: float, *, tile: int = TILE, workers: int | None = None
) -> Pairs:
    """Every pair of rows ``i < j`` whose cosine is >= ``threshold`` (exact), sorted.

    Tiles are spread over ``workers`` threads (default: the usable CPUs), each
    calling BLAS single-threaded: a multi-threaded BLAS on tiles this small spends
    most of its time synchronising (3-4x the CPU time, measured).
    """
    n, dim = matrix.shape
    workers = workers or usable_cpus()
    order: NDArray[np.int64] | None = None
    low: _LowRank | None = None
    with threadpool_limits(1):
        if dim >= MIN_DIM_FOR_FILTER and n > tile:
            low = _LowRank(matrix, FILTER_RANK)
            # Rows sorted by residual norm make each tile's largest residual a tight bound.
            order = np.argsort(-low.residual, kind="stable")
            low.low, low.residual = low.low[order], low.residual[order]
            matrix = matrix[order]
        found = _pairs(matrix, low, threshold, tile, workers)
    left, right = found.left, found.right
    if order is not None:
        left, right = order[left], order[right]
        left, right = np.minimum(left, right), np.maximum(left, right)
    by_pair = np.lexsort((right, left))
    return Pairs(left[by_pair], right[by_pair], found.score[by_pair])


def _pairs(
    matrix: Matrix, low: _LowRank | None, threshold: float, tile: int, workers: int
) -> Pairs:
    starts = list(range(0, matrix.shape[0], tile))
    shared = _Shared.build(matrix, low)
    workers = max(1, min(workers, len(starts)))

    def work(first: int) -> list[Pairs]:
        tiles = _Tiles(matrix, low, threshold, tile, shared)
        found: list[Pairs] = []
        for i0 in starts[first::workers]:  # round-robin: the triangle's rows shrink
            for j0 in range(i0, matrix.shape[0], tile):
                rows, cols = tiles.candidates(i0, j0)
                if rows.size:
                    score = np.einsum("ij,ij->i", matrix[rows], matrix[cols])
                    keep = score >= threshold
                    found.append(Pairs(rows[keep], cols[keep], score[keep]))
        return found

    if workers == 1:
        parts = work(0)
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="dinoembed-dupes") as pool:
            parts = [p for chunk in pool.map(work, range(workers)) for p in chunk]
    if not parts:
        return Pairs(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))
    return Pairs(
        np.concatenate([p.left for p in parts]),
        np.concatenate([p.right for p in parts]),
        np.concatenate([p.score for p in parts]).astype(np.float32),
    )


@dataclass(frozen=True, slots=True)
class _Shared:
    """Column-major copies all threads read: of the low-rank rows when filtering, else of
    the rows themselves (dense tiles of a filtered run use a transposed view instead)."""

    columns: Matrix | None
    low_columns: Matrix | None

    @classmethod
    def build(cls, matrix: Matrix, low: _LowRank | None) -> _Shared:
        if low is None:
            return cls(np.ascontiguousarray(matrix.T), None)
        return cls(None, np.ascontiguousarray(low.low.T))


class _Tiles:
    """Scores one tile at a time into reused buffers (column-major copies feed BLAS fast)."""

    def __init__(
        self, matrix: Matrix, low: _LowRank | None, threshold: float, tile: int, shared: _Shared
    ) -> None:
        self.n = matrix.shape[0]
        self.tile = tile
        self.matrix = matrix
        self.columns = shared.columns
        self.low = low
        self.low_columns = shared.low_columns
        self.cut = threshold - SLACK
        side = min(tile, self.n)
        self.scores: Matrix = np.empty((side, side), np.float32)
        self.mask = np.empty((side, side), bool)

    def candidates(self, i0: int, j0: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Pairs ``(i, j)``, ``i < j``, of one tile: a superset of those that qualify."""
        i1, j1 = min(i0 + self.tile, self.n), min(j0 + self.tile, self.n)
        if self.low is None:
            mask = self._full(i0, i1, j0, j1)
        else:
            mask = self._filtered(self.low, i0, i1, j0, j1)
            survivors = np.count_nonzero(mask)
            if not survivors:
                return np.empty(0, np.int64), np.empty(0, np.int64)
            if survivors > DENSE_SHARE * mask.size:
                mask = self._full(i0, i1, j0, j1)
        if i0 == j0:
            mask = np.triu(mask, k=1)
        rows, cols = np.nonzero(mask)
        return rows.astype(np.int64) + i0, cols.astype(np.int64) + j0

    def _full(self, i0: int, i1: int, j0: int, j1: int) -> NDArray[np.bool_]:
        scores, mask = self.scores[: i1 - i0, : j1 - j0], self.mask[: i1 - i0, : j1 - j0]
        right = self.matrix[j0:j1].T if self.columns is None else self.columns[:, j0:j1]
        np.matmul(self.matrix[i0:i1], right, out=scores)
        return np.greater_equal(scores, self.cut, out=mask)

    def _filtered(self, low: _LowRank, i0: int, i1: int, j0: int, j1: int) -> NDArray[np.bool_]:
        assert self.low_columns is not None
        scores, mask = self.scores[: i1 - i0, : j1 - j0], self.mask[: i1 - i0, : j1 - j0]
        np.matmul(low.low[i0:i1], self.low_columns[:, j0:j1], out=scores)
        needed = self.cut - low.residual[i0:i1] * low.residual[j0:j1].max()
        return np.greater_equal(scores, needed[:, None], out=mask)


class UnionFind:
    """Disjoint sets over ``0..n-1`` with path halving and union by size."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]


def linked_components(
    n: int,
    edges: Iterable[tuple[float, int, int]],
    forbidden: Mapping[int, set[int]] | None = None,
) -> list[tuple[tuple[int, ...], float, float]]:
    """Components of size >= 2 of the graph of ``(score, a, b)`` edges, joined strongest
    edge first and never joining a pair in ``forbidden`` (row -> rows it must not be
    grouped with); each with the lowest and highest score of the edges inside it."""
    forbidden = forbidden or {}
    ordered = sorted(edges, key=lambda e: (-e[0], e[1], e[2]))
    sets = UnionFind(n)
    marked: dict[int, set[int]] = {r: {r} for r in forbidden}  # root -> its constrained rows
    for _, a, b in ordered:
        ra, rb = sets.find(a), sets.find(b)
        if ra == rb:
            continue
        mine, theirs = marked.get(ra, set()), marked.get(rb, set())
        small, other = (mine, rb) if len(mine) <= len(theirs) else (theirs, ra)
        if any(sets.find(y) == other for x in small for y in forbidden[x]):
            continue
        sets.union(a, b)
        root = sets.find(a)
        if mine or theirs:
            marked[root] = mine | theirs
    stats: dict[int, list[float]] = {}
    for s, a, b in ordered:
        if sets.find(a) == sets.find(b):
            low_high = stats.setdefault(sets.find(a), [s, s])
            low_high[0], low_high[1] = min(low_high[0], s), max(low_high[1], s)
    members: dict[int, list[int]] = {}
    for node in sorted({x for _, a, b in ordered for x in (a, b)}):
        members.setdefault(sets.find(node), []).append(node)
    return [(tuple(m), stats[root][0], stats[root][1]) for root, m in members.items() if len(m) > 1]
