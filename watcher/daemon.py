"""``dinoembed watch``: lifecycle of the directory watcher.

Start-up has no gap: the observer starts first, then the tree is scanned
(events for files the scan also finds are merged in the queue, and a sidecar
that became current meanwhile is not rewritten). ``--once`` skips the observer,
scans, waits for the backlog and exits. Otherwise the main thread supervises:
it scans folders that appear, rescans every ``rescan_seconds`` and whenever
events were lost (our queue or the kernel's inotify queue overflowed), and logs
a summary line every minute. SIGINT/SIGTERM stop the daemon: the batch in
progress is finished and its sidecars written, then it exits 0. If the watched
folder itself disappears, it stops with exit status 1.

Recursion: watching descends into sub-folders unless ``--no-recursive`` or
``DINOEMBED_RECURSIVE=false`` (:meth:`~dinoembed.settings.Settings.recursive_for`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from watchdog.observers.api import BaseObserver

from dinoembed.common.progress import Progress
from dinoembed.errors import ConfigError
from dinoembed.images.pathfilter import PathFilter
from dinoembed.pipeline import Pipeline
from dinoembed.settings import Settings
from dinoembed.watcher.events import EnqueueHandler
from dinoembed.watcher.observer import ObserverFactory, start_observer, stop_observer
from dinoembed.watcher.queue import DEFAULT_CAPACITY, WorkQueue
from dinoembed.watcher.scan import Scanner, ScanReport, count_images
from dinoembed.watcher.settle import SettlePolicy
from dinoembed.watcher.sidecars import Sidecars
from dinoembed.watcher.worker import Worker

log = logging.getLogger(__name__)

SUMMARY_SECONDS = 60.0
TICK_SECONDS = 1.0
EXIT_ROOT_GONE = 1
EXIT_FAILED = 1  # --once: an image failed, must be retried, or its sidecar was not written
INOTIFY_LOGGER = "watchdog.observers.inotify_c"


class _OverflowSignal(logging.Handler):
    """watchdog logs, but does not report, a kernel inotify queue overflow: listen for it."""

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        super().__init__(logging.WARNING)
        self.on_overflow = on_overflow

    def emit(self, record: logging.LogRecord) -> None:
        if "queue overflowed" in record.getMessage():
            self.on_overflow()


@dataclass(frozen=True, slots=True)
class _Parts:
    queue: WorkQueue
    sidecars: Sidecars
    worker: Worker
    scanner: Scanner


class WatchDaemon:
    """One watched folder: observer + scanner + worker. ``run`` blocks until ``stop``."""

    def __init__(
        self,
        settings: Settings,
        directory: Path,
        *,
        embedder: Pipeline | Callable[[], Pipeline],
        capacity: int = DEFAULT_CAPACITY,
        summary_seconds: float = SUMMARY_SECONDS,
        native_observer: ObserverFactory | None = None,
    ) -> None:
        if not directory.is_dir():
            raise ConfigError(f"{directory}: not a folder (dinoembed watch needs a directory)")
        self.settings = settings
        self.root = directory.absolute()
        if self.root.is_symlink():
            # inotify would watch the link itself (watchdog does not follow it): watch its target.
            self.root = self.root.resolve()
        self.recursive = settings.recursive_for("watch")
        self.capacity = capacity
        self.summary_seconds = summary_seconds
        self.native_observer = native_observer
        self._embedder = embedder
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._lost_events = threading.Event()
        self._scan_lock = threading.Lock()
        self._scan_requests: list[Path] = []
        self._scanned_current = 0  # images scans found up to date (the worker counts its own)
        self._scanned_removed = 0  # orphaned sidecars scans removed (the worker counts its own)
        self._initial = ScanReport()
        self.worker: Worker | None = None
        self.exit_code = 0
        self._last_summary = (time.monotonic(), 0)  # (when, images done) at the last summary
        self.ready = threading.Event()  # set once watching and the initial scan is queued

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def request_scan(self, folder: Path) -> None:
        """A folder appeared (created or moved in): look inside it (called by the handler)."""
        with self._scan_lock:
            self._scan_requests.append(folder)
        self._wake.set()

    def _events_lost(self) -> None:
        self._lost_events.set()
        self._wake.set()

    def run(self, *, once: bool = False) -> int:
        """Watch until :meth:`stop` (or, with ``once``, until the backlog is done)."""
        embedder = self._embedder if isinstance(self._embedder, Pipeline) else self._embedder()
        parts = self._assemble(embedder)
        overflow = _OverflowSignal(self._events_lost)
        logging.getLogger(INOTIFY_LOGGER).addHandler(overflow)
        observer = None
        parts.worker.start()
        try:
            if not once:
                observer = self._observe(parts)
            log.info("watching %s (%s)", self.root, "once" if once else type(observer).__name__)
            self._work(parts, once=once)
        finally:
            logging.getLogger(INOTIFY_LOGGER).removeHandler(overflow)
            if observer is not None:
                stop_observer(observer)
            parts.worker.stop()
            parts.worker.join()
            self._summary(parts.worker, parts.queue, final=True)
        if once and self.exit_code == 0 and parts.worker.stats.troubled:
            self.exit_code = EXIT_FAILED
        return self.exit_code

    def _assemble(self, embedder: Pipeline) -> _Parts:
        sidecars = Sidecars(
            self.root,
            self.settings.output_suffix,
            embedder.model,
            normalize=embedder.engine.normalize,
            select=PathFilter(self.settings.include, self.settings.exclude),
        )
        queue = WorkQueue(self.capacity)
        worker = self.worker = Worker(
            queue,
            SettlePolicy(self.settings.settle_seconds),
            embedder,
            sidecars,
            batch_size=self.settings.batch_size,
        )
        scanner = Scanner(
            queue, sidecars, recursive=self.recursive, cancelled=self._stopping.is_set
        )
        return _Parts(queue, sidecars, worker, scanner)

    def _observe(self, parts: _Parts) -> BaseObserver:
        handler = EnqueueHandler(
            parts.queue, parts.sidecars.suffix, self.request_scan, selected=parts.sidecars.selected
        )
        return start_observer(
            self.root,
            handler,
            recursive=self.recursive,
            polling=self.settings.polling,
            native=self.native_observer,
        )

    def _work(self, parts: _Parts, *, once: bool) -> None:
        """The initial scan (with a progress line on a terminal), then supervision."""
        backlog = Backlog.for_stderr(
            self.root, parts.sidecars.suffix, recursive=self.recursive, select=parts.sidecars.select
        )
        parts.worker.on_done = parts.scanner.on_current = backlog.advance
        # An error sidecar found current is an error, as `status` counts it: one set of
        # failed files (set.add/discard are atomic, so the scanning thread may add to it).
        parts.scanner.on_failed = parts.worker.stats.failed.add
        if backlog.shown:  # per-image lines would break the progress line
            parts.worker.success_level = logging.DEBUG
        self._initial = parts.scanner.scan(self.root)
        self._scanned_current += _log_scan(self._initial, "initial scan")
        self._scanned_removed += self._initial.orphans_removed
        self.ready.set()
        if once:
            self._wait_idle(parts.worker)
        else:
            self._supervise(parts, backlog)
        backlog.close()

    def _wait_idle(self, worker: Worker) -> None:
        while not self._stopping.is_set() and not worker.idle:
            self._stopping.wait(0.05)

    def _supervise(self, parts: _Parts, backlog: Backlog) -> None:
        scanner, queue, worker = parts.scanner, parts.queue, parts.worker
        rescan_every = self.settings.rescan_seconds
        next_rescan = time.monotonic() + rescan_every
        next_summary = time.monotonic() + self.summary_seconds
        while not self._stopping.is_set():
            self._wake.wait(TICK_SECONDS)
            self._wake.clear()
            if worker.idle:
                backlog.close()
                worker.success_level = logging.INFO
            if not self.root.is_dir():
                log.error("%s is gone; stopping", self.root)
                self.exit_code = EXIT_ROOT_GONE
                return
            for folder in self._pop_scan_requests():
                if folder.is_dir() and scanner.sidecars.folder_inside_root(folder):
                    report = scanner.scan(folder)
                    self._scanned_current += _log_scan(
                        report, f"new folder {folder}", logging.DEBUG
                    )
                    self._scanned_removed += report.orphans_removed
            now = time.monotonic()
            lost = queue.pop_overflowed() or self._lost_events.is_set()
            if lost or (rescan_every > 0 and now >= next_rescan):
                self._lost_events.clear()
                if lost:
                    log.warning("events were lost (queue overflow); rescanning %s", self.root)
                report = scanner.scan(self.root)
                _log_scan(report, "rescan")  # its up-to-date images were counted before
                self._scanned_removed += report.orphans_removed
                next_rescan = time.monotonic() + rescan_every
            if now >= next_summary:
                self._summary(worker, queue)
                next_summary = now + self.summary_seconds

    def totals(self) -> dict[str, Any]:
        """What the run found and did, as ``backfill`` prints it (the S3 summary's fields)."""
        stats = self.worker.stats if self.worker is not None else None
        if stats is None:
            return {"location": str(self.root)}
        return {
            "location": str(self.root),
            "images": self._initial.images,
            "current": stats.skipped + self._scanned_current,
            "todo": self._initial.queued,
            "embedded": stats.embedded,
            "errors": stats.errors,
            "failed": stats.write_failures + len(stats.retrying),
            "not_written": stats.write_failures,
            "removed": stats.removed + self._scanned_removed,
        }

    def _pop_scan_requests(self) -> list[Path]:
        with self._scan_lock:
            folders, self._scan_requests = self._scan_requests, []
        return folders

    def _summary(self, worker: Worker, queue: WorkQueue, *, final: bool = False) -> None:
        """Totals since start; the rate over the last interval (over the whole run when final)."""
        stats, now = worker.stats, time.monotonic()
        done = stats.embedded + stats.errors
        since, done_before = (stats.started, 0) if final else self._last_summary
        self._last_summary = (now, done)
        log.info(
            "%s: %d embedded, %d errors, %d up to date, %d sidecars removed, "
            "%d sidecars not written, %d to retry; %.2f images/s, queue depth %d",
            "stopped" if final else "summary",
            stats.embedded,
            stats.errors,
            stats.skipped + self._scanned_current,
            stats.removed + self._scanned_removed,
            stats.write_failures,
            len(stats.retrying),
            (done - done_before) / max(now - since, 1e-9),
            len(queue),
            extra={"totals": self.totals()},  # a field of its own in --log-format json
        )


def _log_scan(report: ScanReport, what: str, level: int = logging.INFO) -> int:
    """Log a scan's report; returns how many images it found up to date."""
    log.log(
        level,
        "%s: %d images, %d queued, %d up to date, %d with an error sidecar, "
        "%d orphaned sidecars removed",
        what,
        report.images,
        report.queued,
        report.current,
        report.failed,
        report.orphans_removed,
    )
    return report.current


class Backlog:
    """The progress line for the initial backlog (only when stderr is a terminal).

    Advanced by the scanner (images already up to date) and the worker (images
    done), so it has a lock; closed once the worker is first idle.
    """

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._lock = threading.Lock()

    @classmethod
    def for_stderr(cls, root: Path, suffix: str, *, recursive: bool, select: PathFilter) -> Backlog:
        if not sys.stderr.isatty():
            return cls(None)
        return cls(Progress(count_images(root, suffix, recursive=recursive, select=select)))

    @property
    def shown(self) -> bool:
        return self._progress is not None and self._progress.enabled

    def advance(self) -> None:
        with self._lock:
            progress = self._progress
            if progress is not None and (progress.total is None or progress.done < progress.total):
                progress.advance()

    def close(self) -> None:
        with self._lock:
            progress, self._progress = self._progress, None
        if progress is not None:
            progress.__exit__(None, None, None)


@contextlib.contextmanager
def _stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """SIGINT/SIGTERM call ``stop``; a second one exits at once (status 128 + signal)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        if received:
            # Leave now, without unwinding under a running inference (sidecars are
            # written atomically, so none is left half-written).
            log.warning("second signal: exiting without finishing the batch")
            sys.stderr.flush()
            os._exit(128 + signum)
        received.append(signum)
        log.info("%s: finishing the current batch, then exiting", signal.Signals(signum).name)
        stop()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _log_per_image() -> None:
    """The watcher logs one line per image at INFO even without ``-v``."""
    logger = logging.getLogger("dinoembed.watcher")
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)


def run_watch(
    settings: Settings,
    directory: Path,
    *,
    once: bool,
    embedder: Callable[[], Pipeline],
    on_finish: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """Entry point of ``dinoembed watch DIR [--once]``: 0 after a clean stop.

    ``embedder`` builds the pipeline (the command line's composition root passes it), called
    once the folder is known to exist, so a typo never costs a model download."""
    _log_per_image()
    daemon = WatchDaemon(settings, directory, embedder=embedder)
    with _stop_on_signals(daemon.stop):
        code = daemon.run(once=once)
    if on_finish is not None:
        on_finish(daemon.totals())
    return code
