"""Issue 20, what a newcomer trips over: NUL-separated path lists, one-line decoder
errors, one error counting, names in `status`, paths-only outputs, refused mistakes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from dinoembed.cli.main import main
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
