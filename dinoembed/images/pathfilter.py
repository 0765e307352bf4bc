"""Which files of a folder walk count: the ``--include`` / ``--exclude`` globs."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class PathFilter:
    """``--include`` / ``--exclude`` globs, matched (:mod:`fnmatch`, case-sensitive) against
    a path relative to the folder given, with ``/`` between parts; ``*`` also matches
    ``/``, so ``*.png`` is every PNG at any depth and ``raw/*`` everything under ``raw``.
    A path is kept when it matches some include (or there are none) and no exclude."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.include or self.exclude)

    def accepts(self, relative: str) -> bool:
        if self.include and not any(fnmatch.fnmatchcase(relative, g) for g in self.include):
            return False
        return not any(fnmatch.fnmatchcase(relative, g) for g in self.exclude)

    def accepts_path(self, path: Path, root: Path) -> bool:
        """``path`` (under ``root``) by its relative name; True when nothing is filtered."""
        if not self.active:
            return True
        try:
            relative = path.relative_to(root).as_posix()
        except ValueError:
            return False
        return self.accepts(relative)


ALL = PathFilter()
