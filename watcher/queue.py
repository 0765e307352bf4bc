"""A bounded, de-duplicating queue of paths waiting to be embedded.

Event handlers (on the observer thread) and scans put paths in; the worker
takes the ones that are ready. A path is in the queue at most once: a second
event for it only updates what we know (time of the last event, whether a
writer still has it open, where it was moved from).

The observer thread must never block, so when the queue is full a *new* path
is dropped and :attr:`WorkQueue.overflowed` is set; the daemon then rescans
the tree once the queue has drained, which finds the dropped files again.
Scans themselves block on a full queue instead (backpressure).
"""

from __future__ import annotations

import enum
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CAPACITY = 10_000
NEVER = -math.inf


class Touch(enum.Enum):
    """What happened to a path, as far as readiness is concerned."""

    SCAN = "scan"  # found by a scan: no event, nothing known about writers
    CREATED = "created"  # a new name (also a file moved in from outside the tree)
    MODIFIED = "modified"  # written to: with inotify, wait for the close
    CLOSED = "closed"  # a writer closed it (inotify IN_CLOSE_WRITE)
    MOVED = "moved"  # renamed into place: complete, as renames are atomic
    CHANGED = "changed"  # attributes changed, or its sidecar vanished
    SIDECAR = "sidecar"  # its sidecar was written by someone else (a copy): check its file_path
    DELETED = "deleted"


@dataclass(slots=True)
class Pending:
    """One queued path and what the settle check knows about it."""

    path: Path
    last_event: float = NEVER  # monotonic time of the last event (NEVER for scans)
    awaiting_close: bool = False  # written to, and no close-write seen since
    moved_from: Path | None = None  # an image path this one was renamed from
    deleted: bool = False  # the latest event said it is gone (only then is its sidecar removed)
    sidecar_only: bool = True  # queued only because its sidecar was written by someone else
    signature: tuple[int, int] | None = None  # (size, mtime_ns) at the last check
    stable_since: float = NEVER  # monotonic time the signature was first seen
    next_check: float = NEVER  # do not stat again before this time

    def apply(self, touch: Touch, now: float, moved_from: Path | None) -> None:
        if touch is not Touch.SCAN:
            self.last_event = now
            self.next_check = NEVER
        if touch is Touch.DELETED:
            self.deleted = True
        elif touch is not Touch.SIDECAR:
            self.deleted = False
        if touch is not Touch.SIDECAR:
            self.sidecar_only = False
        if touch is Touch.MODIFIED:
            self.awaiting_close = True
        elif touch in (Touch.CLOSED, Touch.MOVED, Touch.DELETED):
            self.awaiting_close = False
        if moved_from is not None:
            self.moved_from = moved_from


class Verdict(enum.Enum):
    READY = "ready"  # complete: embed it (or clean up after it, if it is gone)
    WAIT = "wait"  # check again at pending.next_check


Check = Callable[[Pending, float], Verdict]


class WorkQueue:
    """Paths in arrival order, each at most once, at most ``capacity`` of them."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._items: dict[Path, Pending] = {}
        self._cond = threading.Condition()
        self._overflowed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(
        self,
        path: Path,
        touch: Touch,
        *,
        moved_from: Path | None = None,
        block: bool = False,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> bool:
        """Add or update ``path``. False when it was dropped (full and not blocking,
        or ``cancelled()`` became true while waiting for room)."""
        with self._cond:
            entry = self._items.get(path)
            while entry is None and len(self._items) >= self.capacity:
                if not block:
                    self._overflowed = True
                    return False
                if cancelled():
                    return False
                self._cond.wait(0.2)
                entry = self._items.get(path)
            if entry is None:
                entry = self._items[path] = Pending(path)
            entry.apply(touch, time.monotonic(), moved_from)
            self._cond.notify_all()
            return True

    def take_ready(self, limit: int, check: Check) -> list[Pending]:
        """Remove and return up to ``limit`` entries that ``check`` finds ready."""
        taken: list[Pending] = []
        with self._cond:
            now = time.monotonic()
            for entry in self._items.values():
                if len(taken) >= limit:
                    break
                if entry.next_check <= now and check(entry, now) is Verdict.READY:
                    taken.append(entry)
            for entry in taken:
                del self._items[entry.path]
            if taken:
                self._cond.notify_all()
        return taken

    def next_check_in(self, default: float) -> float:
        """Seconds until some entry may become ready (``default`` when empty)."""
        with self._cond:
            if not self._items:
                return default
            soonest = min(entry.next_check for entry in self._items.values())
        return max(0.0, min(default, soonest - time.monotonic()))

    def wait(self, timeout: float) -> None:
        """Sleep until something is put or taken, or ``timeout`` passes."""
        with self._cond:
            self._cond.wait(timeout)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def pop_overflowed(self) -> bool:
        """True once after paths were dropped because the queue was full."""
        with self._cond:
            overflowed, self._overflowed = self._overflowed, False
            return overflowed
