"""Exit status tells the truth: 0 only when every result was produced *and* written.

A sidecar that cannot be written is made two ways, so the tests hold as root and
as a normal user: a directory squatting on the sidecar's name (refused to anyone),
and a read-only folder in a subprocess that cannot override file permissions
(``setpriv`` drops CAP_DAC_OVERRIDE when running as root).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from dinoembed.cli.commands import main
from dinoembed.results.schema import EmbeddingResult
from dinoembed.results.sidecars import read_sidecar
from tests.test_watch_support import save_photo, sidecar_of, stray_files


@pytest.fixture
def two_images(tmp_path: Path, photos: dict[str, Image.Image]) -> list[Path]:
    folder = tmp_path / "photos"
    return [save_photo(photos[n], folder / f"{n}.jpg") for n in ("coffee", "rocket")]


def block_sidecar(image: Path) -> None:
    """A directory where the sidecar should go: no one can replace it with a file."""
    sidecar_of(image).mkdir()


def unprivileged(cmd: list[str]) -> list[str]:
    """``cmd`` without the power to write into read-only folders (root has it by default)."""
    if os.geteuid() != 0:
        return cmd
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot make a folder unwritable")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", *cmd]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dinoembed.cli", *args]


def test_embed_write_sidecars_all_written_exits_0(
    two_images: list[Path], tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["embed", *map(str, two_images), "--write-sidecars", "--model", str(tiny_model)])
    assert code == 0
    assert all(read_sidecar(sidecar_of(p)) is not None for p in two_images)


def test_embed_sidecar_not_written_exits_1_and_its_line_says_why(
    two_images: list[Path], tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN two good images, the sidecar of the first one unwritable
    blocked, fine = two_images
    block_sidecar(blocked)
    # WHEN embed --write-sidecars runs
    code = main(["embed", str(blocked), str(fine), "--write-sidecars", "--model", str(tiny_model)])
    # THEN it exits 1; the blocked image's line is an error saying why, the other succeeded
    assert code == 1
    lines = [EmbeddingResult.read_json(x) for x in capsys.readouterr().out.splitlines()]
    assert [Path(r.file_path).name for r in lines] == [blocked.name, fine.name]
    assert lines[0].status == "error"
    assert lines[0].error is not None
    assert lines[0].error.startswith(f"cannot write sidecar {sidecar_of(blocked)}: ")
    assert "Is a directory" in lines[0].error
    assert lines[1].ok and read_sidecar(sidecar_of(fine)) is not None
    assert stray_files(blocked.parent) == []


def test_embed_into_a_read_only_folder_exits_1(two_images: list[Path], tiny_model: Path) -> None:
    folder = two_images[0].parent
    folder.chmod(0o555)
    try:
        done = subprocess.run(
            unprivileged(cli("embed", str(folder), "--write-sidecars", "--model", str(tiny_model))),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        folder.chmod(0o755)
    assert done.returncode == 1, done.stderr
    lines = [json.loads(x) for x in done.stdout.splitlines()]
    assert len(lines) == 2
    assert all(x["status"] == "error" for x in lines)
    errors = [x["error"] for x in lines]
    assert all("cannot write sidecar" in e and "Permission denied" in e for e in errors)
    assert "Traceback" not in done.stderr
    assert not any(sidecar_of(p).exists() for p in two_images)


@pytest.mark.parametrize("command", [["watch", "--once"], ["backfill"]])
def test_folder_run_with_an_unwritable_sidecar_exits_1_and_counts_it(
    command: list[str],
    two_images: list[Path],
    tiny_model: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # GIVEN a folder where one sidecar cannot be written
    blocked, fine = two_images
    block_sidecar(blocked)
    # WHEN watch --once / backfill runs over it
    code = main([*command, str(blocked.parent), "--model", str(tiny_model)])
    # THEN it exits 1, and the summary counts the sidecar not written
    assert code == 1
    assert read_sidecar(sidecar_of(fine)) is not None
    stopped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stopped:")]
    assert len(stopped) == 1
    assert "1 embedded, 0 errors" in stopped[0]
    assert "1 sidecars not written" in stopped[0]


def test_watch_once_into_a_read_only_folder_exits_1(
    two_images: list[Path], tiny_model: Path
) -> None:
    folder = two_images[0].parent
    folder.chmod(0o555)
    try:
        done = subprocess.run(
            unprivileged(cli("watch", "--once", str(folder), "--model", str(tiny_model))),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        folder.chmod(0o755)
    assert done.returncode == 1, done.stderr
    assert "0 embedded, 0 errors" in done.stderr
    assert "2 sidecars not written" in done.stderr
    assert "Traceback" not in done.stderr


def test_watch_once_all_written_exits_0(two_images: list[Path], tiny_model: Path) -> None:
    assert main(["watch", "--once", str(two_images[0].parent), "--model", str(tiny_model)]) == 0
    assert all(read_sidecar(sidecar_of(p)) is not None for p in two_images)
