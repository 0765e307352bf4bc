"""Watcher faults: ``kill -9`` mid-batch and mid-write, files that vanish or cannot be read,
symlink loops and symlinks that leave the watched folder.

Documented outcomes: after a restart every image has exactly one complete, valid sidecar
and no temp file is left; a file deleted before it was read is skipped quietly; an
unreadable file gets an error sidecar and the daemon carries on; symlinks are never
followed out of the root and a loop is skipped.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dinoembed.common.atomic import is_temp_file
from dinoembed.pipeline import ImageItem, Outcome, Pipeline, local_item
from dinoembed.results.sidecars import read_sidecar
from tests.reliability_plugin import tried
from tests.test_watch_support import (
    SUFFIX,
    TIMEOUT,
    has_sidecar,
    noise_png,
    result_of,
    running,
    save_photo,
    sidecar_of,
    stray_files,
    wait_for,
    watch_settings,
)

pytestmark = pytest.mark.reliability("watcher faults")

# `dinoembed watch` on a slow disk: every fsync takes 30 ms, so a sidecar write (temp file,
# fsync, rename) is long enough for a kill to land inside it.
SLOW_DISK_MAIN = """
import os, sys, time
_fsync = os.fsync
def fsync(fd):
    time.sleep(0.03)
    _fsync(fd)
os.fsync = fsync
from dinoembed.cli import main
sys.exit(main())
"""


def watch_command(folder: Path, model: Path, *extra: str, slow_disk: bool = False) -> list[str]:
    head = (
        [sys.executable, "-c", SLOW_DISK_MAIN]
        if slow_disk
        else [sys.executable, "-m", "dinoembed.cli"]
    )
    return [
        *head,
        "watch",
        str(folder),
        "--model",
        str(model),
        "--settle-seconds",
        "0.1",
        *extra,
    ]


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; killed if it left one running."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start(
    procs: list[subprocess.Popen[bytes]], cmd: list[str], log: Path, **kwargs: Any
) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, **kwargs)
    procs.append(proc)
    return proc


def sidecars_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*" + SUFFIX) if not is_temp_file(p.name))


def temp_files(folder: Path) -> list[Path]:
    return [Path(e.path) for e in os.scandir(folder) if is_temp_file(e.name)]


def assert_complete(images: list[Path], reference: Pipeline | None = None) -> None:
    """Exactly one valid sidecar per image (success, naming the image), nothing else."""
    folder = images[0].parent
    assert sidecars_in(folder) == sorted(sidecar_of(p) for p in images)
    for image in images:
        result = read_sidecar(sidecar_of(image))
        assert result is not None, image
        assert result.status == "success" and result.file_path == str(image.absolute())
        if reference is not None:
            expected = reference.embed_one(local_item(image)).result
            assert expected is not None and expected.embedding is not None
            got, want = result.embedding, expected.embedding
            assert got is not None and got.embedding_dim == want.embedding_dim
            assert np.allclose(got.embedding, want.embedding, rtol=1e-4, atol=1e-5)
    assert stray_files(folder) == []


# --- kill -9 ------------------------------------------------------------------------------


def stopped(pid: int) -> bool:
    """The process is stopped (SIGSTOP has taken effect): state T in /proc/<pid>/stat."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("T", "t")


def freeze_mid_write(proc: subprocess.Popen[bytes], folder: Path) -> None:
    """Stop ``proc`` at a moment when one of its sidecar temp files exists."""
    while True:
        assert wait_for(lambda: bool(temp_files(folder)) or proc.poll() is not None, every=0.001)
        if proc.poll() is not None:
            return
        proc.send_signal(signal.SIGSTOP)
        assert wait_for(lambda: stopped(proc.pid))
        if temp_files(folder):
            return  # frozen between writing a sidecar's temp file and renaming it
        proc.send_signal(signal.SIGCONT)


def kill_9(
    proc: subprocess.Popen[bytes], folder: Path, *, mid_write: bool, rng: random.Random
) -> bool:
    """SIGKILL ``proc`` once it has made progress (after a random pause), or in the middle
    of a sidecar write. True when a sidecar temp file existed at the kill."""
    before = len(sidecars_in(folder))
    if mid_write:
        freeze_mid_write(proc, folder)
    else:
        assert wait_for(lambda: len(sidecars_in(folder)) > before or proc.poll() is not None)
        time.sleep(rng.uniform(0.0, 0.3))
    writing = bool(temp_files(folder))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(TIMEOUT) == -signal.SIGKILL
    return writing


def test_kill_9_mid_batch_and_mid_write_then_restart_completes_every_sidecar(
    tmp_path: Path, tiny_model: Path, embedder: Pipeline, spawn: list[subprocess.Popen[bytes]]
) -> None:
    # GIVEN a backlog of 120 images and a daemon on a slow disk
    folder = tmp_path / "in"
    folder.mkdir()
    images = [noise_png(folder / f"{i:03d}.png", seed=i, size=48) for i in range(120)]
    cmd = watch_command(folder, tiny_model, "--batch-size", "4", slow_disk=True)
    rng = random.Random(6)
    log = tmp_path / "stderr.txt"
    kills_mid_write = 0
    # WHEN it is killed with SIGKILL six times: at random moments after some progress, and
    # at the very moment a sidecar's temp file exists (between write and rename)
    for round_ in range(6):
        proc = start(spawn, cmd, log)
        kills_mid_write += kill_9(proc, folder, mid_write=bool(round_ % 2), rng=rng)
        # THEN after each kill every sidecar on disk is complete (never half-written)
        assert all(read_sidecar(p) is not None for p in sidecars_in(folder))
        tried()
    assert kills_mid_write >= 3  # every mid-write round, and maybe some random ones
    assert len(sidecars_in(folder)) < len(images)  # the kills really interrupted the backlog
    # AND a restart finishes the rest: one valid sidecar per image, no temp file left
    done = subprocess.run([*cmd, "--once"], capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert_complete(images, reference=embedder)
    tried()


def test_sigkill_while_new_files_arrive_loses_none_after_restart(
    tmp_path: Path, tiny_model: Path, spawn: list[subprocess.Popen[bytes]]
) -> None:
    # GIVEN a watching daemon, and files landing in the folder while it is killed twice
    folder = tmp_path / "in"
    folder.mkdir()
    cmd = watch_command(folder, tiny_model, "--batch-size", "4", slow_disk=True)
    log = tmp_path / "stderr.txt"
    images: list[Path] = []
    for round_ in range(2):
        proc = start(spawn, cmd, log)
        first = noise_png(folder / f"r{round_}-first.png", seed=1000 + round_)
        assert wait_for(has_sidecar(first))
        for i in range(30):
            images.append(noise_png(folder / f"r{round_}-{i:02d}.png", seed=round_ * 100 + i))
        images.append(first)
        proc.send_signal(signal.SIGKILL)
        proc.wait(TIMEOUT)
        tried()
    # WHEN it is started again
    proc = start(spawn, cmd, log)
    # THEN every file that arrived, processed or not when the kill came, gets its sidecar
    assert wait_for(lambda: all(has_sidecar(p)() for p in images), timeout=120)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0
    assert_complete(sorted(images))


# --- vanished and unreadable files --------------------------------------------------------


def test_file_deleted_between_event_and_read_is_skipped_and_the_daemon_lives(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model: Path, embedder: Pipeline
) -> None:
    # GIVEN a daemon whose worker is about to read a file when it is deleted
    folder = tmp_path / "in"
    folder.mkdir()
    doomed = folder / "doomed.png"
    real_embed = embedder.embed

    def embed_after_deleting(items: Iterable[ImageItem]) -> Iterator[Outcome]:
        def deleting() -> Iterator[ImageItem]:
            for item in items:
                if item.file_path == str(doomed.absolute()):
                    doomed.unlink()
                yield item

        return real_embed(deleting())

    monkeypatch.setattr(embedder, "embed", embed_after_deleting)
    with running(watch_settings(tiny_model), folder, embedder) as daemon:
        noise_png(doomed, seed=1)
        assert wait_for(lambda: not doomed.exists())
        # WHEN a later file arrives
        later = noise_png(folder / "later.png", seed=2)
        # THEN the daemon still works, the vanished file got no sidecar and no error
        assert wait_for(has_sidecar(later))
        assert daemon.worker is not None and daemon.worker.stats.errors == 0
    assert not sidecar_of(doomed).exists()
    assert sidecars_in(folder) == [sidecar_of(later)]
    assert stray_files(folder) == []


def test_files_deleted_right_after_they_appear_leave_nothing(
    tmp_path: Path, tiny_model: Path, embedder: Pipeline
) -> None:
    # GIVEN a watching daemon; WHEN 40 files are created and deleted at once, 10 kept
    folder = tmp_path / "in"
    folder.mkdir()
    with running(watch_settings(tiny_model), folder, embedder) as daemon:
        kept = []
        for i in range(50):
            path = noise_png(folder / f"{i:02d}.png", seed=i)
            if i % 5:
                path.unlink()
            else:
                kept.append(path)
        # THEN exactly the kept files get sidecars, and the daemon reports no errors
        assert wait_for(lambda: all(has_sidecar(p)() for p in kept))
        time.sleep(0.5)  # let any stray work for the deleted ones finish (none expected)
        assert daemon.worker is not None and daemon.worker.stats.errors == 0
    assert sidecars_in(folder) == sorted(sidecar_of(p) for p in kept)
    assert stray_files(folder) == []
    tried(50)


# Root reads any file whatever its mode (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH). Rather than
# switching to another user, who may not be able to reach the checkout, its venv or the
# test's private tmp folder, stay uid 0 but drop those two capabilities for the daemon.
DROP_DAC = [
    "setpriv",
    "--inh-caps=-all",
    "--ambient-caps=-all",
    "--bounding-set=-dac_override,-dac_read_search",
]


@pytest.fixture(scope="module")
def permissions_apply(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The command prefix under which a mode-000 file is really unreadable, or a skip."""
    if os.geteuid() != 0:
        return []  # already unprivileged: permissions apply as they are
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv (util-linux): cannot drop CAP_DAC_*")
    locked = tmp_path_factory.mktemp("perm") / "locked"
    locked.write_bytes(b"secret")
    locked.chmod(0o000)
    read = f"open({str(locked)!r}, 'rb').read()"
    probe = subprocess.run(
        [*DROP_DAC, sys.executable, "-c", read], capture_output=True, text=True, check=False
    )
    if "PermissionError" not in probe.stderr:
        pytest.skip(f"cannot drop CAP_DAC_OVERRIDE here: {probe.stderr.strip()[-200:]}")
    return DROP_DAC


def test_unreadable_file_gets_an_error_sidecar_and_the_daemon_lives(
    tmp_path: Path,
    permissions_apply: list[str],
    tiny_model: Path,
    photos: dict[str, Image.Image],
    spawn: list[subprocess.Popen[bytes]],
) -> None:
    # GIVEN a daemon for which file permissions apply (root ignores them unless it drops
    # its DAC capabilities)
    folder = tmp_path / "in"
    folder.mkdir()
    existing = folder / "locked-before.jpg"
    save_photo(photos["coffee"], existing).chmod(0o000)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    log = tmp_path / "stderr.txt"
    proc = start(spawn, [*permissions_apply, *watch_command(folder, tiny_model)], log, env=env)
    # WHEN it finds one unreadable file at start and another arrives while it watches
    assert wait_for(lambda: sidecar_of(existing).exists() or proc.poll() is not None)
    arriving = save_photo(photos["rocket"], tmp_path / "staging.jpg")
    arriving.chmod(0o000)
    arriving.rename(folder / "locked-later.jpg")
    readable = save_photo(photos["chelsea"], tmp_path / "ok.jpg")
    readable.chmod(0o644)
    readable = readable.rename(folder / "readable.jpg")
    # THEN each unreadable file gets an error sidecar saying so; the readable one succeeds
    assert wait_for(lambda: all(has_sidecar(p)() for p in (folder / "locked-later.jpg", readable)))
    assert proc.poll() is None, log.read_text()
    for locked in (existing, folder / "locked-later.jpg"):
        result = result_of(locked)
        assert result is not None and result.status == "error" and result.embedding is None
        assert result.error is not None and "ermission denied" in result.error, result.error
        assert "\n" not in result.error and "Traceback" not in result.error
    ok = result_of(readable)
    assert ok is not None and ok.status == "success"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0
    assert stray_files(folder) == []
    tried(2)


# --- symlinks -----------------------------------------------------------------------------


def symlink_tree(root: Path, outside: Path, photos: dict[str, Image.Image]) -> list[Path]:
    """A loop (file and folder), links out of the root; returns the real images inside."""
    real = [save_photo(photos["coffee"], root / "real.jpg")]
    real.append(save_photo(photos["rocket"], root / "sub" / "real2.jpg"))
    save_photo(photos["chelsea"], outside / "secret.jpg")
    (root / "loop.jpg").symlink_to("loop.jpg")  # ELOOP
    (root / "ping.jpg").symlink_to("pong.jpg")
    (root / "pong.jpg").symlink_to("ping.jpg")
    (root / "sub" / "up").symlink_to("..")  # a folder loop
    (root / "escape.jpg").symlink_to(outside / "secret.jpg")
    (root / "outside-dir").symlink_to(outside)
    return real


def assert_nothing_escaped(root: Path, outside: Path, real: list[Path]) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["secret.jpg"]  # nothing written out there
    assert sorted(p.resolve() for p in sidecars_in(root)) == sorted(
        sidecar_of(p).resolve() for p in real
    )
    for name in ("loop.jpg", "ping.jpg", "pong.jpg", "escape.jpg"):
        assert not os.path.lexists(root / (name + SUFFIX)), name


def test_symlink_loops_and_escapes_at_start_are_skipped(
    tmp_path: Path, tiny_model: Path, photos: dict[str, Image.Image]
) -> None:
    # GIVEN a tree with symlink loops and symlinks pointing out of it
    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    real = symlink_tree(root, outside, photos)
    # WHEN `dinoembed watch --once` runs over it
    done = subprocess.run(
        watch_command(root, tiny_model, "--once"), capture_output=True, timeout=120, check=False
    )
    # THEN it exits 0; only the real images inside got sidecars; nothing was written outside
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert_nothing_escaped(root, outside, real)
    tried(5)


def test_symlink_loops_and_escapes_arriving_while_watching_are_skipped(
    tmp_path: Path, tiny_model: Path, embedder: Pipeline, photos: dict[str, Image.Image]
) -> None:
    # GIVEN a watching daemon over an empty folder
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    with running(watch_settings(tiny_model), root, embedder):
        # WHEN loops and escaping links appear (then one more real image)
        real = symlink_tree(root, outside, photos)
        last = save_photo(photos["astronaut"], root / "last.jpg")
        # THEN the daemon lives and embeds exactly the real images
        assert wait_for(lambda: all(has_sidecar(p)() for p in [*real, last]))
        time.sleep(0.5)  # any work the links caused has happened by now
    assert_nothing_escaped(root, outside, [*real, last])
    tried(5)
