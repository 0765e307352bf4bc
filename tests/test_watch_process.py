"""`dinoembed watch` as a process: signals, --once, exit codes."""

from __future__ import annotations

import contextlib
import os
import pty
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from dinoembed.results.sidecars import read_sidecar
from tests.test_watch_support import (
    TIMEOUT,
    has_sidecar,
    noise_png,
    save_photo,
    sidecar_of,
    stray_files,
    wait_for,
)


def watch_command(folder: Path, model: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dinoembed.cli",
        "watch",
        str(folder),
        "--model",
        str(model),
        "--settle-seconds",
        "0.2",
        *extra,
    ]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started by a test; killed if the test left one running."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start(
    procs: list[subprocess.Popen[bytes]], cmd: list[str], log: Path
) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=dict(os.environ))
    procs.append(proc)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_daemon_with_exit_0(
    tmp_path: Path,
    tiny_model: Path,
    photos: dict[str, Image.Image],
    spawn: list[subprocess.Popen[bytes]],
    sig: signal.Signals,
) -> None:
    # GIVEN a running daemon that has done some work
    folder = tmp_path / "in"
    first = save_photo(photos["coffee"], folder / "a.jpg")
    log = tmp_path / "stderr.txt"
    proc = start(spawn, watch_command(folder, tiny_model), log)
    assert wait_for(has_sidecar(first))
    second = save_photo(photos["rocket"], folder / "b.jpg")
    assert wait_for(has_sidecar(second))
    # WHEN it receives the signal
    proc.send_signal(sig)
    # THEN it exits 0 (well within the timeout) and says why
    assert proc.wait(timeout=TIMEOUT) == 0
    assert f"{sig.name}: finishing the current batch" in log.read_text()


def test_sigterm_during_a_backlog_finishes_the_batch_in_progress(
    tmp_path: Path, tiny_model: Path, spawn: list[subprocess.Popen[bytes]]
) -> None:
    # GIVEN a large backlog being worked through
    folder = tmp_path / "in"
    folder.mkdir()
    images = [noise_png(folder / f"{i:03d}.png", seed=i, size=256) for i in range(300)]
    proc = start(spawn, watch_command(folder, tiny_model, "--batch-size", "4"), tmp_path / "e")
    assert wait_for(has_sidecar(images[0]))
    # WHEN SIGTERM arrives mid-way
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=TIMEOUT) == 0
    # THEN every sidecar on disk is complete, and none is half-written
    done = [p for p in images if sidecar_of(p).exists()]
    assert 0 < len(done) < len(images)  # stopped mid-way, not after the whole backlog
    assert all(read_sidecar(sidecar_of(p)) is not None for p in done)
    assert stray_files(folder) == []


def test_once_exits_1_after_a_backlog_with_a_bad_image(
    tmp_path: Path, tiny_model: Path, photos: dict[str, Image.Image]
) -> None:
    # GIVEN a folder tree with images and one bad file
    folder = tmp_path / "in"
    images = [save_photo(photos[n], folder / n[0] / f"{n}.jpg") for n in ("coffee", "rocket")]
    (folder / "bad.jpg").write_bytes(b"nope")
    # WHEN `dinoembed watch --once` runs
    done = subprocess.run(
        watch_command(folder, tiny_model, "--once"), capture_output=True, timeout=120, check=False
    )
    # THEN every sidecar is written (the bad file's is an error result) and it exits 1,
    # because one image failed
    assert done.returncode == 1, done.stderr.decode()
    assert all(has_sidecar(p)() for p in images)
    bad = read_sidecar(sidecar_of(folder / "bad.jpg"))
    assert bad is not None and bad.status == "error"
    assert done.stdout == b""  # logs go to stderr only


def test_missing_folder_exits_2(tmp_path: Path, tiny_model: Path) -> None:
    done = subprocess.run(
        watch_command(tmp_path / "missing", tiny_model, "--once"),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert b"not a folder" in done.stderr


def test_progress_line_on_a_terminal(tmp_path: Path, tiny_model: Path) -> None:
    # GIVEN a backlog of 40 images and stderr attached to a terminal
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(40):
        noise_png(folder / f"{i:02d}.png", seed=i)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        watch_command(folder, tiny_model, "--once"), stdout=subprocess.DEVNULL, stderr=slave
    )
    os.close(slave)
    output = b""
    with contextlib.suppress(OSError):  # EIO once the process has closed its end
        while chunk := os.read(master, 4096):
            output += chunk
    os.close(master)
    # THEN a progress line counts up to the total, instead of one line per image
    assert proc.wait(timeout=TIMEOUT) == 0
    text = output.decode()
    assert "\r40/40 images" in text
    assert " success " not in text
