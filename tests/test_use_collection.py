"""Collections of sidecars: loading, skipping errors, refusing mixed models, the cache."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from dinoembed.collections.collection import (
    Collection,
    CollectionCache,
    EmptyCollectionError,
    EntryLines,
    FolderSource,
    MixedModelsError,
    collection_from_sidecars,
    load_collection,
)
from dinoembed.images.pathfilter import ALL, PathFilter
from dinoembed.results.schema import ModelInfo
from dinoembed.results.sidecars import write_sidecar
from tests.test_use_support import MODEL_A, MODEL_B, SUFFIX, result, unit_rows, write_folder


class CountingSource(FolderSource):
    """A folder source that remembers which sidecars it was asked to read."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, SUFFIX)
        self.reads: list[str] = []

    def read(self, names: Sequence[str]) -> Iterator[tuple[str, bytes | None]]:
        self.reads.extend(names)
        return super().read(names)


def cache_for(tmp_path: Path, source: FolderSource) -> CollectionCache:
    return CollectionCache.for_location(tmp_path / "cache", source.location, SUFFIX)


def test_folder_collection_has_unit_rows_in_sidecar_order(tmp_path: Path) -> None:
    # GIVEN sidecars with raw (unnormalised) vectors, one in a subfolder
    root = tmp_path / "photos"
    vectors = np.array([[3, 4, 0], [0, 0, 2], [1, 1, 1]], dtype=np.float32)
    images = write_folder(root, vectors[:2])
    (root / "sub").mkdir()
    write_sidecar(result(str(root / "sub/z.png"), [1, 1, 1]), root / "sub" / ("z.png" + SUFFIX))
    # WHEN loading it
    collection, stats = load_collection(FolderSource(root, SUFFIX))
    # THEN every success is a unit row, named by the image path it records
    assert collection.paths == [str(images[0]), str(images[1]), str(root / "sub/z.png")]
    expected = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(collection.matrix, expected, atol=1e-7)
    assert collection.model == MODEL_A
    assert (stats.listed, stats.read, stats.skipped) == (3, 3, 0)


def test_not_recursive_stays_in_the_top_folder(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    write_folder(root, unit_rows(np.random.default_rng(0), 2, 4))
    write_folder(root / "sub", unit_rows(np.random.default_rng(1), 3, 4))
    collection, _ = load_collection(FolderSource(root, SUFFIX, recursive=False))
    assert len(collection) == 2


def test_error_results_unreadable_sidecars_and_temp_files_are_skipped(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    write_folder(root, unit_rows(np.random.default_rng(0), 2, 4))
    write_sidecar(result(str(root / "bad.jpg"), None), root / ("bad.jpg" + SUFFIX))
    (root / ("junk.jpg" + SUFFIX)).write_text("{not json")
    (root / (".img-0000.jpg" + SUFFIX + ".x.tmp")).write_text("half written")
    collection, stats = load_collection(FolderSource(root, SUFFIX))
    assert len(collection) == 2
    assert stats.skipped == 2
    assert {e.sidecar for e in collection.entries} == {
        "bad.jpg" + SUFFIX,
        "junk.jpg" + SUFFIX,
        "img-0000.jpg" + SUFFIX,
        "img-0001.jpg" + SUFFIX,
    }


@pytest.mark.parametrize(
    "other",
    [MODEL_B, MODEL_A.model_copy(update={"preprocess": "squash"})],
    ids=["other-sha256", "other-preprocess"],
)
def test_mixing_models_is_refused_naming_both(tmp_path: Path, other: ModelInfo) -> None:
    root = tmp_path / "photos"
    write_folder(root, unit_rows(np.random.default_rng(0), 2, 4))
    write_sidecar(result(str(root / "z.jpg"), [1, 0, 0, 0], other), root / ("z.jpg" + SUFFIX))
    with pytest.raises(MixedModelsError) as caught:
        load_collection(FolderSource(root, SUFFIX))
    message = str(caught.value)
    assert "img-0000.jpg" + SUFFIX in message and "z.jpg" + SUFFIX in message
    assert MODEL_A.name in message and other.name in message
    assert other.preprocess in message


def test_an_error_result_of_another_model_does_not_count_as_mixing(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    write_folder(root, unit_rows(np.random.default_rng(0), 2, 4))
    write_sidecar(result(str(root / "z.jpg"), None, MODEL_B), root / ("z.jpg" + SUFFIX))
    collection, _ = load_collection(FolderSource(root, SUFFIX))
    assert len(collection) == 2


def test_cache_refresh_reads_only_what_changed(tmp_path: Path) -> None:
    # GIVEN a cached collection of 50 sidecars
    root = tmp_path / "photos"
    rng = np.random.default_rng(5)
    images = write_folder(root, unit_rows(rng, 50, 8))
    first = CountingSource(root)
    load_collection(first, cache_for(tmp_path, first))
    assert len(first.reads) == 50
    # WHEN one sidecar is rewritten with a new vector, one is deleted and one is added
    changed = unit_rows(rng, 1, 8)[0]
    write_sidecar(result(str(images[7]), changed.tolist()), root / (images[7].name + SUFFIX))
    (root / (images[8].name + SUFFIX)).unlink()
    write_sidecar(result(str(root / "new.jpg"), [1] * 8), root / ("new.jpg" + SUFFIX))
    again = CountingSource(root)
    collection, stats = load_collection(again, cache_for(tmp_path, again))
    # THEN only the changed and the new sidecar were read, and the matrix shows the change
    assert sorted(again.reads) == sorted([images[7].name + SUFFIX, "new.jpg" + SUFFIX])
    assert (stats.read, stats.reused, stats.removed) == (2, 48, 1)
    rows = {e.path: e.row for e in collection.rows}
    np.testing.assert_allclose(collection.matrix[rows[str(images[7])]], changed, atol=1e-6)
    assert str(images[8]) not in rows
    # AND it equals a collection loaded from scratch
    fresh, _ = load_collection(FolderSource(root, SUFFIX))
    assert collection.paths == fresh.paths
    np.testing.assert_array_equal(collection.matrix, fresh.matrix)


def test_unchanged_collection_reads_nothing_and_keeps_one_vectors_file(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    write_folder(root, unit_rows(np.random.default_rng(6), 10, 8))
    source = CountingSource(root)
    cache = cache_for(tmp_path, source)
    load_collection(source, cache)
    write_sidecar(result(str(root / "n.jpg"), [1] * 8), root / ("n.jpg" + SUFFIX))
    load_collection(source, cache)
    source.reads.clear()
    collection, stats = load_collection(source, cache)
    assert source.reads == [] and stats.reused == 11 and len(collection) == 11
    assert len(list(cache.directory.glob("vectors-*.npy"))) == 1


@pytest.mark.parametrize(
    ("damaged", "content"),
    [
        ("vectors-{}.npy", b"not numpy"),
        ("offsets-{}.npy", b"not numpy"),
        ("entries-{}.jsonl", b'["cut off'),  # shorter than its offsets say
    ],
)
def test_a_damaged_cache_is_rebuilt(tmp_path: Path, damaged: str, content: bytes) -> None:
    root = tmp_path / "photos"
    write_folder(root, unit_rows(np.random.default_rng(7), 5, 8))
    source = CountingSource(root)
    cache = cache_for(tmp_path, source)
    load_collection(source, cache)
    index = json.loads(cache.index_path.read_text())
    (cache.directory / damaged.format(index["token"])).write_bytes(content)
    source.reads.clear()
    collection, _ = load_collection(source, cache)
    assert len(source.reads) == 5 and len(collection) == 5


def test_a_model_change_across_refreshes_is_refused(tmp_path: Path) -> None:
    # GIVEN a cached collection of model A, WHEN one sidecar is re-embedded by model B
    root = tmp_path / "photos"
    images = write_folder(root, unit_rows(np.random.default_rng(8), 3, 4))
    source = FolderSource(root, SUFFIX)
    load_collection(source, cache_for(tmp_path, source))
    write_sidecar(result(str(images[1]), [1, 0, 0, 0], MODEL_B), root / (images[1].name + SUFFIX))
    # THEN the refresh refuses the mix
    with pytest.raises(MixedModelsError, match="model-b"):
        load_collection(source, cache_for(tmp_path, source))


def test_fully_re_embedded_collection_switches_model(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    rng = np.random.default_rng(9)
    source = FolderSource(root, SUFFIX)
    write_folder(root, unit_rows(rng, 3, 4), MODEL_A)
    load_collection(source, cache_for(tmp_path, source))
    write_folder(root, unit_rows(rng, 3, 6), MODEL_B)
    collection, _ = load_collection(source, cache_for(tmp_path, source))
    assert collection.model == MODEL_B and collection.matrix.shape == (3, 6)


def test_collection_from_sidecar_bytes(tmp_path: Path) -> None:
    pairs = [
        ("a", result("/x/a.jpg", [0, 2]).to_json().encode()),
        ("b", result("/x/b.jpg", None).to_json().encode()),
        ("c", result("/x/c.jpg", [1, 0]).to_json().encode()),
    ]
    collection = collection_from_sidecars("memory", pairs)
    assert collection.paths == ["/x/a.jpg", "/x/c.jpg"]
    np.testing.assert_allclose(collection.matrix, [[0, 1], [1, 0]])


def test_empty_collection_tells_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    collection, _ = load_collection(FolderSource(tmp_path / "empty", SUFFIX))
    with pytest.raises(EmptyCollectionError, match="dinoembed backfill"):
        collection.require_vectors()


class ListingCounter(CountingSource):
    """Also counts full listings (the walk over every file)."""

    def __init__(self, root: Path, select: PathFilter = ALL) -> None:
        super().__init__(root)
        self.select = select
        self.listings = 0

    def listing(self) -> dict[str, str]:
        self.listings += 1
        return super().listing()


def settled(*folders: Path, age: float = 30.0) -> None:
    """Give folders a modification time well before now, as a folder nobody touched has."""
    then = time.time() - age
    for folder in folders:
        os.utime(folder, (then, then))


def test_a_warm_collection_is_memory_mapped_and_parsed_lazily(tmp_path: Path) -> None:
    # GIVEN a folder collection loaded once into its cache
    root = tmp_path / "photos"
    vectors = unit_rows(np.random.default_rng(20), 6, 8)
    images = write_folder(root, vectors)
    source = FolderSource(root, SUFFIX)
    cache = cache_for(tmp_path, source)
    load_collection(source, cache)
    # WHEN it is loaded again
    collection, _ = load_collection(source, cache)
    # THEN the matrix is a read-only map of the cache file, and each row's entry is there
    assert isinstance(collection.matrix, np.memmap) and not collection.matrix.flags.writeable
    assert isinstance(collection.entries, EntryLines)
    np.testing.assert_allclose(collection.matrix, vectors, atol=1e-6)
    assert [collection.row(i).path for i in range(6)] == [str(p) for p in images]
    assert [e.path for e in collection.entries] == [str(p) for p in images]


def test_an_unchanged_folder_is_not_listed_again(tmp_path: Path) -> None:
    # GIVEN a tree whose folders were last modified a while ago, loaded once
    root = tmp_path / "photos"
    write_folder(root, unit_rows(np.random.default_rng(21), 4, 8))
    (root / "sub").mkdir()
    write_sidecar(result(str(root / "sub/z.png"), [1] * 8), root / "sub" / ("z.png" + SUFFIX))
    settled(root, root / "sub")
    source = ListingCounter(root)
    cache = cache_for(tmp_path, source)
    first, _ = load_collection(source, cache)
    # WHEN it is loaded again, from a new source object as a new command would
    again = ListingCounter(root)
    collection, stats = load_collection(again, cache)
    # THEN nothing was listed or read, and the collection is the same
    assert (again.listings, again.reads) == (0, [])
    assert (stats.listed, stats.read, stats.reused) == (5, 0, 5)
    assert collection.paths == first.paths
    np.testing.assert_array_equal(collection.matrix, first.matrix)


@pytest.mark.parametrize("where", [".", "sub"])
def test_a_sidecar_added_removed_or_replaced_is_seen(tmp_path: Path, where: str) -> None:
    # GIVEN a tree, and a way to load it after its folders settled (so the folder check,
    # not the timestamp margin, is what decides) and then after one change
    root = tmp_path / "photos"
    images = write_folder(root, unit_rows(np.random.default_rng(22), 3, 8))
    (root / "sub").mkdir()
    write_sidecar(result(str(root / "sub/z.png"), [1] * 8), root / "sub" / ("z.png" + SUFFIX))
    source = ListingCounter(root)
    cache = cache_for(tmp_path, source)
    folder = root / where
    new = folder / ("new.png" + SUFFIX)

    def after(change: Callable[[], None]) -> tuple[Collection, int]:
        settled(root, root / "sub")
        load_collection(ListingCounter(root), cache)
        change()
        counter = ListingCounter(root)
        return load_collection(counter, cache)[0], counter.listings

    # WHEN a sidecar is added in one folder (written as dinoembed writes: temp file, rename)
    added, listings = after(lambda: write_sidecar(result(str(folder / "new.png"), [2] * 8), new))
    # THEN the next load lists again and has it; likewise after a removal and a rewrite
    assert listings == 1 and str(folder / "new.png") in added.paths and len(added) == 5
    removed, listings = after(new.unlink)
    assert listings == 1 and str(folder / "new.png") not in removed.paths and len(removed) == 4
    first = result(str(images[0]), [0, 0, 0, 0, 0, 0, 0, 3])
    rewritten, listings = after(lambda: write_sidecar(first, root / (images[0].name + SUFFIX)))
    assert listings == 1
    np.testing.assert_allclose(rewritten.matrix[0], [0, 0, 0, 0, 0, 0, 0, 1])


def test_a_folder_modified_around_its_listing_is_listed_again(tmp_path: Path) -> None:
    # GIVEN a folder changed just now (within the timestamp margin of the listing)
    root = tmp_path / "photos"
    write_folder(root, unit_rows(np.random.default_rng(23), 3, 8))
    source = ListingCounter(root)
    cache = cache_for(tmp_path, source)
    load_collection(source, cache)
    # WHEN it is loaded again at once
    again = ListingCounter(root)
    load_collection(again, cache)
    # THEN the folder is not trusted: it is listed (a change in that instant is not missed)
    assert again.listings == 1


def test_another_include_filter_lists_again(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    write_folder(root, unit_rows(np.random.default_rng(24), 3, 8))
    settled(root)
    cache = cache_for(tmp_path, ListingCounter(root))
    load_collection(ListingCounter(root), cache)
    narrowed = ListingCounter(root, PathFilter(include=("img-0000*",)))
    collection, _ = load_collection(narrowed, cache)
    assert narrowed.listings == 1 and len(collection) == 1
