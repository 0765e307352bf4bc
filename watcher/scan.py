"""Walking the tree: the initial scan, rescans, and reconciling sidecars.

A scan queues every image whose sidecar is not current (checked here, on the
scanning thread, so an up-to-date tree costs no embedding work) and removes
sidecars whose image is gone (deleted or renamed while the daemon was not
running). Only sidecars that were there before the scanner started can be orphans:
one that appeared while watching may belong to a copy in progress (``cp -rp coll
inbox/``) whose image follows, and an image deleted while watching is handled by its
delete event. Symlinked folders are not followed; symlinked files that resolve
outside the root are skipped. Sidecar temp files older than the scanner (left by
a process killed between writing a sidecar and renaming it into place) are removed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dinoembed.common.atomic import is_temp_file
from dinoembed.images.files import looks_like_image, walk_files
from dinoembed.images.pathfilter import ALL, PathFilter
from dinoembed.results.sidecars import image_path, is_sidecar
from dinoembed.watcher.queue import Touch, WorkQueue
from dinoembed.watcher.sidecars import Sidecars, State

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ScanReport:
    images: int = 0
    queued: int = 0
    current: int = 0
    failed: int = 0  # images whose current sidecar records an error (as `status` counts them)
    orphans_removed: int = 0
    temps_removed: int = 0


def count_images(folder: Path, suffix: str, *, recursive: bool, select: PathFilter = ALL) -> int:
    return sum(
        1
        for p in walk_files(folder, recursive=recursive)
        if looks_like_image(p, suffix) and select.accepts_path(p, folder)
    )


class Scanner:
    """Finds work under a folder and puts it into the queue (blocking when it is full)."""

    def __init__(
        self,
        queue: WorkQueue,
        sidecars: Sidecars,
        *,
        recursive: bool,
        cancelled: Callable[[], bool],
    ) -> None:
        self.queue = queue
        self.sidecars = sidecars
        self.recursive = recursive
        self.cancelled = cancelled
        self.on_current: Callable[[], None] = lambda: None
        self.on_failed: Callable[[Path], None] = lambda path: None
        self.started = time.time()  # our own temp files are never older than this

    def scan(self, folder: Path, touch: Touch = Touch.SCAN) -> ScanReport:
        report = ScanReport()
        suffix = self.sidecars.suffix
        for path in walk_files(folder, recursive=self.recursive):
            if self.cancelled():
                break
            try:
                if looks_like_image(path, suffix):
                    if self.sidecars.selected(path):
                        self._image(path, touch, report)
                elif is_sidecar(path.name, suffix):
                    image = image_path(path, suffix)
                    if (
                        image is not None
                        and self.sidecars.selected(image)
                        and self._from_before(path)
                    ):
                        report.orphans_removed += self.sidecars.remove_orphan(image)
                elif is_temp_file(path.name) and suffix + "." in path.name:
                    report.temps_removed += self._remove_stale_temp(path)
            except OSError as err:
                log.warning("%s: skipped during scan: %s", path, err.strerror or err)
        return report

    def _from_before(self, sidecar: Path) -> bool:
        """Was this sidecar there before we started? (ctime: a copy cannot set it back)"""
        return sidecar.lstat().st_ctime < self.started

    def _remove_stale_temp(self, path: Path) -> bool:
        """A sidecar temp file from before we started belongs to a killed writer."""
        if path.lstat().st_mtime >= self.started:
            return False
        path.unlink(missing_ok=True)
        log.info("%s: removed a temp file left by an interrupted sidecar write", path)
        return True

    def _image(self, path: Path, touch: Touch, report: ScanReport) -> None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return  # vanished (or a dangling symlink)
        if not self.sidecars.inside_root(path):
            log.info("%s: skipped, it resolves outside %s", path, self.sidecars.root)
            return
        report.images += 1
        state = self.sidecars.state(path, st)
        if state in (State.CURRENT, State.FAILED):
            if state is State.FAILED:
                report.failed += 1
                self.on_failed(path)
            else:
                report.current += 1
            self.on_current()
            return
        if self.queue.put(path, touch, block=True, cancelled=self.cancelled):
            report.queued += 1
