"""The watchdog event handler: it only turns events into queue entries.

It runs on the observer thread, so it never stats, reads or embeds anything,
and an exception from one event is logged, never raised into watchdog.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

from dinoembed.common.atomic import is_temp_file
from dinoembed.images.files import looks_like_image
from dinoembed.results.sidecars import image_path, is_sidecar
from dinoembed.watcher.queue import Touch, WorkQueue

log = logging.getLogger(__name__)

_TOUCHES: tuple[tuple[type[FileSystemEvent], Touch], ...] = (
    (FileCreatedEvent, Touch.CREATED),
    (FileModifiedEvent, Touch.MODIFIED),
    (FileClosedEvent, Touch.CLOSED),
    (FileAttribEvent, Touch.CHANGED),
    (FileDeletedEvent, Touch.DELETED),
)


def _path(raw: bytes | str) -> Path:
    return Path(os.fsdecode(raw))


class EnqueueHandler(FileSystemEventHandler):
    """Images go into the work queue; new folders are handed to ``request_scan``.

    ``expects_close`` is True with inotify, which reports close-write: a written
    file then waits for its close. Polling observers never report closes.
    """

    def __init__(
        self,
        queue: WorkQueue,
        suffix: str,
        request_scan: Callable[[Path], None],
        *,
        expects_close: bool = True,
        selected: Callable[[Path], bool] = lambda path: True,
    ) -> None:
        super().__init__()
        self.queue = queue
        self.suffix = suffix
        self.request_scan = request_scan
        self.expects_close = expects_close
        self.selected = selected  # --include/--exclude (a pure name match: no file system call)

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._handle(event)
        except Exception:
            log.exception("ignoring an event that could not be handled: %r", event)

    def _handle(self, event: FileSystemEvent) -> None:
        if isinstance(event, DirCreatedEvent):
            self.request_scan(_path(event.src_path))
        elif isinstance(event, DirMovedEvent):
            self.request_scan(_path(event.dest_path))
        elif isinstance(event, FileMovedEvent):
            self._moved(_path(event.src_path), _path(event.dest_path))
        else:
            for kind, touch in _TOUCHES:
                if isinstance(event, kind):
                    self._touch(_path(event.src_path), touch)
                    return

    def _touch(self, path: Path, touch: Touch) -> None:
        if touch is Touch.MODIFIED and not self.expects_close:
            touch = Touch.CHANGED
        if self._is_image(path):
            self.queue.put(path, touch)
        elif touch is Touch.DELETED and is_sidecar(path.name, self.suffix):
            # A sidecar removed by hand: make it again (if its image is still there).
            self._sidecar_touched(path, Touch.CHANGED)
        elif touch in (Touch.CREATED, Touch.CLOSED) and is_sidecar(path.name, self.suffix):
            # Written in place by someone else (ours are renamed into place): a copy.
            # Its image may still be on its way: the worker points it at the image once
            # both are there, and never treats it as an orphan.
            self._sidecar_touched(path, Touch.SIDECAR)

    def _sidecar_touched(self, sidecar: Path, touch: Touch) -> None:
        image = image_path(sidecar, self.suffix)
        if image is not None and self.selected(image):
            self.queue.put(image, touch)

    def _moved(self, src: Path, dest: Path) -> None:
        src_is_image = self._is_image(src)
        if self._is_image(dest):
            self.queue.put(dest, Touch.MOVED, moved_from=src if src_is_image else None)
        elif src_is_image:
            self.queue.put(src, Touch.DELETED)
        elif is_sidecar(dest.name, self.suffix) and not is_temp_file(src.name):
            # A sidecar renamed into place by another program (rsync, mv): not one of ours,
            # which are renamed from our own temp files.
            self._sidecar_touched(dest, Touch.SIDECAR)

    def _is_image(self, path: Path) -> bool:
        return (
            looks_like_image(path, self.suffix)
            and not is_temp_file(path.name)
            and self.selected(path)
        )
