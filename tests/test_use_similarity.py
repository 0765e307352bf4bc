"""Exact cosine top-k and near-duplicate groups against brute-force float64 references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from dinoembed.collections.similarity import (
    linked_components,
    similar_pairs,
    top_k,
)
from dinoembed.common.vectors import normalize_rows
from tests.test_use_support import unit_rows, with_near_duplicates

Pair = tuple[int, int]
Component = tuple[tuple[int, ...], float, float]


def components(x: NDArray[np.float32], threshold: float, *, tile: int) -> list[Component]:
    """The duplicate groups as ``dupes`` builds them: components of the similar pairs."""
    pairs = similar_pairs(x, threshold, tile=tile)
    edges = zip(pairs.score.tolist(), pairs.left.tolist(), pairs.right.tolist(), strict=True)
    return linked_components(x.shape[0], edges)


def brute_pairs(x: NDArray[np.float32], threshold: float) -> set[Pair]:
    scores = x.astype(np.float64) @ x.astype(np.float64).T
    left, right = np.nonzero(np.triu(scores >= threshold, k=1))
    return set(zip(left.tolist(), right.tolist(), strict=True))


def brute_groups(x: NDArray[np.float32], threshold: float) -> set[frozenset[int]]:
    """Connected components by breadth-first search over the full float64 score matrix,
    independently of the union-find under test."""
    adjacent = (x.astype(np.float64) @ x.astype(np.float64).T) >= threshold
    seen: set[int] = set()
    groups: set[frozenset[int]] = set()
    for start in range(x.shape[0]):
        if start in seen:
            continue
        component, frontier = {start}, [start]
        while frontier:
            node = frontier.pop()
            for other in np.nonzero(adjacent[node])[0].tolist():
                if other not in component:
                    component.add(other)
                    frontier.append(other)
        seen |= component
        if len(component) > 1:
            groups.add(frozenset(component))
    return groups


def margin_ok(x: NDArray[np.float32], threshold: float, margin: float = 1e-4) -> bool:
    """No pair so close to the threshold that float32 rounding could decide it."""
    scores = x.astype(np.float64) @ x.astype(np.float64).T
    return not np.any(np.abs(scores[np.triu_indices(x.shape[0], 1)] - threshold) < margin)


@pytest.mark.parametrize(("n", "dim", "k"), [(1, 8, 5), (50, 16, 1), (2000, 384, 10)])
def test_top_k_matches_a_full_sort(n: int, dim: int, k: int) -> None:
    # GIVEN random unit vectors and a query
    rng = np.random.default_rng(n)
    x = unit_rows(rng, n, dim)
    query = unit_rows(rng, 1, dim)[0]
    # WHEN searching in small blocks (so the per-block merge is exercised)
    idx, scores = top_k(x, query, k, block=7)
    # THEN the answer is the head of a float64 argsort
    reference = x.astype(np.float64) @ query.astype(np.float64)
    expected = np.argsort(-reference, kind="stable")[: min(k, n)]
    assert idx.tolist() == expected.tolist()
    np.testing.assert_allclose(scores, reference[expected], atol=1e-6)


def test_top_k_breaks_ties_by_row_and_handles_k_beyond_n() -> None:
    x = normalize_rows(np.array([[1, 0], [0, 1], [1, 0], [1, 0]], dtype=np.float32))
    idx, scores = top_k(x, np.array([1.0, 0.0]), 10, block=2)
    assert idx.tolist() == [0, 2, 3, 1]
    assert scores.tolist() == [1.0, 1.0, 1.0, 0.0]


def test_top_k_refuses_a_query_of_another_dimension() -> None:
    with pytest.raises(ValueError, match="dimensions"):
        top_k(np.zeros((3, 4), np.float32), np.zeros(5), 2)


@pytest.mark.parametrize(
    ("dim", "tile", "threshold", "workers"),
    [
        (384, 128, 0.95, 1),  # the low-rank filter path (dim >= 256, several tiles)
        (384, 128, 0.95, 3),  # ... shared among threads
        (384, 128, 0.8, 2),
        (32, 100, 0.9, 2),  # small dimensions: tiles scored in full
    ],
)
def test_similar_pairs_are_exactly_the_brute_force_pairs(
    dim: int, tile: int, threshold: float, workers: int
) -> None:
    # GIVEN random vectors with planted near-duplicates (some chained into bigger groups)
    rng = np.random.default_rng(dim + tile)
    base = unit_rows(rng, 700, dim)
    x = with_near_duplicates(rng, base, 150, noise=0.012 if dim > 100 else 0.05)
    assert margin_ok(x, threshold)
    # WHEN finding the pairs above the threshold in tiles
    pairs = similar_pairs(x, threshold, tile=tile, workers=workers)
    got = set(zip(pairs.left.tolist(), pairs.right.tolist(), strict=True))
    # THEN they are the brute-force pairs, sorted, with their true scores
    assert list(zip(pairs.left.tolist(), pairs.right.tolist(), strict=True)) == sorted(got)
    expected = brute_pairs(x, threshold)
    assert len(expected) >= 100
    assert got == expected
    reference = np.einsum("ij,ij->i", x[pairs.left].astype(np.float64), x[pairs.right])
    np.testing.assert_allclose(pairs.score, reference, atol=1e-5)


def threshold_in_a_gap(x: NDArray[np.float32], quantile: float) -> float:
    """A threshold near the given quantile of all pair scores, well away from any of them."""
    scores = np.sort((x.astype(np.float64) @ x.T.astype(np.float64))[np.triu_indices(len(x), 1)])
    i = int(quantile * len(scores))
    while scores[i + 1] - scores[i] < 1e-5:
        i += 1
    return float((scores[i] + scores[i + 1]) / 2)


@pytest.mark.parametrize("dense_share", [0.0, 0.02, 1.0])
def test_filter_stays_exact_on_one_tight_cluster(
    dense_share: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN vectors that all point roughly the same way (the filter prunes little), and
    # tiles scored in full always (0.0), when the filter keeps too much (0.02), or never (1.0)
    monkeypatch.setattr("dinoembed.collections.similarity.DENSE_SHARE", dense_share)
    rng = np.random.default_rng(7)
    centre = unit_rows(rng, 1, 384)
    x = normalize_rows(centre + 0.03 * rng.standard_normal((600, 384)).astype(np.float32))
    threshold = threshold_in_a_gap(x, 0.5)
    # WHEN / THEN the pairs are exactly the brute-force ones
    pairs = similar_pairs(x, threshold, tile=128)
    got = set(zip(pairs.left.tolist(), pairs.right.tolist(), strict=True))
    assert got == brute_pairs(x, threshold)


def test_groups_match_connected_components_of_the_reference_graph() -> None:
    rng = np.random.default_rng(3)
    x = with_near_duplicates(rng, unit_rows(rng, 900, 384), 300, noise=0.012)
    groups = components(x, 0.95, tile=256)
    assert {frozenset(members) for members, _, _ in groups} == brute_groups(x, 0.95)
    assert any(len(members) > 2 for members, _, _ in groups)
    assert all(0.95 <= low <= high <= 1.0 + 1e-6 for _, low, high in groups)


def test_no_groups_among_distinct_vectors() -> None:
    x = unit_rows(np.random.default_rng(4), 500, 384)
    assert components(x, 0.95, tile=64) == []


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 60),
    dim=st.sampled_from([2, 3, 8]),
    threshold=st.floats(0.5, 0.99),
    tile=st.integers(1, 25),
)
def test_groups_property_any_shape_and_tile(
    seed: int, n: int, dim: int, threshold: float, tile: int
) -> None:
    x = unit_rows(np.random.default_rng(seed), n, dim)
    if not margin_ok(x, threshold):
        return
    groups = components(x, threshold, tile=tile)
    assert {frozenset(members) for members, _, _ in groups} == brute_groups(x, threshold)
