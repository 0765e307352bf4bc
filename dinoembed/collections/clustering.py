"""Grouping a collection by visual content: k-means for a given k, HDBSCAN otherwise.

Pure over an L2-normalised float32 matrix (rows in the collection's order), with
scikit-learn (the optional ``cluster`` extra) doing the clustering.

- :func:`kmeans`: exactly ``k`` clusters, every image in one. ``KMeans`` up to
  :data:`FULL_KMEANS_MAX` rows, ``MiniBatchKMeans`` (batches of 4,096) above.
- :func:`density`: the number of clusters comes from the data (HDBSCAN, decision in
  docs/use.md): dense groups of at least ``min_size`` images become clusters, images
  that belong nowhere are ``unclustered``. The vectors are first projected on their
  top :data:`PCA_DIMS` principal directions (fitted on the sample) and scaled back
  to unit length, which keeps HDBSCAN's O(n^2) neighbour search affordable. Above
  :data:`SAMPLE` rows HDBSCAN runs on a fixed sample; every other row joins the
  cluster with the nearest centroid (cosine, full dimensions) when it is at least as
  close as the cluster's loosest sampled member (measured leave-one-out, so that a
  member's own weight in the centroid does not flatter it), else it is unclustered.
  Then members far below their cluster's typical closeness to its centre are moved to
  ``unclustered`` (HDBSCAN lets a few stray rows into a neighbouring cluster). Last, an
  unclustered row that is *clearly* nearer one cluster than any other joins it
  (:func:`_adopt`): HDBSCAN leaves out a member that is less alike than the rest of its
  family (a crop, a heavy re-encode) although it belongs nowhere else. Clearly: its
  cosine to that cluster's centroid is at least :data:`ADOPT_FLOOR` and at least
  :data:`ADOPT_RATIO` times its cosine to any other cluster's centroid.
  Memory stays O(n x d) plus blocks.

Both are deterministic for a given matrix: fixed seeds, a fixed sample, and clusters
numbered by size (largest first), then by their first row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dinoembed.common.vectors import Matrix, normalize_rows
from dinoembed.errors import ConfigError

log = logging.getLogger(__name__)

SEED = 0
SAMPLE = 20_000
PCA_DIMS = 32
MIN_SIZE = 3
FULL_KMEANS_MAX = 20_000
BLOCK = 16_384
OUTLIER_MARGIN = 0.1
ADOPT_FLOOR = 0.3
ADOPT_RATIO = 2.0
NOISE = -1


class MissingExtraError(ConfigError):
    """An optional dependency is not installed."""


@dataclass(frozen=True, slots=True)
class Cluster:
    id: int
    members: tuple[int, ...]  # rows, ascending
    representative: int  # the member closest to the centroid
    cohesion: float  # mean cosine of the members to their centroid


@dataclass(frozen=True, slots=True)
class Clustering:
    method: str
    clusters: tuple[Cluster, ...]
    unclustered: tuple[int, ...]


def _sklearn_cluster() -> Any:
    try:
        import sklearn.cluster
        import sklearn.decomposition
    except ImportError as err:
        raise MissingExtraError(
            "clustering needs scikit-learn: pip install 'dinoembed[cluster]'"
        ) from err
    return sklearn


def kmeans(matrix: Matrix, k: int, *, seed: int = SEED) -> Clustering:
    """``k`` clusters covering every row."""
    n = matrix.shape[0]
    if not 1 <= k <= n:
        raise ConfigError(f"--k {k}: must be between 1 and the number of images ({n})")
    sklearn = _sklearn_cluster()
    if n <= FULL_KMEANS_MAX:
        model = sklearn.cluster.KMeans(n_clusters=k, n_init=4, random_state=seed)
    else:
        model = sklearn.cluster.MiniBatchKMeans(
            n_clusters=k, batch_size=4096, n_init=3, random_state=seed
        )
    labels = np.asarray(model.fit_predict(matrix), dtype=np.int64)
    method = "kmeans" if n <= FULL_KMEANS_MAX else "minibatch-kmeans"
    return _finish(matrix, labels, method)


def density(
    matrix: Matrix, *, min_size: int = MIN_SIZE, sample: int = SAMPLE, seed: int = SEED
) -> Clustering:
    """Clusters of at least ``min_size`` rows found by HDBSCAN; the rest unclustered."""
    if min_size < 2:
        raise ConfigError(f"--min-size {min_size}: a cluster has at least 2 images")
    n, dim = matrix.shape
    if n < min_size:
        return Clustering("hdbscan", (), tuple(range(n)))
    sklearn = _sklearn_cluster()
    rows = np.arange(n)
    if n > sample:
        rows = np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
    fitted = matrix[rows]
    dims = min(PCA_DIMS, dim, len(rows))
    solver = "randomized" if len(rows) > 10 * dims else "full"
    pca = sklearn.decomposition.PCA(n_components=dims, svd_solver=solver, random_state=seed)
    # Back onto the sphere: rows unlike the rest project near the origin, where they would
    # otherwise crowd into one dense, spurious cluster.
    reduced = normalize_rows(pca.fit_transform(fitted)).astype(np.float64)
    model = sklearn.cluster.HDBSCAN(min_cluster_size=min_size, copy=True)
    sampled = np.asarray(model.fit_predict(reduced), dtype=np.int64)
    labels = np.full(n, NOISE, dtype=np.int64)
    labels[rows] = sampled
    if n > sample:
        rest = np.setdiff1d(np.arange(n), rows, assume_unique=True)
        labels[rest] = _assign(matrix, rows, sampled, rest)
    return _finish(matrix, _adopt(matrix, _expel_outliers(matrix, labels, min_size)), "hdbscan")


def _adopt(matrix: Matrix, labels: NDArray[np.int64]) -> NDArray[np.int64]:
    """Unclustered rows clearly nearer one cluster than any other join it (module
    docstring); a row near two clusters, or near none, stays unclustered."""
    found = sorted(set(labels.tolist()) - {NOISE})
    noise = np.flatnonzero(labels == NOISE)
    out = labels.copy()
    if not found or not len(noise):
        return out
    centroids = normalize_rows(
        np.stack([matrix[labels == c].sum(axis=0, dtype=np.float64) for c in found])
    ).astype(np.float32)
    names = np.array(found, dtype=np.int64)
    for start in range(0, len(noise), BLOCK):
        block = noise[start : start + BLOCK]
        scores = matrix[block] @ centroids.T
        best = scores.argmax(axis=1)
        own = scores[np.arange(len(block)), best]
        scores[np.arange(len(block)), best] = -np.inf
        other = scores.max(axis=1) if len(found) > 1 else np.zeros(len(block), np.float32)
        clear = (own >= ADOPT_FLOOR) & (own >= ADOPT_RATIO * np.maximum(other, 0.0))
        out[block[clear]] = names[best[clear]]
    return out


def _assign(
    matrix: Matrix, rows: NDArray[np.int64], sampled: NDArray[np.int64], rest: NDArray[np.int64]
) -> NDArray[np.int64]:
    """Labels for the rows left out of the sample: the nearest centroid's, when as close as
    that cluster's loosest sampled member."""
    found = sorted(set(sampled.tolist()) - {NOISE})
    out = np.full(len(rest), NOISE, dtype=np.int64)
    if not found:
        return out
    sums = np.stack([matrix[rows[sampled == c]].sum(axis=0, dtype=np.float64) for c in found])
    centroids = normalize_rows(sums)
    floors = np.array(
        [_loo_floor(matrix[rows[sampled == c]], s) for c, s in zip(found, sums, strict=True)],
        dtype=np.float32,
    )
    labels = np.array(found, dtype=np.int64)
    for start in range(0, len(rest), BLOCK):
        block = rest[start : start + BLOCK]
        scores = matrix[block] @ centroids.T
        best = scores.argmax(axis=1)
        close = scores[np.arange(len(block)), best] >= floors[best]
        out[start : start + BLOCK] = np.where(close, labels[best], NOISE)
    return out


def _loo_cosines(members: Matrix) -> NDArray[np.float64]:
    """Each member's cosine to the centroid of the other members."""
    total = members.sum(axis=0, dtype=np.float64)
    dots = members.astype(np.float64) @ total
    norms = np.sqrt(np.maximum(total @ total - 2 * dots + 1.0, 1e-12))
    return np.asarray((dots - 1.0) / norms)


def _expel_outliers(matrix: Matrix, labels: NDArray[np.int64], min_size: int) -> NDArray[np.int64]:
    """HDBSCAN lets a few stray rows into a neighbouring cluster; a member much farther from
    the centre than the cluster's typical member (median - max(6 MADs, OUTLIER_MARGIN))
    is unclustered instead. A cluster left smaller than ``min_size`` dissolves."""
    out = labels.copy()
    for label in sorted(set(labels.tolist()) - {NOISE}):
        members = np.flatnonzero(labels == label)
        cosines = _loo_cosines(matrix[members])
        median = float(np.median(cosines))
        spread = float(np.median(np.abs(cosines - median)))
        strays = cosines < median - max(6 * spread, OUTLIER_MARGIN)
        out[members[strays]] = NOISE
        if len(members) - int(strays.sum()) < min_size:
            out[members] = NOISE
    return out


def _loo_floor(members: Matrix, total: NDArray[np.float64]) -> float:
    """The lowest cosine of a member to the centroid of the *other* members."""
    dots = members.astype(np.float64) @ total
    norms = np.sqrt(np.maximum(total @ total - 2 * dots + 1.0, 1e-12))
    return float(((dots - 1.0) / norms).min())


def _finish(matrix: Matrix, labels: NDArray[np.int64], method: str) -> Clustering:
    groups: dict[int, list[int]] = {}
    for row, label in enumerate(labels.tolist()):
        if label != NOISE:
            groups.setdefault(label, []).append(row)
    ordered = sorted(groups.values(), key=lambda m: (-len(m), m[0]))
    clusters = []
    for number, members in enumerate(ordered, 1):
        vectors = matrix[np.asarray(members)]
        centroid = normalize_rows(vectors.mean(axis=0, keepdims=True))[0]
        scores = vectors @ centroid
        best = int(np.argmax(scores))
        clusters.append(Cluster(number, tuple(members), members[best], float(scores.mean())))
    unclustered = np.flatnonzero(labels == NOISE).tolist()
    return Clustering(method, tuple(clusters), tuple(unclustered))
