"""Starting the watchdog observer: the native one (inotify), or polling.

``--polling`` picks watchdog's ``PollingObserver`` (for NFS, SMB, SSHFS, where
inotify sees only local changes). When inotify runs out of instances (EMFILE)
or watches (ENOSPC) the daemon falls back to polling with a warning. watchdog
raises those errors for the root folder; for sub-folders it skips the watch
silently, so after starting we also compare the number of folders watched
with the number that exist.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from dinoembed.watcher.events import EnqueueHandler

log = logging.getLogger(__name__)

LIMIT_ERRNOS = frozenset({errno.ENOSPC, errno.EMFILE})
POLL_INTERVAL_SECONDS = 1.0
RECOUNT_DELAY_SECONDS = 0.2
LIMITS_HINT = "raise fs.inotify.max_user_watches / max_user_instances (sysctl) to use inotify again"

ObserverFactory = Callable[[], BaseObserver]


def start_observer(
    root: Path,
    handler: EnqueueHandler,
    *,
    recursive: bool,
    polling: bool,
    native: ObserverFactory | None = None,
    poll_interval: float = POLL_INTERVAL_SECONDS,
) -> BaseObserver:
    """Schedule ``handler`` on ``root`` and start watching; returns the running observer."""
    if not polling:
        try:
            observer = _start(
                native or Observer, root, handler, recursive=recursive, expects_close=True
            )
        except OSError as err:
            if err.errno not in LIMIT_ERRNOS:
                raise
            log.warning(
                "inotify limit reached (%s); polling %s instead: %s", err, root, LIMITS_HINT
            )
        else:
            missing = unwatched_folders(observer, root, recursive=recursive)
            if missing:  # maybe folders created meanwhile, not yet picked up: look again
                time.sleep(RECOUNT_DELAY_SECONDS)
                missing = unwatched_folders(observer, root, recursive=recursive)
            if not missing:
                return observer
            log.warning(
                "inotify could not watch %d folder(s) under %s; polling instead: %s",
                missing,
                root,
                LIMITS_HINT,
            )
            stop_observer(observer)
    return _start(
        lambda: PollingObserver(timeout=poll_interval),
        root,
        handler,
        recursive=recursive,
        expects_close=False,
    )


def _start(
    factory: ObserverFactory,
    root: Path,
    handler: EnqueueHandler,
    *,
    recursive: bool,
    expects_close: bool,
) -> BaseObserver:
    handler.expects_close = expects_close
    observer = factory()
    try:
        observer.schedule(handler, str(root), recursive=recursive)
        observer.start()
    except BaseException:
        stop_observer(observer)
        raise
    log.debug("watching %s with %s", root, type(observer).__name__)
    return observer


def stop_observer(observer: BaseObserver) -> None:
    observer.stop()
    with contextlib.suppress(RuntimeError):  # never started
        observer.join()


def unwatched_folders(observer: BaseObserver, root: Path, *, recursive: bool) -> int:
    """How many existing folders inotify is not watching (0 when it cannot tell)."""
    watched = 0
    for emitter in observer.emitters:
        group = getattr(emitter, "_inotify", None)
        paths = getattr(group, "_active_callbacks_by_path", None)
        if paths is None:
            return 0  # not inotify, or a watchdog whose internals differ: nothing to compare
        watched += len(paths)
    if not recursive:
        return max(0, 1 - watched)
    folders = 1 + sum(
        1
        for dirpath, dirnames, _ in os.walk(root)
        for name in dirnames
        if not Path(dirpath, name).is_symlink()
    )
    return max(0, folders - watched)
