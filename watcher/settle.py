"""Completeness detection: is a queued file finished being written?

A file is ready once

* no event arrived for it for ``settle`` seconds, and
* its size and mtime (nanoseconds) stayed the same across ``settle`` seconds.

With inotify, a file that was written to and not yet closed (no
``IN_CLOSE_WRITE`` since the last write) waits for the close instead; if the
writer keeps it open and idle for ``unclosed_grace`` seconds it is taken as
complete anyway (and re-embedded if it changes later). Empty files are treated
the same way when an event announced them, since "created, not yet written"
is the common case (an empty file found by a scan gets its error sidecar).

A path that no longer exists is ready too: the worker then removes its sidecar.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

from dinoembed.watcher.queue import NEVER, Pending, Verdict

UNCLOSED_GRACE_SECONDS = 30.0
MIN_RECHECK_SECONDS = 0.02


@dataclass(frozen=True, slots=True)
class SettlePolicy:
    settle: float = 0.3
    unclosed_grace: float = UNCLOSED_GRACE_SECONDS

    def __post_init__(self) -> None:
        if self.settle < 0 or self.unclosed_grace < 0:
            raise ValueError("settle intervals must not be negative")

    def check(self, entry: Pending, now: float) -> Verdict:
        """Stat ``entry.path``; update what we know; READY or WAIT (with ``next_check`` set)."""
        try:
            st = entry.path.stat()
        except FileNotFoundError:
            return Verdict.READY
        except OSError:
            # Unreadable (permissions, a broken symlink loop, ...): let the worker
            # decide, which writes an error sidecar a person can act on.
            return Verdict.READY
        if not stat.S_ISREG(st.st_mode):
            return Verdict.READY
        signature = (st.st_size, st.st_mtime_ns)
        if signature != entry.signature:
            entry.signature = signature
            entry.stable_since = now
        needed = self.settle
        if entry.awaiting_close or (st.st_size == 0 and entry.last_event != NEVER):
            needed = max(self.unclosed_grace, self.settle)
        quiet_since = max(entry.stable_since, entry.last_event)
        if now - quiet_since >= needed:
            return Verdict.READY
        entry.next_check = max(quiet_since + needed, now + MIN_RECHECK_SECONDS)
        return Verdict.WAIT
