"""The watcher end to end: a real daemon on a thread, real inotify (and polling),
the tiny stand-in model, real files in tmp_path; assertions on what it writes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from dinoembed.cli import main as cli_main
from dinoembed.pipeline import Pipeline
from dinoembed.watcher.queue import DEFAULT_CAPACITY
from tests.test_watch_support import (
    has_sidecar,
    noise_png,
    result_of,
    run_once,
    running,
    save_photo,
    sidecar_of,
    stray_files,
    wait_for,
    watch_settings,
)

OBSERVERS = [pytest.param(False, id="inotify"), pytest.param(True, id="polling")]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "watched"
    folder.mkdir()
    return folder


def cli_embedding(image: Path, model: Path, capsys: pytest.CaptureFixture[str]) -> list[float]:
    """What ``dinoembed embed`` prints for the finished file (the independent reference)."""
    capsys.readouterr()
    assert cli_main(["embed", str(image), "--model", str(model)]) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    return list(line["embedding"]["embedding"])


@pytest.mark.parametrize("polling", OBSERVERS)
def test_preexisting_images_get_sidecars(
    root: Path, tiny_model: Path, embedder: Pipeline, photos: dict[str, Image.Image], polling: bool
) -> None:
    # GIVEN images already in the folder, one in a sub-folder
    a = save_photo(photos["astronaut"], root / "a.jpg")
    b = save_photo(photos["coffee"], root / "sub" / "b.png")
    # WHEN the daemon starts
    with running(watch_settings(tiny_model, polling=polling), root, embedder):
        # THEN both get a success sidecar naming them
        assert wait_for(lambda: has_sidecar(a)() and has_sidecar(b)())
    for image in (a, b):
        result = result_of(image)
        assert result is not None and result.ok
        assert result.file_path == str(image)
        assert result.source.size == image.stat().st_size


@pytest.mark.parametrize("polling", OBSERVERS)
def test_new_image_gets_sidecar_within_seconds(
    root: Path, tiny_model: Path, embedder: Pipeline, photos: dict[str, Image.Image], polling: bool
) -> None:
    # GIVEN a running daemon on an empty folder
    with running(watch_settings(tiny_model, polling=polling), root, embedder):
        # WHEN an image is saved into it
        image = save_photo(photos["chelsea"], root / "cat.jpg")
        # THEN its sidecar appears
        assert wait_for(has_sidecar(image))
    result = result_of(image)
    assert result is not None and result.ok and result.embedding is not None
    assert result.embedding.embedding_dim == len(result.embedding.embedding)


@pytest.mark.parametrize("polling", OBSERVERS)
def test_subfolders_created_later_are_watched(
    root: Path, tiny_model: Path, embedder: Pipeline, photos: dict[str, Image.Image], polling: bool
) -> None:
    with running(watch_settings(tiny_model, polling=polling), root, embedder):
        # WHEN nested folders are created and images land in them, at once and a bit later
        deep = root / "2026" / "11" / "27"
        deep.mkdir(parents=True)
        first = save_photo(photos["rocket"], deep / "first.jpg")
        assert wait_for(has_sidecar(first))
        time.sleep(0.5)
        later = save_photo(photos["flower"], deep / "later.png")
        # THEN both are embedded
        assert wait_for(has_sidecar(later))


@pytest.mark.parametrize(
    ("polling", "settle"),
    [pytest.param(False, 0.2, id="inotify"), pytest.param(True, 2.0, id="polling")],
)
def test_file_written_in_chunks_is_embedded_once_from_final_content(
    root: Path,
    tmp_path: Path,
    tiny_model: Path,
    embedder: Pipeline,
    photos: dict[str, Image.Image],
    capsys: pytest.CaptureFixture[str],
    polling: bool,
    settle: float,
) -> None:
    # GIVEN the bytes of a real photo (a progressive JPEG: every prefix decodes to something)
    source = tmp_path / "source.jpg"
    photos["china"].save(source, quality=90, progressive=True)
    data = source.read_bytes()
    chunks = [data[i : i + len(data) // 12 + 1] for i in range(0, len(data), len(data) // 12 + 1)]
    target = root / "slow.jpg"
    with running(
        watch_settings(tiny_model, polling=polling, settle_seconds=settle), root, embedder
    ) as d:
        # WHEN a writer trickles it in over ~3 s through one open file
        with target.open("wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
                time.sleep(0.25)
                # THEN nothing is embedded while it is still being written
                assert not sidecar_of(target).exists()
        assert wait_for(has_sidecar(target))
        time.sleep(settle + 1.5)  # room for a (wrong) second embedding
        assert d.worker is not None
        embedded, errors = d.worker.stats.embedded, d.worker.stats.errors
    # THEN it was embedded exactly once, from the final bytes, like `dinoembed embed` does
    assert (embedded, errors) == (1, 0)
    result = result_of(target)
    assert result is not None and result.ok and result.embedding is not None
    assert result.source.size == len(data)
    reference = cli_embedding(target, tiny_model, capsys)
    np.testing.assert_allclose(result.embedding.embedding, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("polling", OBSERVERS)
def test_file_moved_in_from_another_folder_is_embedded(
    root: Path,
    tmp_path: Path,
    tiny_model: Path,
    embedder: Pipeline,
    photos: dict[str, Image.Image],
    polling: bool,
) -> None:
    # GIVEN an image finished elsewhere on the same filesystem
    outside = save_photo(photos["coffee"], tmp_path / "elsewhere" / "mug.jpg")
    with running(watch_settings(tiny_model, polling=polling), root, embedder):
        # WHEN it is moved into the watched folder (no close-write event for it)
        moved = root / "mug.jpg"
        outside.rename(moved)
        # THEN it is embedded
        assert wait_for(has_sidecar(moved))
    assert not sidecar_of(outside).exists()


@pytest.mark.parametrize("polling", OBSERVERS)
def test_corrupt_file_gets_error_sidecar_and_later_files_are_processed(
    root: Path, tiny_model: Path, embedder: Pipeline, photos: dict[str, Image.Image], polling: bool
) -> None:
    with running(watch_settings(tiny_model, polling=polling), root, embedder):
        # WHEN a truncated JPEG and a text file named .png land, then a good image
        good_bytes = (save_photo(photos["astronaut"], root.parent / "ref.jpg")).read_bytes()
        (root / "broken.jpg").write_bytes(good_bytes[:200])
        (root / "notes.png").write_text("not a picture\n")
        assert wait_for(has_sidecar(root / "broken.jpg"))
        assert wait_for(has_sidecar(root / "notes.png"))
        good = save_photo(photos["rocket"], root / "good.jpg")
        # THEN the bad ones get error sidecars and the good one still succeeds
        assert wait_for(has_sidecar(good))
    broken, notes, ok = (
        result_of(root / "broken.jpg"),
        result_of(root / "notes.png"),
        result_of(good),
    )
    assert broken is not None and broken.status == "error" and broken.embedding is None
    assert notes is not None and notes.status == "error" and "not an image" in (notes.error or "")
    assert ok is not None and ok.ok


@pytest.mark.parametrize("polling", OBSERVERS)
def test_no_sidecar_of_sidecar_and_no_temp_files(
    root: Path, tiny_model: Path, embedder: Pipeline, photos: dict[str, Image.Image], polling: bool
) -> None:
    # GIVEN a daemon that writes sidecars into the folder it watches
    images = [save_photo(photos[n], root / f"{n}.jpg") for n in ("chelsea", "coffee")]
    with running(watch_settings(tiny_model, polling=polling), root, embedder) as daemon:
        images.append(save_photo(photos["flower"], root / "flower.png"))
        assert wait_for(lambda: all(has_sidecar(p)() for p in images))
        time.sleep(2.5)  # several settle intervals and polls for any echo of its own writes
        assert daemon.worker is not None
        embedded = daemon.worker.stats.embedded
    # THEN it embedded each image once and never its own outputs
    assert embedded == len(images)
    assert stray_files(root) == []
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [p.name for p in images] + [sidecar_of(p).name for p in images]
    )


@pytest.mark.parametrize("polling", OBSERVERS)
def test_deleting_an_image_removes_its_sidecar(
    root: Path, tiny_model: Path, embedder: Pipeline, photos: dict[str, Image.Image], polling: bool
) -> None:
    image = save_photo(photos["rocket"], root / "rocket.jpg")
    keep = save_photo(photos["coffee"], root / "coffee.jpg")
    with running(watch_settings(tiny_model, polling=polling), root, embedder):
        assert wait_for(lambda: has_sidecar(image)() and has_sidecar(keep)())
        # WHEN the image is deleted
        image.unlink()
        # THEN its sidecar goes too, and only its own
        assert wait_for(lambda: not sidecar_of(image).exists())
    assert has_sidecar(keep)()


@pytest.mark.parametrize("polling", OBSERVERS)
def test_renaming_an_image_moves_its_sidecar(
    root: Path, tiny_model: Path, embedder: Pipeline, photos: dict[str, Image.Image], polling: bool
) -> None:
    old = save_photo(photos["chelsea"], root / "IMG_0001.jpg")
    with running(watch_settings(tiny_model, polling=polling), root, embedder) as daemon:
        assert wait_for(has_sidecar(old))
        before = result_of(old)
        # WHEN the image is renamed
        new = old.rename(root / "cat.jpg")
        # THEN the sidecar follows it under the new name, naming the new path
        assert wait_for(lambda: (r := result_of(new)) is not None and r.file_path == str(new))
        assert wait_for(lambda: not sidecar_of(old).exists())
        assert daemon.worker is not None
        embedded = daemon.worker.stats.embedded
    after = result_of(new)
    assert before is not None and after is not None
    assert after.embedding == before.embedding
    if not daemon.settings.polling:
        # inotify pairs the move, so the sidecar is moved rather than recomputed
        assert embedded == 1


def test_sidecar_deleted_by_hand_is_written_again(
    root: Path, tiny_model: Path, embedder: Pipeline, photos: dict[str, Image.Image]
) -> None:
    image = save_photo(photos["astronaut"], root / "a.jpg")
    with running(watch_settings(tiny_model), root, embedder):
        assert wait_for(has_sidecar(image))
        # WHEN someone deletes the sidecar
        sidecar_of(image).unlink()
        # THEN the daemon writes it again
        assert wait_for(has_sidecar(image))


@pytest.mark.parametrize("polling", OBSERVERS)
def test_changed_image_is_embedded_again(
    root: Path, tiny_model: Path, embedder: Pipeline, photos: dict[str, Image.Image], polling: bool
) -> None:
    image = save_photo(photos["astronaut"], root / "a.png")
    with running(watch_settings(tiny_model, polling=polling), root, embedder):
        assert wait_for(has_sidecar(image))
        first = result_of(image)
        # WHEN the image is overwritten with another picture
        save_photo(photos["coffee"], root / "a.png")
        size = image.stat().st_size
        # THEN the sidecar is rewritten from the new content
        assert wait_for(lambda: (r := result_of(image)) is not None and r.source.size == size)
    second = result_of(image)
    assert first is not None and second is not None
    assert first.embedding != second.embedding


def test_vanishing_file_is_skipped_quietly(
    root: Path, tiny_model: Path, embedder: Pipeline, photos: dict[str, Image.Image]
) -> None:
    with running(watch_settings(tiny_model), root, embedder) as daemon:
        # WHEN images appear and vanish again before they settle
        for i in range(5):
            image = save_photo(photos["rocket"], root / f"blink{i}.jpg")
            image.unlink()
        marker = save_photo(photos["coffee"], root / "marker.jpg")
        assert wait_for(has_sidecar(marker))
        assert daemon.worker is not None
        errors = daemon.worker.stats.errors
    # THEN they leave neither sidecars nor error results behind
    assert errors == 0
    assert sorted(p.name for p in root.iterdir()) == ["marker.jpg", "marker.jpg.dinov2.json"]


def test_symlinks_out_of_the_root_are_not_followed(
    root: Path, tmp_path: Path, tiny_model: Path, embedder: Pipeline, photos: dict[str, Image.Image]
) -> None:
    # GIVEN a symlinked file and a symlinked folder pointing outside the watched root
    outside = tmp_path / "outside"
    secret = save_photo(photos["astronaut"], outside / "secret.jpg")
    (root / "link.jpg").symlink_to(secret)
    (root / "linked-dir").symlink_to(outside, target_is_directory=True)
    inside = save_photo(photos["coffee"], root / "inside.jpg")
    (root / "alias.jpg").symlink_to(inside)
    with running(watch_settings(tiny_model), root, embedder):
        assert wait_for(has_sidecar(inside))
        assert wait_for(has_sidecar(root / "alias.jpg"))  # a link that stays inside is fine
        time.sleep(1.0)
    # THEN nothing outside is embedded and nothing is written outside the root
    assert not sidecar_of(root / "link.jpg").exists()
    assert sorted(p.name for p in outside.iterdir()) == ["secret.jpg"]


def test_no_recursive_ignores_subfolders(
    root: Path, tiny_model: Path, embedder: Pipeline, photos: dict[str, Image.Image]
) -> None:
    top = save_photo(photos["rocket"], root / "top.jpg")
    nested = save_photo(photos["coffee"], root / "sub" / "nested.jpg")
    with running(watch_settings(tiny_model, recursive=False), root, embedder):
        assert wait_for(has_sidecar(top))
        later = save_photo(photos["flower"], root / "sub" / "later.jpg")
        top2 = save_photo(photos["chelsea"], root / "top2.jpg")
        assert wait_for(has_sidecar(top2))
        time.sleep(0.5)
    assert not sidecar_of(nested).exists() and not sidecar_of(later).exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "capacity",
    [pytest.param(DEFAULT_CAPACITY, id="default-queue"), pytest.param(100, id="overflow")],
)
def test_burst_of_1000_images_is_fully_processed(
    root: Path,
    tiny_model: Path,
    embedder: Pipeline,
    capacity: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # GIVEN a running daemon (with a queue of 100 paths, the burst overflows it)
    settings = watch_settings(tiny_model, batch_size=32)
    caplog.set_level(logging.WARNING, logger="dinoembed.watcher")
    with running(settings, root, embedder, capacity=capacity) as daemon:
        # WHEN 1,000 small images land at once (in 10 folders)
        images = []
        for i in range(1000):
            folder = root / f"batch{i // 100}"
            folder.mkdir(exist_ok=True)
            images.append(noise_png(folder / f"img{i:04d}.png", seed=i))
        # THEN every one of them gets a success sidecar: none missed
        assert wait_for(lambda: all(sidecar_of(p).exists() for p in images), timeout=180)
        assert daemon.worker is not None
    results = [result_of(p) for p in images]
    assert all(r is not None and r.ok for r in results)
    assert stray_files(root) == []
    # distinct inputs gave distinct embeddings (no result written to the wrong file)
    vectors = {tuple(r.embedding.embedding[:4]) for r in results if r and r.embedding}
    assert len(vectors) == 1000
    overflowed = any("events were lost" in r.getMessage() for r in caplog.records)
    assert overflowed == (capacity < 1000)


def test_up_to_date_tree_is_left_alone_on_restart(
    root: Path,
    tiny_model: Path,
    embedder: Pipeline,
    photos: dict[str, Image.Image],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dinoembed.watcher")
    images = [save_photo(photos[n], root / f"{n}.jpg") for n in ("rocket", "coffee", "flower")]
    with running(watch_settings(tiny_model), root, embedder):
        assert wait_for(lambda: all(has_sidecar(p)() for p in images))
    stamps = {p: sidecar_of(p).stat().st_mtime_ns for p in images}
    contents = {p: sidecar_of(p).read_bytes() for p in images}
    time.sleep(0.05)
    # WHEN the daemon starts again over the same tree
    with running(watch_settings(tiny_model), root, embedder) as daemon:
        time.sleep(1.0)
        assert daemon.worker is not None
        embedded = daemon.worker.stats.embedded
    # THEN no sidecar was rewritten, and the final summary counts them as up to date
    assert embedded == 0
    assert {p: sidecar_of(p).stat().st_mtime_ns for p in images} == stamps
    assert {p: sidecar_of(p).read_bytes() for p in images} == contents
    final = [m for r in caplog.records if (m := r.getMessage()).startswith("stopped: ")]
    assert final[-1].startswith("stopped: 0 embedded, 0 errors, 3 up to date")


def test_copy_of_tree_elsewhere_has_sidecars_repointed(
    root: Path, tmp_path: Path, tiny_model: Path, embedder: Pipeline, photos: dict[str, Image.Image]
) -> None:
    # GIVEN a folder of images with sidecars, copied (with mtimes) to a new place
    image = save_photo(photos["rocket"], root / "r.jpg")
    with running(watch_settings(tiny_model), root, embedder):
        assert wait_for(has_sidecar(image))
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    # WHEN the copy is watched
    with running(watch_settings(tiny_model), copy, embedder) as daemon:
        # THEN its sidecar names the copy, without embedding again
        assert wait_for(
            lambda: (r := result_of(copy / "r.jpg")) is not None and "copy" in r.file_path
        )
        assert daemon.worker is not None
        assert daemon.worker.stats.embedded == 0


def test_daemon_stops_with_status_1_when_the_folder_is_removed(
    root: Path, tiny_model: Path, embedder: Pipeline
) -> None:
    from dinoembed.watcher.daemon import WatchDaemon

    daemon = WatchDaemon(watch_settings(tiny_model), root, embedder=embedder)
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(daemon.run()), name="watch-daemon")
    thread.start()
    try:
        assert wait_for(daemon.ready.is_set)
        # WHEN the watched folder is deleted
        root.rmdir()
        # THEN the daemon stops on its own, with a failure status
        thread.join(30)
    finally:
        daemon.stop()
        thread.join(30)
    assert codes == [1]


def test_watched_folder_may_itself_be_a_symlink(
    tmp_path: Path, tiny_model: Path, embedder: Pipeline, photos: dict[str, Image.Image]
) -> None:
    # GIVEN a symlink to the real folder, as with ~/Pictures -> /data/pictures
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    with running(watch_settings(tiny_model), link, embedder):
        # WHEN an image lands in the real folder
        image = save_photo(photos["coffee"], real / "a.jpg")
        # THEN it is seen through the link and embedded
        assert wait_for(has_sidecar(image))


def test_periodic_summary_line(
    root: Path,
    tiny_model: Path,
    embedder: Pipeline,
    photos: dict[str, Image.Image],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dinoembed.watcher")
    with running(watch_settings(tiny_model), root, embedder, summary_seconds=0.5):
        # WHEN an image is embedded and time passes
        image = save_photo(photos["rocket"], root / "r.jpg")
        assert wait_for(has_sidecar(image))

        # THEN a summary line reports the totals, the rate and the queue depth
        def summaries() -> list[str]:
            return [m for r in caplog.records if (m := r.getMessage()).startswith("summary: ")]

        assert wait_for(lambda: any(" 1 embedded, 0 errors" in m for m in summaries()))
    assert all("images/s, queue depth " in m for m in summaries())


def test_a_sidecar_that_cannot_be_written_does_not_stop_the_daemon(
    root: Path, tiny_model: Path, embedder: Pipeline, photos: dict[str, Image.Image]
) -> None:
    # GIVEN an image whose sidecar name is taken by a folder
    blocked = save_photo(photos["rocket"], root / "blocked.jpg")
    sidecar_of(blocked).mkdir()
    with running(watch_settings(tiny_model), root, embedder) as daemon:
        # WHEN it and then a good image are processed
        good = save_photo(photos["coffee"], root / "good.jpg")
        # THEN the good one still gets its sidecar, and no temp file is left behind
        assert wait_for(has_sidecar(good))
        assert daemon.worker is not None and daemon.worker.is_alive()
    assert sidecar_of(blocked).is_dir()
    assert stray_files(root) == []


def test_kernel_event_queue_overflow_triggers_a_rescan(
    root: Path, tiny_model: Path, embedder: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dinoembed.watcher")
    with running(watch_settings(tiny_model, rescan_seconds=0), root, embedder):
        # WHEN watchdog reports that the kernel dropped inotify events (IN_Q_OVERFLOW;
        # watchdog only logs it, with this message, so that is what the daemon listens to)
        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost"
        )

        # THEN the daemon rescans the tree
        def rescanned() -> bool:
            return any(r.getMessage().startswith("rescan: ") for r in caplog.records)

        assert wait_for(rescanned)
    assert any("events were lost" in r.getMessage() for r in caplog.records)


def test_periodic_rescan_finds_files_no_event_announced(
    root: Path, tiny_model: Path, embedder: Pipeline, photos: dict[str, Image.Image]
) -> None:
    # GIVEN an observer that reports nothing in time (a poller with an hourly interval)
    # and a rescan every half second
    def deaf() -> BaseObserver:
        return PollingObserver(timeout=3600)

    settings = watch_settings(tiny_model, rescan_seconds=0.5)
    with running(settings, root, embedder, native_observer=deaf):
        # WHEN an image lands unannounced
        image = save_photo(photos["rocket"], root / "quiet.jpg")
        # THEN the rescan finds and embeds it
        assert wait_for(has_sidecar(image))


def _copy_sidecars_first(source: Path, dest: Path) -> None:
    """The worst order for a copier: every sidecar lands well before its image."""
    dest.mkdir()
    for sidecar in sorted(source.glob("*.dinov2.json")):
        shutil.copy2(sidecar, dest / sidecar.name)
    time.sleep(1.0)  # longer than the settle time: a scan or the worker could act meanwhile
    for image in sorted(source.glob("*.jpg")):
        shutil.copy2(image, dest / image.name)


def _copytree(source: Path, dest: Path) -> None:
    shutil.copytree(source, dest, copy_function=shutil.copy2)  # what `cp -rp` does


@pytest.mark.parametrize(
    "copy", [_copytree, _copy_sidecars_first], ids=["copytree", "sidecars-1st"]
)
def test_copying_embedded_images_with_sidecars_in_reembeds_and_deletes_nothing(
    root: Path,
    tmp_path: Path,
    tiny_model: Path,
    embedder: Pipeline,
    photos: dict[str, Image.Image],
    caplog: pytest.LogCaptureFixture,
    copy: Callable[[Path, Path], None],
) -> None:
    caplog.set_level(logging.INFO, logger="dinoembed.watcher")
    # GIVEN a collection outside the watched folder, embedded with sidecars
    coll = tmp_path / "coll"
    names = [f"{name}{k}" for k in range(4) for name in ("rocket", "coffee", "chelsea")]
    for n, name in enumerate(names):
        save_photo(photos[name.rstrip("0123456789")], coll / f"{name}.jpg", size=64 + n)
    run_once(watch_settings(tiny_model), coll, embedder)
    originals = {name: result_of(coll / f"{name}.jpg") for name in names}
    assert all(r is not None and r.ok for r in originals.values())
    caplog.clear()
    # WHEN it is copied, sidecars and mtimes included, into the watched folder
    copies = [root / "copy" / f"{name}.jpg" for name in names]

    def repointed() -> bool:
        return all((r := result_of(p)) is not None and r.file_path == str(p) for p in copies)

    with running(watch_settings(tiny_model), root, embedder) as daemon:
        copy(coll, root / "copy")
        assert wait_for(repointed)
        time.sleep(1.0)  # room for a (wrong) re-embedding or deletion
        assert daemon.worker is not None
        stats = daemon.worker.stats
        counts = (stats.embedded, stats.errors, stats.removed, stats.skipped)
        totals = daemon.totals()
    # THEN nothing was embedded again and no sidecar deleted, here or in the source
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "sidecar removed" in m or " success " in m]
    assert counts == (0, 0, 0, len(names))  # files: each copy once, as up to date
    assert (totals["embedded"], totals["removed"], totals["current"]) == (0, 0, len(names))
    final = [m for m in messages if m.startswith("stopped: ")]
    assert final[-1].startswith(
        f"stopped: 0 embedded, 0 errors, {len(names)} up to date, 0 sidecars removed"
    )
    # and each copy's sidecar names the copy, with the original's embedding
    for name, image in zip(names, copies, strict=True):
        result, original = result_of(image), originals[name]
        assert result is not None and original is not None and result.embedding is not None
        assert result.file_path == str(image)
        assert original.embedding is not None
        assert result.embedding.embedding == original.embedding.embedding
        assert result.source == original.source
        assert result_of(coll / f"{name}.jpg") == original
    assert stray_files(root) == []
