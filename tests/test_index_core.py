"""The core of the vector index (dinoembed/collections/index.py): what a vector carries,
prefix filters, and duplicate groups from recorded neighbours against the all-pairs path."""

from __future__ import annotations

import numpy as np
import pytest

from dinoembed.collections.collection import Entry
from dinoembed.collections.dupes import DupeGroup, candidates, group_duplicates
from dinoembed.collections.index import (
    Hit,
    IndexLimitError,
    Listed,
    encode_neighbours,
    folder_prefixes,
    index_duplicates,
    needed_index,
    neighbours_of_hits,
    prefix_filter,
    record_of,
)
from dinoembed.results.schema import Embedding, EmbeddingResult, ModelInfo, Neighbour, SourceInfo
from dinoembed.results.sidecars import Recipe

MODEL = ModelInfo(name="m", sha256="ab" * 32, preprocess="center-crop", input_size=224)


def test_folder_prefixes_are_every_ancestor_folder() -> None:
    assert folder_prefixes("a/b/c.jpg") == ["a/", "a/b/"]
    assert folder_prefixes("c.jpg") == []


def test_folder_prefixes_stay_within_the_filterable_budget() -> None:
    deep = "/".join(["x" * 100] * 30) + "/p.jpg"
    kept = folder_prefixes(deep)
    assert sum(len(p) + 4 for p in kept) <= 1200 and deep.startswith(kept[-1])


@pytest.mark.parametrize(
    ("prefix", "where", "recheck"),
    [
        ("", None, False),
        ("photos/", {"prefixes": {"$eq": "photos/"}}, False),
        ("photos/ca", {"prefixes": {"$eq": "photos/"}}, True),
        ("ph", None, True),
    ],
)
def test_prefix_filter(prefix: str, where: object, recheck: bool) -> None:
    assert prefix_filter(prefix) == (where, recheck)


def test_record_of_carries_what_similar_and_dupes_need() -> None:
    result = EmbeddingResult(
        file_path="s3://b/p/cat.jpg",
        status="success",
        embedding=Embedding(embedding=[0.6, 0.8], embedding_dim=2, normalized=True),
        model=MODEL,
        source=SourceInfo(size=10, etag='"e"', sha256="f" * 64, width=4, height=3),
        neighbours=[Neighbour(key="p/dog.jpg", score=0.97)],
    )
    record = record_of("p/cat.jpg", result)
    assert record.vector == pytest.approx([0.6, 0.8])
    assert record.metadata == {
        "prefixes": ["p/"],
        "etag": '"e"',
        "sha256": "f" * 64,
        "size": 10,
        "width": 4,
        "height": 3,
        "neighbours": '[["p/dog.jpg",0.97]]',
    }


def test_error_results_are_never_indexed() -> None:
    result = EmbeddingResult(file_path="x", status="error", error="bad", model=MODEL)
    with pytest.raises(IndexLimitError, match="error results"):
        record_of("x.jpg", result)


def test_neighbours_leave_out_the_image_itself_and_those_below_the_threshold() -> None:
    hits = [Hit("a", 1.0), Hit("b", 0.96), Hit("c", 0.94), Hit("d", 0.99)]
    got = neighbours_of_hits(hits, "a", 0.95)
    assert [(n.key, n.score) for n in got] == [("d", 0.99), ("b", 0.96)]


def test_groups_from_neighbours_equal_the_all_pairs_groups() -> None:
    # GIVEN 400 unit vectors with planted near-duplicates and identical files
    rng = np.random.default_rng(11)
    x = rng.standard_normal((400, 16)).astype(np.float32)
    for a, b in [(1, 2), (2, 3), (10, 11), (20, 21), (30, 31)]:
        x[b] = x[a] + 0.05 * rng.standard_normal(16)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sha = {i: f"{i:064x}" for i in range(400)} | {50: "e" * 64, 51: "e" * 64}
    x[51] = x[50]
    keys = [f"k{i:03d}.jpg" for i in range(400)]
    # AND neighbours recorded as the index would (numpy: every other image >= 0.95, top 20)
    cos = x @ x.T
    listing = []
    for i, key in enumerate(keys):
        order = [j for j in np.argsort(-cos[i])[:21] if j != i and cos[i, j] >= 0.95]
        hits = [Neighbour(key=keys[j], score=float(cos[i, j])) for j in order]
        md = {"sha256": sha[i], "size": 100 + i % 3, "width": 10, "height": 10 + i % 5}
        md["neighbours"] = encode_neighbours(hits)
        listing.append(Listed(key, md))
    # WHEN grouped from the neighbours, and the all-pairs way
    found = index_duplicates(listing, 0.95)
    entries = [
        Entry(k + ".json", "", k, None, i, 100 + i % 3, sha[i], 10, 10 + i % 5)
        for i, k in enumerate(keys)
    ]
    pairs, _ = candidates(x, 0.95)
    reference = group_duplicates(entries, pairs, 0.95)

    # THEN the same groups, kinds and keeps
    def shape(rows: list[Entry], groups: list[DupeGroup]) -> list[tuple[object, ...]]:
        return [(g.kind, [rows[m].path for m in g.members], rows[g.keep].path) for g in groups]

    assert shape(found.rows, found.groups) == shape(entries, reference)
    assert found.images == 400 and len(reference) == 5


def test_an_index_is_needed_by_name_whether_given_alone_or_with_its_bucket() -> None:
    # the recipe's index: m's sha256 begins abababab, center-crop, L2-normalised
    recipe = Recipe(MODEL, normalize=True)
    name = "m-abababab-crop-l2"
    assert needed_index(name, recipe) is None
    assert needed_index(f"vectors/{name}", recipe) is None
    assert needed_index("m-abababab-crop-raw", recipe) == name
    assert needed_index(f"{name}/other", recipe) == name
    assert needed_index(name, Recipe(MODEL, normalize=False)) == "m-abababab-crop-raw"
