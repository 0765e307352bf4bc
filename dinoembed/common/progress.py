"""A minimal progress line on stderr, shown only when stderr is a terminal.

With a ``total`` the line reads ``120/400 images, 35.2/s``; without one (a listing whose
length is not known in advance) it reads ``12000 objects listed, 3100.0/s`` and appears
only once there are :data:`MIN_ITEMS` of them, so short runs stay silent.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

MIN_ITEMS = 20


class Progress:
    def __init__(
        self,
        total: int | None,
        stream: TextIO | None = None,
        every: float = 0.2,
        *,
        unit: str = "images",
    ) -> None:
        self.total = total
        self.done = 0
        self.unit = unit
        self.stream = stream or sys.stderr
        self.every = every
        self.enabled = (total is None or total >= MIN_ITEMS) and self.stream.isatty()
        self._start = time.monotonic()
        self._last = 0.0
        self._shown = False

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every or self.done == self.total:
            self._show(now)

    def _show(self, now: float) -> None:
        if not self.enabled or (self.total is None and self.done < MIN_ITEMS):
            return
        self._last = now
        rate = self.done / max(now - self._start, 1e-9)
        count = f"{self.done}" if self.total is None else f"{self.done}/{self.total}"
        self.stream.write(f"\r{count} {self.unit}, {rate:.1f}/s ")
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        """Show the final count and end the line (when there is one to show); later
        advances show nothing. Idempotent."""
        if self.enabled and self.total is None:
            self._show(time.monotonic())
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
        self._shown = False
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc: type[BaseException] | None, val: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
