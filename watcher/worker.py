"""The worker thread: takes ready paths from the queue and streams them through
the core's :class:`~dinoembed.pipeline.Pipeline`, writing one sidecar per image.

While paths keep becoming ready, they are fed into one ``Pipeline.embed`` call,
so decoding overlaps inference and batches stay full; the call ends when the
queue has nothing ready. On stop, the batch already taken is finished and its
sidecars written; everything else stays for the next start (the scan finds it).
"""

from __future__ import annotations

import logging
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dinoembed.errors import SourceGoneError
from dinoembed.pipeline import Disposition, ImageItem, Outcome, Pipeline, local_item
from dinoembed.results.schema import SourceInfo
from dinoembed.watcher.queue import Pending, Touch, WorkQueue
from dinoembed.watcher.settle import SettlePolicy
from dinoembed.watcher.sidecars import Sidecars, State

log = logging.getLogger(__name__)

IDLE_WAIT_SECONDS = 0.5
ERROR_BACKOFF_SECONDS = 1.0


@dataclass(slots=True)
class Stats:
    """Counters since start (written by the worker thread only, except that the scanner
    adds to ``failed`` the files it finds with a current error sidecar)."""

    embedded: int = 0
    skipped: int = 0
    removed: int = 0
    write_failures: int = 0
    started: float = field(default_factory=time.monotonic)
    # Files, not attempts: a file that fails again and again is one error until it succeeds.
    failed: set[Path] = field(default_factory=set)
    retrying: set[Path] = field(default_factory=set)

    @property
    def errors(self) -> int:
        """Files whose latest result is an error sidecar."""
        return len(self.failed)

    @property
    def troubled(self) -> bool:
        """Anything that did not end in a written success sidecar (``--once`` exits 1)."""
        return bool(self.failed or self.retrying or self.write_failures)


class Worker(threading.Thread):
    def __init__(
        self,
        queue: WorkQueue,
        policy: SettlePolicy,
        embedder: Pipeline,
        sidecars: Sidecars,
        *,
        batch_size: int,
    ) -> None:
        super().__init__(name="dinoembed-watch-worker", daemon=True)
        self.queue = queue
        self.policy = policy
        self.embedder = embedder
        self.sidecars = sidecars
        self.batch_size = batch_size
        self.stats = Stats()
        self.on_done: Callable[[], None] = _nothing  # progress of the initial backlog
        self.success_level = logging.INFO  # DEBUG while a progress line is on the terminal
        self.busy = False
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Finish what was taken from the queue, then end."""
        self._stopping.set()
        self.queue.wake()

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing in hand."""
        return not self.busy and len(self.queue) == 0

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                if not self._drain():
                    self.queue.wait(self.queue.next_check_in(IDLE_WAIT_SECONDS))
            except Exception:
                self.busy = False
                log.exception("worker error; carrying on (a later scan retries what was lost)")
                self._stopping.wait(ERROR_BACKOFF_SECONDS)

    def _take(self) -> list[Pending]:
        return self.queue.take_ready(self.batch_size, self.policy.check)

    def _drain(self) -> bool:
        """Embed everything that is ready now. False when nothing was."""
        self.busy = True
        try:
            first = self._take()
            if not first:
                return False
            for outcome in self.embedder.embed(self._items(first)):
                try:
                    self._finish(outcome)
                except Exception:
                    log.exception("%s: result not written", outcome.item.file_path)
            return True
        finally:
            self.busy = False

    def _items(self, batch: list[Pending]) -> Iterator[ImageItem]:
        while batch:
            for entry in batch:
                item = self._prepare(entry)
                if item is not None:
                    yield item
            if self._stopping.is_set():
                return
            batch = self._take()

    def _prepare(self, entry: Pending) -> ImageItem | None:
        """Sidecar housekeeping for one ready path; an item when it needs embedding."""
        try:
            return self._prepare_path(entry)
        except Exception:
            log.exception("%s: skipped after an unexpected error", entry.path)
            return None

    def _prepare_path(self, entry: Pending) -> ImageItem | None:
        path = entry.path
        if entry.moved_from is not None:
            self.sidecars.move(entry.moved_from, path)
        try:
            st = path.stat()
        except FileNotFoundError:
            if entry.deleted:  # only a delete event, never a sidecar copied ahead of its image
                self.stats.removed += self.sidecars.remove_orphan(path)
            return None
        except OSError:
            return watched_item(path)  # unreadable: the core writes an error result
        if not stat.S_ISREG(st.st_mode):
            return None
        if not self.sidecars.inside_root(path):
            log.info("%s: skipped, it resolves outside %s", path, self.sidecars.root)
            return None
        state = self.sidecars.state(path, st)
        if state is State.RENAMED:
            self.sidecars.rename(path)
            log.log(self.success_level, "%s: up to date, its sidecar now names it", path)
        if state is not State.NEEDED:
            if not entry.sidecar_only:  # else counted when the image itself came by
                if state is State.FAILED:  # an error all the same, as `status` counts it
                    self.stats.failed.add(path)
                else:
                    self.stats.skipped += 1
                self._advance()
            return None
        return watched_item(path)

    def _finish(self, outcome: Outcome) -> None:
        path = Path(outcome.item.file_path)
        if outcome.disposition is Disposition.GONE:
            log.debug("%s: gone before it was read", path)
            return
        if outcome.disposition is Disposition.RETRY:
            log.warning("%s: %s (retried at the next rescan)", path, outcome.reason)
            self.stats.retrying.add(path)
            return
        self.stats.retrying.discard(path)
        result = outcome.result
        if not _unchanged(path, outcome.item.source):
            # Written to while we read it: its final content comes round again.
            if path.exists():
                self.queue.put(path, Touch.CHANGED)
            return
        try:
            self.sidecars.write(result, path)
        except OSError as err:
            log.error("%s: cannot write sidecar: %s", path, err.strerror or err)
            self.stats.write_failures += 1
            self._advance()
            return
        ms = outcome.seconds * 1000
        # extras: fields of their own in --log-format json
        facts = {"path": str(path), "status": result.status, "ms": round(ms)}
        if result.ok:
            self.stats.embedded += 1
            self.stats.failed.discard(path)
            log.log(self.success_level, "%s success %.0f ms", path, ms, extra=facts)
        else:
            self.stats.failed.add(path)
            log.warning(
                "%s error %.0f ms: %s",
                path,
                ms,
                result.error,
                extra=facts | {"error": result.error},
            )
        self._advance()

    def _advance(self) -> None:
        self.on_done()


def _nothing() -> None:
    pass


def watched_item(path: Path) -> ImageItem:
    """The core's local item, except a file that vanished is a SourceGoneError
    (skipped quietly) rather than a "file not found" error result."""
    base = local_item(path)
    absolute = Path(base.file_path)

    def load() -> Path:
        if not absolute.exists():
            raise SourceGoneError(f"{absolute}: vanished before it was read")
        return absolute

    return ImageItem(file_path=base.file_path, load=load, source=base.source)


def _unchanged(path: Path, source: SourceInfo) -> bool:
    """Still the file that was read (False when it is gone)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    except OSError:
        return source.size is None
    if source.size is None:
        return True
    return st.st_size == source.size and st.st_mtime == source.mtime
