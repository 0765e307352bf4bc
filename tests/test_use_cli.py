"""`dinoembed similar | dupes | backfill | export` on real photos in a folder.

The tiny stand-in and the position-sensitive probe both separate near-duplicates
of real photos (re-encoded, resized, slightly cropped) from different photos: with
the tiny model the variants of one photo score >= 0.92 and different photos <= 0.70;
with the probe >= 0.82 and <= 0.44. Stand-in embeddings carry no meaning: this
checks the plumbing and the grouping, not DINOv2's notion of similarity.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dinoembed.cli import main
from dinoembed.collections.collection import FolderSource, load_collection
from dinoembed.results.sidecars import read_sidecar
from tests.helpers import encode, make_probe
from tests.test_use_support import SUFFIX

Variant = Callable[[Image.Image], bytes]


def _crop(img: Image.Image, share: float) -> Image.Image:
    w, h = img.size
    dx, dy = int(w * share), int(h * share)
    return img.crop((dx, dy, w - dx, h - dy))


VARIANTS: dict[str, tuple[str, Variant]] = {
    "original": ("png", lambda img: encode(img, "PNG")),
    "jpeg-q60": ("jpg", lambda img: encode(img, "JPEG", quality=60)),
    "half-size": (
        "png",
        lambda img: encode(img.resize((img.width // 2, img.height // 2)), "PNG"),
    ),
    "cropped-3pct": ("jpg", lambda img: encode(_crop(img, 0.03), "JPEG", quality=90)),
}


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([*args])
    out, err = capsys.readouterr()
    return code, out, err


def write_variants(root: Path, photos: dict[str, Image.Image]) -> dict[str, set[str]]:
    """Every variant of every photo under root; photo name -> the paths of its variants."""
    root.mkdir(parents=True, exist_ok=True)
    groups: dict[str, set[str]] = {}
    for name, img in photos.items():
        for variant, (ext, make) in VARIANTS.items():
            path = root / f"{name}-{variant}.{ext}"
            path.write_bytes(make(img))
            groups.setdefault(name, set()).add(str(path.absolute()))
    return groups


@pytest.fixture
def probe_model(tmp_path: Path) -> Path:
    return make_probe(tmp_path / "probe.onnx")


@pytest.fixture(scope="module")
def embedded_folder(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, photos: dict[str, Image.Image]
) -> tuple[Path, dict[str, set[str]]]:
    root = tmp_path_factory.mktemp("use") / "photos"
    groups = write_variants(root, photos)
    assert main(["embed", str(root), "--write-sidecars", "--model", str(tiny_model)]) == 0
    return root, groups


@pytest.fixture
def cache_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DINOEMBED_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize(("model", "threshold"), [("tiny", 0.9), ("probe", 0.75)])
def test_dupes_groups_the_variants_of_each_photo_and_nothing_else(
    model: str,
    threshold: float,
    tmp_path: Path,
    tiny_model: Path,
    probe_model: Path,
    photos: dict[str, Image.Image],
    capsys: pytest.CaptureFixture[str],
    cache_env: Path,
) -> None:
    # GIVEN six real photos, each also re-encoded, resized and slightly cropped, embedded
    model_path = tiny_model if model == "tiny" else probe_model
    root = tmp_path / "photos"
    groups = write_variants(root, photos)
    code, _, _ = cli(capsys, "embed", str(root), "--write-sidecars", "--model", str(model_path))
    assert code == 0
    # WHEN asking for near-duplicate groups
    code, out, _ = cli(capsys, "dupes", str(root), "--threshold", str(threshold), "--json")
    # THEN there is one group per photo, holding exactly its four variants
    assert code == 0
    doc = json.loads(out)
    assert doc["images"] == len(photos) * len(VARIANTS)
    found = {frozenset(g["paths"]) for g in doc["groups"]}
    assert found == {frozenset(paths) for paths in groups.values()}
    assert all(g["min_score"] >= threshold for g in doc["groups"])


def test_dupes_table_output(
    embedded_folder: tuple[Path, dict[str, set[str]]],
    capsys: pytest.CaptureFixture[str],
    cache_env: Path,
) -> None:
    root, groups = embedded_folder
    code, out, _ = cli(capsys, "dupes", str(root), "--threshold", "0.9")
    assert code == 0
    headers = [line for line in out.splitlines() if line.startswith("group ")]
    members = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    keeps = [line for line in out.splitlines() if line.startswith("  ") and "  keep  (" in line]
    assert out.splitlines()[0].startswith(f"24 images: 0 groups of identical files, {len(groups)}")
    assert len(headers) == len(groups) == len(keeps)
    assert all(": 4 images, similar, cosine 0.9" in h for h in headers)
    assert set(members) == set().union(*groups.values())


def test_similar_finds_the_variants_of_an_unseen_copy(
    embedded_folder: tuple[Path, dict[str, set[str]]],
    tiny_model: Path,
    tmp_path: Path,
    photos: dict[str, Image.Image],
    capsys: pytest.CaptureFixture[str],
    cache_env: Path,
) -> None:
    # GIVEN a new copy of one photo, outside the collection (scaled to 80 %, as WebP)
    root, groups = embedded_folder
    chelsea = photos["chelsea"]
    query = tmp_path / "query.webp"
    query.write_bytes(
        encode(chelsea.resize((chelsea.width * 4 // 5, chelsea.height * 4 // 5)), "WEBP")
    )
    # WHEN searching the collection with it
    code, out, _ = cli(
        capsys, "similar", str(query), "--in", str(root), "--model", str(tiny_model), "--json"
    )
    # THEN the four variants of that photo come first, best first
    assert code == 0
    doc = json.loads(out)
    paths = [r["path"] for r in doc["results"]]
    scores = [r["score"] for r in doc["results"]]
    assert len(paths) == 10 and set(paths[:4]) == groups["chelsea"]
    assert scores == sorted(scores, reverse=True)
    assert doc["query"] == str(query.absolute())
    assert doc["model"]["name"] == "standin:tiny"


def test_similar_with_a_sidecar_query_leaves_the_query_out(
    embedded_folder: tuple[Path, dict[str, set[str]]],
    capsys: pytest.CaptureFixture[str],
    cache_env: Path,
) -> None:
    root, groups = embedded_folder
    image = root / "rocket-original.png"
    sidecar = str(image) + SUFFIX
    code, out, _ = cli(capsys, "similar", sidecar, "--in", str(root), "--min-score", "0.9")
    assert code == 0
    lines = [line.split("\t", 1) for line in out.splitlines()]
    assert {path for _, path in lines} == groups["rocket"] - {str(image)}
    assert all(float(score) >= 0.9 for score, _ in lines)


def test_similar_refuses_a_query_model_other_than_the_collections(
    embedded_folder: tuple[Path, dict[str, set[str]]],
    probe_model: Path,
    capsys: pytest.CaptureFixture[str],
    cache_env: Path,
) -> None:
    root, _ = embedded_folder
    query = str(root / "coffee-original.png")
    code, out, err = cli(capsys, "similar", query, "--in", str(root), "--model", str(probe_model))
    assert code == 2 and out == ""
    assert "standin:tiny" in err and "is probe (sha256" in err and "--model" in err


def test_export_npy_and_parquet_hold_the_collection(
    embedded_folder: tuple[Path, dict[str, set[str]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    cache_env: Path,
) -> None:
    # GIVEN the collection as read straight from its sidecars (no cache)
    root, _ = embedded_folder
    reference, _ = load_collection(FolderSource(root, SUFFIX))
    # WHEN exporting it in both formats
    code, out, _ = cli(
        capsys, "export", str(root), "--format", "npy", "--out", str(tmp_path / "v.npy")
    )
    assert code == 0 and json.loads(out)["rows"] == len(reference)
    code, _, _ = cli(
        capsys, "export", str(root), "--format", "parquet", "--out", str(tmp_path / "v.parquet")
    )
    assert code == 0
    # THEN each holds every image's unit vector under its path, and the model
    matrix = np.load(tmp_path / "v.npy")
    index: dict[str, Any] = json.loads((tmp_path / "v.json").read_text())
    np.testing.assert_array_equal(matrix, reference.matrix)
    assert index["paths"] == reference.paths
    assert reference.model is not None and index["model"]["sha256"] == reference.model.sha256
    table = pq.read_table(tmp_path / "v.parquet")
    assert table.column("path").to_pylist() == reference.paths
    vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(vectors, reference.matrix)
    meta = json.loads(table.schema.metadata[b"dinoembed"])
    assert meta["dim"] == 32 and meta["normalized"] is True
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_backfill_folder_embeds_what_has_no_sidecar(
    tmp_path: Path,
    tiny_model: Path,
    photos: dict[str, Image.Image],
    capsys: pytest.CaptureFixture[str],
    cache_env: Path,
) -> None:
    # GIVEN a folder where one image already has a current sidecar and two have none
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(encode(photos["coffee"], "JPEG"))
    (root / "sub" / "b.png").write_bytes(encode(photos["rocket"], "PNG"))
    (root / "c.jpg").write_bytes(encode(photos["flower"], "JPEG"))
    assert (
        cli(capsys, "embed", str(root / "a.jpg"), "--write-sidecars", "--model", str(tiny_model))[0]
        == 0
    )
    before = (root / ("a.jpg" + SUFFIX)).stat().st_mtime_ns
    # WHEN backfilling the folder
    code, _, _ = cli(capsys, "backfill", str(root), "--model", str(tiny_model))
    # THEN every image has a sidecar (subfolders included) and the current one is untouched
    assert code == 0
    for image in (root / "a.jpg", root / "sub" / "b.png", root / "c.jpg"):
        sidecar = read_sidecar(image.with_name(image.name + SUFFIX))
        assert sidecar is not None and sidecar.ok
    assert (root / ("a.jpg" + SUFFIX)).stat().st_mtime_ns == before


def test_empty_folder_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cache_env: Path
) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = cli(capsys, "dupes", str(tmp_path / "empty"))
    assert code == 2 and "no embeddings found" in err and "backfill" in err


def test_help_lists_the_new_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("similar", "dupes", "backfill", "export"):
        assert command in out


def test_parquet_without_pyarrow_says_how_to_get_it(
    embedded_folder: tuple[Path, dict[str, set[str]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    cache_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN an installation without pyarrow (None in sys.modules makes the import fail)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    root, _ = embedded_folder
    out = tmp_path / "v.parquet"
    code, _, err = cli(capsys, "export", str(root), "--format", "parquet", "--out", str(out))
    assert code == 2 and "dinoembed[export]" in err and "--format npy" in err
    assert not out.exists()


def test_a_query_that_is_not_an_image_is_a_clear_error(
    embedded_folder: tuple[Path, dict[str, set[str]]],
    tiny_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    cache_env: Path,
) -> None:
    root, _ = embedded_folder
    query = tmp_path / "query.jpg"
    query.write_bytes(b"\xff\xd8\xff definitely not a jpeg")
    code, out, err = cli(
        capsys, "similar", str(query), "--in", str(root), "--model", str(tiny_model)
    )
    assert code == 2 and out == ""
    assert f"{query}: cannot be used as a query: not an image" in err
