"""The watcher's parts on their own: queue, settle check, scan, observer fallback, settings."""

from __future__ import annotations

import errno
import logging
import threading
from pathlib import Path

import pytest
from PIL import Image
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from dinoembed.errors import ConfigError
from dinoembed.pipeline import Disposition, Pipeline
from dinoembed.results.sidecars import write_sidecar
from dinoembed.settings import Settings
from dinoembed.watcher.daemon import WatchDaemon
from dinoembed.watcher.events import EnqueueHandler
from dinoembed.watcher.observer import start_observer, stop_observer
from dinoembed.watcher.queue import NEVER, Pending, Touch, Verdict, WorkQueue
from dinoembed.watcher.settle import SettlePolicy
from dinoembed.watcher.worker import watched_item
from tests.test_watch_support import (
    has_sidecar,
    result_of,
    run_once,
    save_photo,
    sidecar_of,
    wait_for,
    watch_settings,
)

# --- queue -------------------------------------------------------------------


def ready(entry: Pending, now: float) -> Verdict:
    return Verdict.READY


def test_queue_keeps_each_path_once_and_merges_what_it_learns(tmp_path: Path) -> None:
    # GIVEN several events for the same path
    queue = WorkQueue(capacity=10)
    path, origin = tmp_path / "a.jpg", tmp_path / "old.jpg"
    queue.put(path, Touch.CREATED)
    queue.put(path, Touch.MODIFIED)
    queue.put(path, Touch.MOVED, moved_from=origin)
    queue.put(tmp_path / "b.jpg", Touch.SCAN)
    # WHEN the ready ones are taken
    taken = queue.take_ready(10, ready)
    # THEN each path comes once, in arrival order, with the merged facts
    assert [e.path.name for e in taken] == ["a.jpg", "b.jpg"]
    assert taken[0].moved_from == origin and not taken[0].awaiting_close
    assert taken[1].last_event == NEVER
    assert len(queue) == 0


@pytest.mark.parametrize(
    ("touches", "deleted", "sidecar_only"),
    [
        ([Touch.CREATED, Touch.DELETED], True, False),
        ([Touch.DELETED, Touch.CREATED], False, False),  # deleted, then made again
        ([Touch.DELETED, Touch.SIDECAR], True, False),  # a sidecar event says nothing of it
        ([Touch.SIDECAR], False, True),  # only its sidecar came: not a deleted image
        ([Touch.SIDECAR, Touch.CLOSED], False, False),
    ],
)
def test_queue_remembers_whether_the_image_itself_was_deleted(
    tmp_path: Path, touches: list[Touch], deleted: bool, sidecar_only: bool
) -> None:
    queue = WorkQueue(capacity=10)
    for touch in touches:
        queue.put(tmp_path / "a.jpg", touch)
    [entry] = queue.take_ready(10, ready)
    assert (entry.deleted, entry.sidecar_only) == (deleted, sidecar_only)


def test_waiting_paths_do_not_hold_up_ready_ones(tmp_path: Path) -> None:
    queue = WorkQueue(capacity=10)
    for name in ("busy.jpg", "done1.jpg", "done2.jpg", "done3.jpg"):
        queue.put(tmp_path / name, Touch.CREATED)

    def check(entry: Pending, now: float) -> Verdict:
        if entry.path.name == "busy.jpg":
            entry.next_check = now + 60
            return Verdict.WAIT
        return Verdict.READY

    # WHEN the worker asks for two ready paths
    first = queue.take_ready(2, check)
    # THEN it gets the first two ready ones; the busy one stays, and is not re-checked early
    assert [e.path.name for e in first] == ["done1.jpg", "done2.jpg"]
    assert [e.path.name for e in queue.take_ready(5, ready)] == ["done3.jpg"]
    assert len(queue) == 1
    assert queue.next_check_in(1.0) == pytest.approx(1.0)


def test_full_queue_drops_new_paths_and_reports_overflow_once(tmp_path: Path) -> None:
    queue = WorkQueue(capacity=2)
    assert queue.put(tmp_path / "1.jpg", Touch.CREATED)
    assert queue.put(tmp_path / "2.jpg", Touch.CREATED)
    # WHEN a third path arrives from an event handler (which must not block)
    dropped = not queue.put(tmp_path / "3.jpg", Touch.CREATED)
    # THEN it is dropped, known paths are still updated, and the overflow is reported once
    assert dropped and len(queue) == 2
    assert queue.put(tmp_path / "1.jpg", Touch.CLOSED)
    assert queue.pop_overflowed() is True
    assert queue.pop_overflowed() is False


def test_blocking_put_waits_for_room(tmp_path: Path) -> None:
    queue = WorkQueue(capacity=1)
    queue.put(tmp_path / "1.jpg", Touch.SCAN)
    done = threading.Event()

    def scan() -> None:
        queue.put(tmp_path / "2.jpg", Touch.SCAN, block=True)
        done.set()

    thread = threading.Thread(target=scan)
    thread.start()
    # WHEN the scanner blocks on a full queue THEN it only continues once the worker took one
    assert not done.wait(0.3)
    assert [e.path.name for e in queue.take_ready(1, ready)] == ["1.jpg"]
    assert done.wait(10)
    thread.join()
    assert [e.path.name for e in queue.take_ready(1, ready)] == ["2.jpg"]
    assert queue.pop_overflowed() is False


def test_blocking_put_gives_up_when_cancelled(tmp_path: Path) -> None:
    queue = WorkQueue(capacity=1)
    queue.put(tmp_path / "1.jpg", Touch.SCAN)
    assert not queue.put(tmp_path / "2.jpg", Touch.SCAN, block=True, cancelled=lambda: True)


# --- settle ------------------------------------------------------------------


def test_settled_file_is_ready_after_the_interval(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x" * 10)
    policy, entry = SettlePolicy(settle=0.5), Pending(path, last_event=100.0)
    # first sight: remember size+mtime, wait
    assert policy.check(entry, 100.1) is Verdict.WAIT
    assert entry.next_check == pytest.approx(100.6)
    assert policy.check(entry, 100.4) is Verdict.WAIT
    assert policy.check(entry, 100.6) is Verdict.READY


def test_growing_file_restarts_the_interval(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x" * 10)
    policy, entry = SettlePolicy(settle=0.5), Pending(path)
    assert policy.check(entry, 10.0) is Verdict.WAIT
    with path.open("ab") as fh:  # WHEN it grows between checks
        fh.write(b"y")
    # THEN the stability clock starts again from this check
    assert policy.check(entry, 10.6) is Verdict.WAIT
    assert policy.check(entry, 11.1) is Verdict.READY


def test_file_open_for_writing_waits_for_close_or_grace(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x" * 10)
    policy = SettlePolicy(settle=0.2, unclosed_grace=5.0)
    entry = Pending(path)
    entry.apply(Touch.MODIFIED, 0.0, None)  # written, no close-write yet
    assert policy.check(entry, 0.1) is Verdict.WAIT
    assert policy.check(entry, 1.0) is Verdict.WAIT  # stable, but still open
    assert policy.check(entry, 5.2) is Verdict.READY  # the grace period is over
    closed = Pending(path)
    closed.apply(Touch.MODIFIED, 0.0, None)
    closed.apply(Touch.CLOSED, 0.5, None)  # WHEN the writer closes it
    assert policy.check(closed, 0.6) is Verdict.WAIT
    assert policy.check(closed, 0.8) is Verdict.READY  # THEN settle after the close suffices


def test_announced_empty_file_waits_but_a_scanned_one_does_not(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.touch()
    policy = SettlePolicy(settle=0.0, unclosed_grace=5.0)
    created = Pending(path)
    created.apply(Touch.CREATED, 0.0, None)
    assert policy.check(created, 1.0) is Verdict.WAIT  # created, probably not written yet
    assert policy.check(Pending(path), 1.0) is Verdict.READY  # found empty by a scan


def test_vanished_file_is_ready_for_cleanup(tmp_path: Path) -> None:
    assert SettlePolicy().check(Pending(tmp_path / "gone.jpg"), 0.0) is Verdict.READY


def test_vanished_file_raises_source_gone_when_loaded(tmp_path: Path, embedder: Pipeline) -> None:
    # GIVEN an item for a file that is deleted before the pipeline reads it
    path = tmp_path / "a.jpg"
    path.write_bytes(b"soon gone")
    item = watched_item(path)
    path.unlink()
    # WHEN it is embedded THEN the outcome says it is gone: nothing to write
    outcome = embedder.embed_one(item)
    assert outcome.disposition is Disposition.GONE and not outcome.disposition.writes
    assert "vanished" in outcome.reason


# --- observer ----------------------------------------------------------------


def _limit_reached() -> BaseObserver:
    # What watchdog raises when inotify_add_watch hits fs.inotify.max_user_watches;
    # the real limit cannot be reached here without root, so it is injected.
    raise OSError(errno.ENOSPC, "inotify watch limit reached")


def test_inotify_limit_falls_back_to_polling(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = WorkQueue()
    handler = EnqueueHandler(queue, ".dinov2.json", lambda folder: None)
    # WHEN the native observer cannot be started for lack of watches
    observer = start_observer(
        tmp_path, handler, recursive=True, polling=False, native=_limit_reached, poll_interval=0.1
    )
    try:
        # THEN a polling observer runs instead, with a warning, and delivers events
        assert isinstance(observer, PollingObserver)
        assert handler.expects_close is False
        assert any("polling" in r.getMessage() for r in caplog.records if r.levelno >= 30)
        (tmp_path / "new.jpg").write_bytes(b"data")
        assert wait_for(lambda: len(queue) == 1, timeout=10)
    finally:
        stop_observer(observer)


def test_other_observer_errors_are_not_hidden(tmp_path: Path) -> None:
    handler = EnqueueHandler(WorkQueue(), ".dinov2.json", lambda folder: None)

    def broken() -> BaseObserver:
        raise OSError(errno.EACCES, "permission denied")

    with pytest.raises(OSError, match="permission denied"):
        start_observer(tmp_path, handler, recursive=True, polling=False, native=broken)


# --- settings and start-up -----------------------------------------------------


def test_watch_is_recursive_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().recursive_for("watch") is True
    assert Settings().recursive_for("collection") is True
    assert Settings().recursive_for("embed") is False
    assert Settings(recursive=False).recursive_for("watch") is False  # --no-recursive
    assert Settings(recursive=True).recursive_for("embed") is True  # embed -r
    monkeypatch.setenv("DINOEMBED_RECURSIVE", "false")
    assert Settings().recursive_for("watch") is False


def _no_model() -> Pipeline:
    raise AssertionError("the model must not be loaded")


def test_watching_a_missing_folder_is_a_config_error(tmp_path: Path, tiny_model: Path) -> None:
    with pytest.raises(ConfigError, match="not a folder"):
        WatchDaemon(watch_settings(tiny_model), tmp_path / "nope", embedder=_no_model)


def test_once_embeds_the_backlog_and_removes_orphaned_sidecars(
    tmp_path: Path, tiny_model: Path, embedder: Pipeline, photos: dict[str, Image.Image]
) -> None:
    # GIVEN images, a sidecar whose image was deleted while no daemon ran,
    # and a file that merely looks like a sidecar
    image = save_photo(photos["coffee"], tmp_path / "a.jpg")
    gone = save_photo(photos["rocket"], tmp_path / "gone.jpg")
    run_once(watch_settings(tiny_model), tmp_path, embedder)
    gone.unlink()
    (tmp_path / "foreign.jpg.dinov2.json").write_text('{"not": "ours"}')
    new = save_photo(photos["chelsea"], tmp_path / "sub" / "b.jpg")
    # WHEN `--once` runs
    daemon = run_once(watch_settings(tiny_model), tmp_path, embedder)
    # THEN the new image is embedded, the orphan is removed, the foreign file kept
    assert has_sidecar(image)() and has_sidecar(new)()
    assert not sidecar_of(gone).exists()
    assert (tmp_path / "foreign.jpg.dinov2.json").exists()
    assert daemon.worker is not None and daemon.worker.stats.embedded == 1


def test_sidecar_from_another_model_is_redone(
    tmp_path: Path, tiny_model: Path, embedder: Pipeline, photos: dict[str, Image.Image]
) -> None:
    image = save_photo(photos["coffee"], tmp_path / "a.jpg")
    run_once(watch_settings(tiny_model), tmp_path, embedder)
    first = result_of(image)
    assert first is not None
    # GIVEN a (newer) sidecar that records another model's sha256
    other = first.model_copy(update={"model": first.model.model_copy(update={"sha256": "0" * 64})})
    write_sidecar(other, sidecar_of(image))
    # WHEN the daemon runs THEN the image is embedded again with this model
    run_once(watch_settings(tiny_model), tmp_path, embedder)
    again = result_of(image)
    assert again is not None and again.model == embedder.model


def test_per_image_log_lines(
    tmp_path: Path,
    tiny_model: Path,
    embedder: Pipeline,
    photos: dict[str, Image.Image],
    caplog: pytest.LogCaptureFixture,
) -> None:
    save_photo(photos["coffee"], tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_bytes(b"junk")
    caplog.set_level(logging.INFO, logger="dinoembed.watcher")
    run_once(watch_settings(tiny_model), tmp_path, embedder, expect=1)  # b.jpg failed
    lines = [r.getMessage() for r in caplog.records if r.name == "dinoembed.watcher.worker"]
    assert any(m.startswith(f"{tmp_path / 'a.jpg'} success ") and " ms" in m for m in lines)
    assert any(m.startswith(f"{tmp_path / 'b.jpg'} error ") for m in lines)
    assert any("stopped: 1 embedded, 1 errors" in r.getMessage() for r in caplog.records)


def test_inotify_is_used_for_a_tree_within_the_limits(tmp_path: Path) -> None:
    # GIVEN a tree of nested folders (and a symlinked folder, which is not watched)
    for i in range(5):
        for j in range(4):
            (tmp_path / f"d{i}" / f"e{j}").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "d0", target_is_directory=True)
    handler = EnqueueHandler(WorkQueue(), ".dinov2.json", lambda folder: None)
    # WHEN the observer starts THEN every folder is watched by inotify: no fallback
    observer = start_observer(tmp_path, handler, recursive=True, polling=False)
    try:
        assert not isinstance(observer, PollingObserver)
        assert handler.expects_close is True
    finally:
        stop_observer(observer)


def test_folders_inotify_does_not_watch_are_counted(tmp_path: Path) -> None:
    # GIVEN a real inotify observer that watches only the top of a tree of 3 sub-folders
    # (what watchdog leaves behind, silently, when the watch limit is hit below the root)
    from watchdog.observers.inotify import InotifyObserver

    from dinoembed.watcher.observer import unwatched_folders

    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    observer = InotifyObserver()
    observer.schedule(EnqueueHandler(WorkQueue(), ".x", lambda f: None), str(tmp_path))
    observer.start()
    try:
        # THEN the shortfall is seen, so the daemon can fall back to polling
        assert unwatched_folders(observer, tmp_path, recursive=True) == 3
        assert unwatched_folders(observer, tmp_path, recursive=False) == 0
    finally:
        stop_observer(observer)
