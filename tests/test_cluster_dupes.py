"""`dinoembed cluster` and the tiers, keep and decisions of `dinoembed dupes`.

Families of near-duplicate real photos (each photo plus a smaller, a brighter, a
recompressed and a few-pixels-cropped copy) are grouped even by the tiny stand-in
model, whose embeddings are otherwise meaningless: variants of one photo score
>= 0.94, different photos <= 0.70. Tests about the algorithms alone write sidecars
with vectors chosen by the test.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from dinoembed.cli import main
from dinoembed.collections.facts import measure
from dinoembed.results.schema import SourceInfo
from dinoembed.results.sidecars import write_sidecar
from tests.helpers import encode
from tests.test_use_support import SUFFIX, result

FAMILY = ("astronaut", "chelsea", "coffee", "rocket", "china", "flower")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([*args])
    out, err = capsys.readouterr()
    return code, out, err


def write_families(root: Path, photos: dict[str, Image.Image]) -> dict[str, set[str]]:
    root.mkdir(parents=True, exist_ok=True)
    families: dict[str, set[str]] = {}
    for name in FAMILY:
        img = photos[name]
        w, h = img.size
        variants = {
            f"{name}.png": encode(img, "PNG"),
            f"{name}-small.png": encode(img.resize((w * 9 // 10, h * 9 // 10)), "PNG"),
            f"{name}-q70.jpg": encode(img, "JPEG", quality=70),
            f"{name}-bright.png": encode(ImageEnhance.Brightness(img).enhance(1.05), "PNG"),
            f"{name}-crop.jpg": encode(img.crop((4, 4, w - 4, h - 4)), "JPEG", quality=92),
        }
        for file, data in variants.items():
            (root / file).write_bytes(data)
        families[name] = {str((root / f).absolute()) for f in variants}
    return families


@pytest.fixture
def cache_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DINOEMBED_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def families(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, photos: dict[str, Image.Image]
) -> tuple[Path, dict[str, set[str]]]:
    root = tmp_path_factory.mktemp("families") / "photos"
    groups = write_families(root, photos)
    assert main(["embed", str(root), "--write-sidecars", "--model", str(tiny_model)]) == 0
    return root, groups


@pytest.mark.parametrize("args", [["--k", "6"], []], ids=["given-k", "chosen-k"])
def test_cluster_recovers_the_families_of_real_photos(
    args: list[str],
    families: tuple[Path, dict[str, set[str]]],
    capsys: pytest.CaptureFixture[str],
    cache_env: Path,
) -> None:
    # GIVEN six families of five near-duplicate copies of real photos
    root, groups = families
    # WHEN clustering with k given, and with k chosen from the data
    code, out, _ = run(capsys, "cluster", str(root), *args, "--json")
    # THEN each cluster is exactly one family, and nothing is left over
    assert code == 0
    doc = json.loads(out)
    assert doc["images"] == 30
    assert {frozenset(c["paths"]) for c in doc["clusters"]} == {
        frozenset(g) for g in groups.values()
    }
    assert doc["unclustered"] == []
    assert [c["id"] for c in doc["clusters"]] == list(range(1, 7))
    assert all(c["size"] == 5 and c["representative"] in c["paths"] for c in doc["clusters"])


def test_chosen_k_leaves_images_that_belong_nowhere_unclustered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cache_env: Path
) -> None:
    # GIVEN three tight groups of eight vectors and two isolated ones (random, 64-d)
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((3, 64))
    vectors = [c + 0.15 * rng.standard_normal(64) for c in centres for _ in range(8)]
    vectors += list(rng.standard_normal((2, 64)))
    root = tmp_path / "v"
    root.mkdir()
    for i, v in enumerate(vectors):
        write_sidecar(result(f"/p/{i:02d}.jpg", v.tolist()), root / f"{i:02d}.jpg{SUFFIX}")
    # WHEN the number of clusters is chosen from the data
    code, out, _ = run(capsys, "cluster", str(root), "--json")
    # THEN the three groups are found and the isolated two are unclustered
    assert code == 0
    doc = json.loads(out)
    expected = [{f"/p/{i:02d}.jpg" for i in range(g * 8, g * 8 + 8)} for g in range(3)]
    assert sorted(map(sorted, (set(c["paths"]) for c in doc["clusters"]))) == sorted(
        map(sorted, expected)
    )
    assert doc["unclustered"] == ["/p/24.jpg", "/p/25.jpg"]
    assert doc["method"] == "hdbscan"


def test_cluster_is_deterministic_and_the_text_lists_every_image(
    families: tuple[Path, dict[str, set[str]]],
    capsys: pytest.CaptureFixture[str],
    cache_env: Path,
) -> None:
    root, groups = families
    first = run(capsys, "cluster", str(root), "--k", "4")[1]
    second = run(capsys, "cluster", str(root), "--k", "4")[1]
    assert first == second
    listed = {line.strip() for line in first.splitlines() if line.startswith("  ")}
    assert listed == set().union(*groups.values())
    assert first.startswith("30 images: 4 clusters (kmeans), 0 unclustered")


def test_cluster_without_scikit_learn_names_the_extra(
    families: tuple[Path, dict[str, set[str]]],
    capsys: pytest.CaptureFixture[str],
    cache_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("sklearn", "sklearn.cluster", "sklearn.decomposition"):
        monkeypatch.setitem(sys.modules, name, None)
    code, out, err = run(capsys, "cluster", str(families[0]))
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "dinoembed: error: clustering needs scikit-learn: pip install 'dinoembed[cluster]'"
    ]


def test_k_larger_than_the_collection_is_a_clear_error(
    families: tuple[Path, dict[str, set[str]]],
    capsys: pytest.CaptureFixture[str],
    cache_env: Path,
) -> None:
    code, _, err = run(capsys, "cluster", str(families[0]), "--k", "31")
    assert code == 2 and "--k 31: must be between 1 and the number of images (30)" in err


@pytest.fixture
def tiers(
    tmp_path: Path, tiny_model: Path, photos: dict[str, Image.Image]
) -> tuple[Path, dict[str, str]]:
    """chelsea at full size, half size and as a byte-identical copy; coffee at two JPEG
    qualities (same pixels, different file sizes); rocket alone."""
    root = tmp_path / "tiers"
    root.mkdir()
    chelsea, coffee = photos["chelsea"], photos["coffee"]
    files = {
        "big": root / "b-chelsea.png",
        "half": root / "a-chelsea-half.png",
        "copy": root / "c-chelsea-copy.png",
        "q95": root / "coffee-q95.jpg",
        "q80": root / "coffee-q80.jpg",
        "rocket": root / "rocket.jpg",
    }
    files["big"].write_bytes(encode(chelsea, "PNG"))
    files["half"].write_bytes(encode(chelsea.resize((225, 150)), "PNG"))
    shutil.copy(files["big"], files["copy"])
    files["q95"].write_bytes(encode(coffee, "JPEG", quality=95))
    files["q80"].write_bytes(encode(coffee, "JPEG", quality=80))
    files["rocket"].write_bytes(encode(photos["rocket"], "JPEG"))
    assert main(["embed", str(root), "--write-sidecars", "--model", str(tiny_model)]) == 0
    return root, {k: str(v.absolute()) for k, v in files.items()}


def test_dupes_tells_identical_files_from_similar_ones_and_suggests_a_keep(
    tiers: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str], cache_env: Path
) -> None:
    # GIVEN sidecars that record neither sha256 nor pixel sizes (made before they existed)
    root, f = tiers
    # WHEN looking for duplicates
    code, out, _ = run(capsys, "dupes", str(root), "--threshold", "0.9", "--json")
    # THEN the identical copy is an exact group, the resized and recompressed ones similar
    assert code == 0
    doc = json.loads(out)
    by_kind = {(g["kind"], frozenset(g["paths"])): g for g in doc["groups"]}
    exact = by_kind["exact", frozenset({f["big"], f["copy"]})]
    assert exact["keep"] == f["big"] and exact["keep_reason"].startswith("identical files: ")
    # the copy takes part in the similar tier through its keep only
    chelsea = by_kind["similar", frozenset({f["big"], f["half"]})]
    assert chelsea["keep"] == f["big"] and chelsea["keep_reason"] == "most pixels (451x300)"
    coffee = by_kind["similar", frozenset({f["q95"], f["q80"]})]
    q95 = Path(f["q95"]).stat().st_size
    assert Path(f["q80"]).stat().st_size < q95
    assert coffee["keep"] == f["q95"]
    # the keep rule: same pixel size, then the oldest file (when they differ), then size
    if Path(f["q95"]).stat().st_mtime < Path(f["q80"]).stat().st_mtime:
        assert coffee["keep_reason"].startswith("same pixel size (600x400), oldest file (")
    else:
        expected = f"same pixel size (600x400), largest file ({q95 / 1000:.1f} KB)"
        assert coffee["keep_reason"] == expected
    assert len(doc["groups"]) == 3 and [g["kind"] for g in doc["groups"]] == [
        "exact",
        "similar",
        "similar",
    ]
    images = {i["path"]: i for g in doc["groups"] for i in g["images"]}
    digest = __import__("hashlib").sha256(Path(f["big"]).read_bytes()).hexdigest()
    assert images[f["copy"]]["sha256"] == digest == images[f["big"]]["sha256"]
    assert (images[f["half"]]["width"], images[f["half"]]["height"]) == (225, 150)


def test_recorded_facts_win_and_measured_ones_are_cached(
    tiers: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str], cache_env: Path
) -> None:
    # GIVEN the half-size image's sidecar claims 9999x9999 pixels (as a newer sidecar would)
    root, f = tiers
    sidecar = Path(f["half"] + SUFFIX)
    old = json.loads(sidecar.read_text())
    old["source"].update({"width": 9999, "height": 9999})
    sidecar.write_text(json.dumps(old))
    # WHEN finding duplicates, then deleting the big image and asking again
    first = json.loads(run(capsys, "dupes", str(root), "--threshold", "0.9", "--json")[1])
    Path(f["rocket"]).unlink()
    again = json.loads(run(capsys, "dupes", str(root), "--threshold", "0.9", "--json")[1])
    # THEN the recorded size decides the keep, and facts measured once are remembered
    chelsea = [g for g in first["groups"] if g["kind"] == "similar" and f["half"] in g["paths"]]
    assert chelsea[0]["keep"] == f["half"] and chelsea[0]["keep_reason"] == (
        "most pixels (9999x9999)"
    )
    assert again == first


@pytest.mark.parametrize(
    ("marked", "expected"),
    [
        # nothing marked: A~C~B is one group
        ([], [{"A", "B", "C"}]),
        # A/B marked: the weaker link C-B is not joined; A and B are never together
        ([["A", "B"]], [{"A", "C"}]),
        # "keep all" for the whole group: nothing comes back
        ([["A", "B", "C"]], []),
        # a pair that is not linked directly changes nothing for the others
        ([["A", "D"]], [{"A", "B", "C"}]),
    ],
)
def test_decisions_keep_marked_pairs_apart(
    marked: list[list[str]],
    expected: list[set[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    cache_env: Path,
) -> None:
    # GIVEN A~C (0.99) and C~B (0.97), A and B not close (0.93 < 0.95), D far away
    root = tmp_path / "v"
    root.mkdir()
    a = np.array([1.0, 0.0, 0.0, 0.0])
    c = np.array([0.99, np.sqrt(1 - 0.99**2), 0.0, 0.0])
    b = np.array([0.93, 0.36, np.sqrt(1 - 0.93**2 - 0.36**2), 0.0])
    d = np.array([0.0, 0.0, 0.0, 1.0])
    assert 0.95 < float(b @ c) < 0.99 and float(a @ b) < 0.95
    for name, v in {"A": a, "B": b, "C": c, "D": d}.items():
        write_sidecar(result(str(root / name), v.tolist()), root / f"{name}{SUFFIX}")
    decisions = tmp_path / "decisions.json"
    decisions.write_text(json.dumps({"not_duplicates": [[f"v/{n}" for n in m] for m in marked]}))
    # WHEN finding groups with the decisions (paths relative to the decisions file)
    code, out, _ = run(capsys, "dupes", str(root), "--decisions", str(decisions), "--json")
    # THEN marked pairs are never in one group
    assert code == 0
    found = [{Path(p).name for p in g["paths"]} for g in json.loads(out)["groups"]]
    assert found == expected


def test_a_marked_identical_copy_is_not_grouped(
    tiers: tuple[Path, dict[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    cache_env: Path,
) -> None:
    root, f = tiers
    decisions = tmp_path / "d.json"
    decisions.write_text(json.dumps({"not_duplicates": [[f["big"], f["copy"]]]}))
    doc = json.loads(
        run(
            capsys,
            "dupes",
            str(root),
            "--threshold",
            "0.9",
            "--decisions",
            str(decisions),
            "--json",
        )[1]
    )
    assert all(g["kind"] == "similar" for g in doc["groups"])
    assert all({f["big"], f["copy"]} - set(g["paths"]) for g in doc["groups"])


def test_a_broken_decisions_file_is_a_clear_error(
    tiers: tuple[Path, dict[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    cache_env: Path,
) -> None:
    bad = tmp_path / "d.json"
    bad.write_text('{"not_duplicates": "a.jpg"}')
    code, out, err = run(capsys, "dupes", str(tiers[0]), "--decisions", str(bad))
    assert code == 2 and out == "" and "not_duplicates" in err and str(bad) in err


def test_dupes_without_groups_still_says_so(
    tiers: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str], cache_env: Path
) -> None:
    root, _ = tiers
    code, out, _ = run(capsys, "dupes", str(root), "--threshold", "1.0")
    # the identical copy is still found at any threshold; nothing else is
    assert code == 0
    assert out.splitlines()[0] == (
        "6 images: 1 group of identical files, 0 groups of similar images (cosine >= 1.0)"
    )
    (root / ("c-chelsea-copy.png" + SUFFIX)).unlink()
    code, out, _ = run(capsys, "dupes", str(root), "--threshold", "1.0", "--json")
    assert json.loads(out)["groups"] == []


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_measured_pixel_size_follows_exif_orientation(
    orientation: int, photos: dict[str, Image.Image]
) -> None:
    import io

    from PIL import ImageOps

    img = photos["rocket"].resize((300, 200))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(img, "JPEG", exif=exif.tobytes())
    reference = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).size
    facts = measure(io.BytesIO(data), digest=True)
    assert (facts.width, facts.height) == reference
    assert reference == ((200, 300) if orientation in (6, 8) else (300, 200))
    assert facts.size == len(data)
    assert facts.sha256 == __import__("hashlib").sha256(data).hexdigest()


def test_sidecar_source_fields_round_trip() -> None:
    source = SourceInfo(size=3, sha256="ab", width=4, height=5)
    assert SourceInfo.model_validate_json(source.model_dump_json()) == source
