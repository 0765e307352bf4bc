"""Issue 20, what a newcomer trips over: NUL-separated path lists, one-line decoder
errors, one error counting, names in `status`, paths-only outputs, refused mistakes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinoembed.cli.commands import main
from tests.helpers import encode


def run_cli(*args: str | Path, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DINOEMBED_")}
    return subprocess.run(
        [sys.executable, "-m", "dinoembed.cli", *map(str, args)],
        input=stdin,
        env=env,
        capture_output=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def two_photos(tmp_path: Path, photos: dict[str, Image.Image]) -> list[Path]:
    """Two real photos, one with a space and a newline-free odd name."""
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = [folder / "astronaut one.jpg", folder / "coffee.png"]
    paths[0].write_bytes(encode(photos["astronaut"].resize((48, 48)), "JPEG"))
    paths[1].write_bytes(encode(photos["coffee"].resize((48, 48)), "PNG"))
    return paths


# 1. NUL-separated path lists


@pytest.mark.parametrize("how", [["-"], ["--files-from", "-"]], ids=["dash", "files-from-dash"])
@pytest.mark.parametrize("flag", ["-0", "--null"])
def test_null_separated_list_on_stdin(
    two_photos: list[Path], tiny_model: Path, how: list[str], flag: str
) -> None:
    # GIVEN paths as `find -print0` writes them
    stdin = b"".join(os.fsencode(p) + b"\0" for p in two_photos)
    # WHEN embed reads them with -0
    done = run_cli("embed", *how, flag, "--model", tiny_model, stdin=stdin)
    # THEN both are embedded, in list order
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert [r["file_path"] for r in out] == [str(p) for p in two_photos]
    assert [r["status"] for r in out] == ["success", "success"]


def test_null_separated_files_from_file(
    two_photos: list[Path], tiny_model: Path, tmp_path: Path
) -> None:
    lst = tmp_path / "list0"
    lst.write_bytes(b"\0".join(os.fsencode(p) for p in reversed(two_photos)))  # no final NUL
    done = run_cli("embed", "--files-from", lst, "-0", "--model", tiny_model)
    assert done.returncode == 0, done.stderr
    out = [json.loads(line)["file_path"] for line in done.stdout.decode().splitlines()]
    assert out == [str(p) for p in reversed(two_photos)]


@pytest.mark.parametrize("source", ["stdin", "file"])
def test_a_nul_byte_in_a_line_list_is_one_line_error(
    two_photos: list[Path], tiny_model: Path, tmp_path: Path, source: str
) -> None:
    # GIVEN a NUL-separated list read without -0
    data = b"".join(os.fsencode(p) + b"\0" for p in two_photos)
    if source == "stdin":
        done = run_cli("embed", "-", "--model", tiny_model, stdin=data)
    else:
        lst = tmp_path / "list0"
        lst.write_bytes(data)
        done = run_cli("embed", "--files-from", lst, "--model", tiny_model)
    # THEN one line naming the fix, exit 2, nothing on stdout, no traceback
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    assert "NUL" in err and "-0" in err
    assert done.stdout == b""


def test_null_without_a_list_is_refused(two_photos: list[Path], tiny_model: Path) -> None:
    code = main(["embed", str(two_photos[0]), "-0", "--model", str(tiny_model)])
    assert code == 2


# 2. decoder failures are one-line error results; libtiff's C messages are log records

REGRESSIONS = Path(__file__).parent / "corpus" / "regressions"
FTEX = REGRESSIONS / "unsupportedformaterror-ftex-closes-the-stream-pillow-tests.ftc"
WEBP_TIFF = REGRESSIONS / "corruptimageerror-libtiff-writes-to-stderr-pillow-tests.tif"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")


def test_a_format_whose_plugin_closes_the_stream_is_named_not_an_internal_error() -> None:
    from dinoembed.errors import UnsupportedFormatError
    from dinoembed.images.decode import DecodeLimits, decode

    with pytest.raises(UnsupportedFormatError, match=r"^unsupported format: FTEX$"):
        decode(FTEX.read_bytes(), DecodeLimits(max_pixels=10**8, max_bytes=10**8))


@pytest.mark.parametrize("verbose", [[], ["-v"]], ids=["default", "verbose"])
def test_libtiff_messages_are_log_records_not_raw_stderr(
    tiny_model: Path, verbose: list[str]
) -> None:
    # GIVEN a TIFF whose decoding makes libtiff print from C (checked: it really does)
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from PIL import Image\ntry: Image.open({str(WEBP_TIFF)!r}).load()"
            "\nexcept Exception: pass",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "WEBP compression support is not configured" in probe.stderr
    # WHEN dinoembed embeds it
    done = run_cli(*verbose, "embed", WEBP_TIFF, "--model", tiny_model)
    err = done.stderr.decode()
    # THEN one error result; stderr holds log records only, libtiff's with -v at INFO
    out = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert [r["status"] for r in out] == ["error"]
    assert out[0]["error"].startswith("corrupt TIFF image")
    assert all(LOG_LINE.match(line) for line in err.splitlines()), err
    libtiff = [line for line in err.splitlines() if "WEBP compression" in line]
    if verbose:
        assert libtiff and all(" INFO dinoembed.images.libtiff: " in line for line in libtiff)
    else:
        assert libtiff == []


# 3. the S3 client's connection pool is as large as the threads that share it


def test_s3_client_pool_fits_the_reader_threads() -> None:
    # urllib3 logs "Connection pool is full, discarding connection" whenever more threads
    # share a client than its pool holds (botocore's default: 10)
    from dinoembed.handler.collection_s3 import READ_WORKERS
    from dinoembed.handler.s3io import make_client

    client = make_client()
    assert client.meta.config.max_pool_connections >= READ_WORKERS
    assert make_client(concurrency=40).meta.config.max_pool_connections >= 40


# 4. backfill and status count an error sidecar alike


@pytest.mark.parametrize("runs", [1, 2], ids=["first-run", "second-run"])
def test_backfill_and_status_agree_on_an_error(
    two_photos: list[Path], tiny_model: Path, capsys: pytest.CaptureFixture[str], runs: int
) -> None:
    # GIVEN a folder with one image and one text file named .jpg
    folder = two_photos[0].parent
    two_photos[1].unlink()
    (folder / "notes.jpg").write_text("not a picture")
    # WHEN it is backfilled (once, or twice: the second run finds both sidecars current)
    for _ in range(runs):
        capsys.readouterr()
        code = main(["backfill", str(folder), "--model", str(tiny_model)])
    summary = json.loads(capsys.readouterr().out)
    status_code = main(["status", str(folder), "--json", "--model", str(tiny_model)])
    status = json.loads(capsys.readouterr().out)
    # THEN both count one error and exit 1; backfill's "current" (found up to date) and
    # "embedded" (made now) add up to status's "current"
    assert (status["current"], status["errors"], status_code) == (1, 1, 1)
    assert summary["current"] + summary["embedded"] == 1
    assert (summary["errors"], code) == (1, 1)


@pytest.fixture
def collection(
    tmp_path: Path, photos: dict[str, Image.Image], tiny_model: Path
) -> tuple[Path, list[Path]]:
    """Five photos embedded with sidecars (plus an exact copy of one: a duplicate group)."""
    folder = tmp_path / "coll"
    folder.mkdir()
    paths = []
    for name in ["astronaut", "coffee", "chelsea", "rocket", "flower"]:
        path = folder / f"{name}.png"
        path.write_bytes(encode(photos[name].resize((64, 64)), "PNG"))
        paths.append(path)
    copy = folder / "astronaut copy.png"
    copy.write_bytes(paths[0].read_bytes())
    paths.append(copy)
    assert main(["embed", "-r", str(folder), "--write-sidecars", "--model", str(tiny_model)]) == 0
    return folder, paths


# 7. names where a person needs them


def test_status_lists_the_files_of_a_kind(
    collection: tuple[Path, list[Path]], tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, paths = collection
    # GIVEN one image without a sidecar, one changed since, one that is no image
    (folder / "coffee.png.dinov2.json").unlink()
    os.utime(paths[2], (1, 1))
    (folder / "notes.jpg").write_text("not a picture")
    main(["embed", str(folder / "notes.jpg"), "--write-sidecars", "--model", str(tiny_model)])
    capsys.readouterr()
    model = ["--model", str(tiny_model)]
    # WHEN status lists each kind
    listed = {}
    for kind in ["missing", "stale", "errors"]:
        code = main(["status", str(folder), "--list", kind, *model])
        listed[kind] = capsys.readouterr().out.splitlines()
        assert code == 1
    # THEN the paths, one a line, nothing else
    assert listed == {
        "missing": [str(paths[1])],
        "stale": [str(paths[2])],
        "errors": [str(folder / "notes.jpg")],
    }
    # AND --json carries the same names beside the counts
    main(["status", str(folder), "--json", "--list", "missing", "--list", "errors", *model])
    doc = json.loads(capsys.readouterr().out)
    assert doc["missing"] == 1 and doc["errors"] == 1
    assert doc["files"] == {"missing": [str(paths[1])], "errors": [str(folder / "notes.jpg")]}


def test_similar_separates_score_and_path_with_a_tab_and_prints_paths_only(
    collection: tuple[Path, list[Path]], capsys: pytest.CaptureFixture[str], tiny_model: Path
) -> None:
    folder, paths = collection
    query = [str(paths[0]), "--in", str(folder), "--top-k", "3", "--model", str(tiny_model)]
    capsys.readouterr()
    assert main(["similar", *query]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    scores = [line.split("\t") for line in lines]
    assert all(len(s) == 2 and float(s[0]) <= 1.0001 for s in scores)
    assert scores[0][1] == str(paths[5])  # its identical copy first
    main(["similar", *query, "--paths"])
    assert capsys.readouterr().out.splitlines() == [s[1] for s in scores]
    main(["similar", *query, "-0"])
    assert capsys.readouterr().out == "".join(s[1] + "\0" for s in scores)


def test_dupes_paths_are_the_copies_not_kept(
    collection: tuple[Path, list[Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, paths = collection
    capsys.readouterr()
    main(["dupes", str(folder), "--json"])
    group = json.loads(capsys.readouterr().out)["groups"][0]
    assert sorted(group["paths"]) == sorted([str(paths[0]), str(paths[5])])
    assert main(["dupes", str(folder), "--paths"]) == 0
    removable = [p for p in group["paths"] if p != group["keep"]]
    assert capsys.readouterr().out.splitlines() == removable
    main(["dupes", str(folder), "-0"])
    assert capsys.readouterr().out == "".join(p + "\0" for p in removable)


# 8. silently accepted mistakes


def test_unknown_key_in_a_decisions_file_is_refused(
    collection: tuple[Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = collection
    decisions = tmp_path / "decisions.json"
    decisions.write_text('{"not_dup": []}')
    capsys.readouterr()
    assert main(["dupes", str(folder), "--decisions", str(decisions)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "not_dup" in captured.err


def test_export_npy_refuses_to_overwrite_an_unnamed_json(
    collection: tuple[Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = collection
    out = tmp_path / "misc" / "out.npy"
    out.parent.mkdir()
    theirs = out.with_suffix(".json")
    theirs.write_text('{"mine": true}')
    # WHEN exporting next to someone's out.json
    assert main(["export", str(folder), "--format", "npy", "--out", str(out)]) == 2
    # THEN refused in one line, nothing written
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err
    assert theirs.read_text() == '{"mine": true}' and not out.exists()
    # AND --force replaces it; a later export replaces its own index without --force
    assert main(["export", str(folder), "--format", "npy", "--out", str(out), "--force"]) == 0
    assert main(["export", str(folder), "--format", "npy", "--out", str(out)]) == 0
    assert json.loads(theirs.read_text())["count"] == 6


# 9. small things


def test_one_group_is_singular(
    collection: tuple[Path, list[Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = collection
    capsys.readouterr()
    main(["dupes", str(folder)])
    head = capsys.readouterr().out.splitlines()[0]
    assert "1 group of identical files" in head and "0 groups of similar" in head


def test_image_too_large_has_one_format_whoever_refuses_it() -> None:
    from dinoembed.errors import ImageTooLargeError
    from dinoembed.images.decode import DecodeLimits, decode
    from tests.helpers import png_bomb

    limits = DecodeLimits(max_pixels=89_478_485, max_bytes=10**8)
    # Pillow's own bomb check refuses this one (> 2x its limit), ours the next one
    for width, height in [(100_000, 100_000), (10_000, 10_000)]:
        with pytest.raises(ImageTooLargeError) as err:
            decode(png_bomb(width, height), limits)
        assert str(err.value) == f"image too large: {width}x{height} exceeds 89478485 pixels"


def test_settle_seconds_help_shows_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["watch", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default 0.3" in text
    for flag in ["--rescan-seconds", "--max-pixels", "--max-bytes", "--decode-workers"]:
        assert flag in text


@pytest.mark.parametrize(
    ("flag", "value", "field"),
    [
        ("--rescan-seconds", "12.5", "rescan_seconds"),
        ("--max-pixels", "1000", "max_pixels"),
        ("--max-bytes", "2000", "max_bytes"),
        ("--decode-workers", "3", "decode_workers"),
    ],
)
def test_limit_flags_set_the_same_settings(flag: str, value: str, field: str) -> None:
    from dinoembed.cli.commands import build_parser, make_settings

    command = ["watch", "somewhere"] if field == "rescan_seconds" else ["embed", "x.jpg"]
    settings = make_settings(build_parser().parse_args([*command, flag, value]))
    assert str(getattr(settings, field)) == value


def test_backfill_help_says_orphaned_sidecars_are_removed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["backfill", "--help"])
    assert "orphaned sidecars" in " ".join(capsys.readouterr().out.split())


def test_tiny_large_image_flag_refuses_in_one_line(
    collection: tuple[Path, list[Path]], tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, paths = collection
    capsys.readouterr()
    main(["embed", str(paths[1]), "--max-pixels", "100", "--model", str(tiny_model)])
    line = json.loads(capsys.readouterr().out)
    assert line["error"] == "image too large: 64x64 exceeds 100 pixels"


def test_skip_current_loads_no_model_when_everything_is_current(
    collection: tuple[Path, list[Path]],
    tiny_model: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dinoembed.cli import wiring

    folder, paths = collection

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(wiring, "pipeline", no_model)
    capsys.readouterr()
    code = main(["embed", str(folder), "--skip-current", "--model", str(tiny_model)])
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert sorted(r["file_path"] for r in out) == sorted(str(p) for p in paths)
    assert all(r["status"] == "success" for r in out)


def test_dir_of_the_package_names_the_lazy_api() -> None:
    import dinoembed

    assert {"Embedder", "embed", "EmbeddingResult", "__version__"} <= set(dir(dinoembed))


# 6. automatic clustering assigns the clear members HDBSCAN leaves out
#
# Synthetic vectors with known structure: the tiny stand-in's random-weight features do
# not separate photo families, so they cannot show the rule (tests/test_cluster_dupes.py
# runs real photos through the stand-in for the plumbing).


def _families(seed: int = 1) -> tuple[np.ndarray, list[int]]:
    """Five families of four: three close variants and one looser member (a "crop"),
    whose cosine to its family's centre is ~0.6 and to any other centre ~0.1 or less."""
    rng = np.random.default_rng(seed)
    dim = 64
    centres = np.linalg.qr(rng.normal(size=(dim, 5)))[0].T  # orthonormal family centres
    rows, family = [], []
    for f, centre in enumerate(centres):
        for noise in (0.05, 0.1, 0.15):
            rows.append(centre + noise * rng.normal(size=dim) / np.sqrt(dim))
            family.append(f)
        loose = rng.normal(size=dim)
        loose -= centres.T @ (centres @ loose)  # orthogonal to every centre
        rows.append(0.6 * centre + 0.8 * loose / np.linalg.norm(loose))
        family.append(f)
    matrix = np.array(rows)
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32), family


def test_hdbscan_alone_leaves_the_loose_members_out(monkeypatch: pytest.MonkeyPatch) -> None:
    # the situation the rule is for (else the next test would prove nothing)
    from dinoembed.collections import clustering

    monkeypatch.setattr(clustering, "_adopt", lambda matrix, labels: labels)
    matrix, _ = _families()
    result = clustering.density(matrix)
    assert sorted(result.unclustered) == [3, 7, 11, 15, 19]
    assert len(result.clusters) == 5


def test_clustering_without_k_assigns_members_clearly_nearer_their_family() -> None:
    from dinoembed.collections.clustering import density

    matrix, family = _families()
    # AND two rows that are clear of nothing: halfway between two families, and unrelated
    rng = np.random.default_rng(7)
    between = matrix[0] + matrix[4]
    unrelated = rng.normal(size=matrix.shape[1])
    extra = np.array([between / np.linalg.norm(between), unrelated / np.linalg.norm(unrelated)])
    everything = np.vstack([matrix, extra.astype(np.float32)])
    result = density(everything)
    got = sorted(sorted(c.members) for c in result.clusters)
    expected = sorted([i for i in range(len(family)) if family[i] == f] for f in range(5))
    assert got == expected
    assert sorted(result.unclustered) == [20, 21]


# 5. the keep rule prefers the original; the report shows every image


def _entry(path: str, *, px: int, size: int, mtime: float | None, sha: str = "") -> object:
    from dinoembed.collections.collection import Entry

    return Entry(path, "s", path, None, 0, size, sha or path, px, px, mtime)


def test_keep_prefers_the_original_over_a_larger_re_encode() -> None:
    from dinoembed.collections.dupes import choose_keep

    # GIVEN the original JPEG and a later, larger HEIC re-encode of the same size in pixels
    original = _entry("/p/chelsea.jpg", px=512, size=40_000, mtime=1000.0)
    heic = _entry("/p/chelsea.heic", px=512, size=90_000, mtime=2000.0)
    index, reason = choose_keep([heic, original])  # type: ignore[list-item]
    # THEN the older file is kept, and the reason says so in words
    assert index == 1
    assert reason.startswith("same pixel size (512x512), oldest file")


def test_keep_still_prefers_more_pixels_then_lossless_then_size() -> None:
    from dinoembed.collections.dupes import choose_keep

    half = _entry("/p/a-half.jpg", px=256, size=10, mtime=1.0)
    full = _entry("/p/a.jpg", px=512, size=5, mtime=5.0)
    assert choose_keep([half, full]) == (1, "most pixels (512x512)")  # type: ignore[list-item]
    # unknown age (S3): a lossless format beats a lossy one, then the larger file
    jpg = _entry("/p/b.jpg", px=512, size=90_000, mtime=None)
    png = _entry("/p/b.png", px=512, size=80_000, mtime=None)
    index, reason = choose_keep([jpg, png])  # type: ignore[list-item]
    assert (index, reason) == (1, "same pixel size (512x512), lossless format (PNG)")
    small = _entry("/p/c1.jpg", px=512, size=1_000, mtime=None)
    large = _entry("/p/c2.jpg", px=512, size=2_000, mtime=None)
    index, reason = choose_keep([small, large])  # type: ignore[list-item]
    assert (index, reason) == (1, "same pixel size (512x512), largest file (2.0 KB)")


def test_report_shows_every_image_and_wraps_at_words(
    collection: tuple[Path, list[Path]],
    tiny_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import html

    folder, paths = collection
    # GIVEN also a file that failed to embed
    bad = folder / "broken.jpg"
    bad.write_text("not a picture")
    main(["embed", str(bad), "--write-sidecars", "--model", str(tiny_model)])
    out = tmp_path / "report.html"
    # WHEN the report is written (k-means with k=2: every image in a cluster, or HDBSCAN)
    for extra in ([], ["--k", "2"]):
        capsys.readouterr()
        assert main(["report", str(folder), "--out", str(out), *extra]) == 0
        page = out.read_text()
        # THEN every image, the failed one too, has a tile (its name in a caption)
        for path in [*paths, bad]:
            assert f'title="{html.escape(str(path))}"' in page, path
        assert "Failed" in page
        # AND no word is broken mid-word
        assert "break-all" not in page and "anywhere" not in page
        assert "same pixels" not in page
