"""A minimal progress line on stderr, shown only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

MIN_ITEMS = 20


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None, every: float = 0.2) -> None:
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr
        self.every = every
        self.enabled = total >= MIN_ITEMS and self.stream.isatty()
        self._start = time.monotonic()
        self._last = 0.0

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last >= self.every or self.done == self.total):
            self._last = now
            rate = self.done / max(now - self._start, 1e-9)
            self.stream.write(f"\r{self.done}/{self.total} images, {rate:.1f}/s ")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc: type[BaseException] | None, val: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
