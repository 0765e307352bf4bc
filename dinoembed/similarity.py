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
- :func:`duplicate_groups`: connected components of those pairs (union-find).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Matrix = NDArray[np.float32]

TILE = 1024
FILTER_RANK = 64
MIN_DIM_FOR_FILTER = 4 * FILTER_RANK
# Float32 rounding allowance for the filter (scores are within ~1e-6 of exact for unit rows).
SLACK = 1e-3
# When more than this share of a tile survives the filter, score the whole tile instead.
DENSE_SHARE = 0.02


def normalize_rows(matrix: NDArray[np.floating]) -> Matrix:
    """Rows scaled to unit length (all-zero rows stay zero), as a new float32 array."""
    out = np.array(matrix, dtype=np.float32, copy=True)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


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
    """The rows projected on their top principal directions, and the residual norms."""

    def __init__(self, matrix: Matrix, rank: int) -> None:
        second_moment = matrix.T.astype(np.float64) @ matrix.astype(np.float64)
        _, vectors = np.linalg.eigh(second_moment)
        basis = np.ascontiguousarray(vectors[:, ::-1][:, :rank], dtype=np.float32)
        self.low: Matrix = np.ascontiguousarray(matrix @ basis)
        energy = np.einsum("ij,ij->i", matrix, matrix) - np.einsum("ij,ij->i", self.low, self.low)
        self.residual: Matrix = np.sqrt(np.clip(energy, 0.0, None)).astype(np.float32)


def similar_pairs(matrix: Matrix, threshold: float, *, tile: int = TILE) -> Pairs:
    """Every pair of rows ``i < j`` whose cosine is >= ``threshold`` (exact)."""
    n, dim = matrix.shape
    lefts: list[NDArray[np.int64]] = []
    rights: list[NDArray[np.int64]] = []
    scores: list[Matrix] = []
    low = _LowRank(matrix, FILTER_RANK) if dim >= MIN_DIM_FOR_FILTER and n > tile else None
    for i0, j0 in _upper_tiles(n, tile):
        rows, cols = _tile_pairs(matrix, low, threshold, i0, j0, tile)
        if rows.size:
            lefts.append(rows)
            rights.append(cols)
            scores.append(np.einsum("ij,ij->i", matrix[rows], matrix[cols]))
    if not lefts:
        return Pairs(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))
    left, right, score = np.concatenate(lefts), np.concatenate(rights), np.concatenate(scores)
    keep = score >= threshold
    return Pairs(left[keep], right[keep], score[keep].astype(np.float32))


def _upper_tiles(n: int, tile: int) -> Iterator[tuple[int, int]]:
    for i0 in range(0, n, tile):
        for j0 in range(i0, n, tile):
            yield i0, j0


def _tile_pairs(
    matrix: Matrix, low: _LowRank | None, threshold: float, i0: int, j0: int, tile: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Candidate pairs ``(i, j)``, ``i < j``, of one tile: a superset of those that qualify."""
    i1, j1 = min(i0 + tile, matrix.shape[0]), min(j0 + tile, matrix.shape[0])
    if low is None:
        scores = matrix[i0:i1] @ matrix[j0:j1].T
        mask = scores >= threshold - SLACK
    else:
        bound = low.residual[i0:i1, None] * low.residual[None, j0:j1].max()
        scores = low.low[i0:i1] @ low.low[j0:j1].T
        mask = scores >= (threshold - SLACK) - bound
        survivors = np.count_nonzero(mask)
        if not survivors:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        if survivors > DENSE_SHARE * mask.size:
            mask = (matrix[i0:i1] @ matrix[j0:j1].T) >= threshold - SLACK
    if i0 == j0:
        mask = np.triu(mask, k=1)
    rows, cols = np.nonzero(mask)
    return rows.astype(np.int64) + i0, cols.astype(np.int64) + j0


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


@dataclass(frozen=True, slots=True)
class Group:
    """A set of near-duplicates (row indices, ascending) and the scores of its linking pairs."""

    members: tuple[int, ...]
    min_score: float
    max_score: float


def duplicate_groups(matrix: Matrix, threshold: float, *, tile: int = TILE) -> list[Group]:
    """Connected components (size >= 2) of the graph of pairs with cosine >= ``threshold``.

    Largest groups first, then by their first row.
    """
    pairs = similar_pairs(matrix, threshold, tile=tile)
    return groups_from_pairs(matrix.shape[0], pairs)


def groups_from_pairs(n: int, pairs: Pairs) -> list[Group]:
    sets = UnionFind(n)
    for a, b in zip(pairs.left.tolist(), pairs.right.tolist(), strict=True):
        sets.union(a, b)
    members: dict[int, list[int]] = {}
    for node in sorted({*pairs.left.tolist(), *pairs.right.tolist()}):
        members.setdefault(sets.find(node), []).append(node)
    low: dict[int, float] = {}
    high: dict[int, float] = {}
    for a, s in zip(pairs.left.tolist(), pairs.score.tolist(), strict=True):
        root = sets.find(a)
        low[root] = min(low.get(root, s), s)
        high[root] = max(high.get(root, s), s)
    groups = [Group(tuple(m), low[root], high[root]) for root, m in members.items()]
    groups.sort(key=lambda g: (-len(g.members), g.members[0]))
    return groups
