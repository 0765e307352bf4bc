"""Atomic file replacement: a reader sees the old file or the whole new one, never half.

The one helper for every file dinoembed writes in place of another (sidecars,
model downloads, the quantised model, collection indexes, exports): a temp file in
the same folder (so the rename is atomic), fsynced, renamed into place, and
removed if anything fails before the rename.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def is_temp_file(name: str) -> bool:
    """Temp files made by :func:`atomic_path`: hidden and ending in ``.tmp``."""
    base = Path(name).name
    return base.startswith(".") and base.endswith(TEMP_SUFFIX)


def temp_prefix(path: Path) -> str:
    """Every temp file for ``path`` starts with this (to find a killed writer's leftovers)."""
    return f".{path.name}."


@contextlib.contextmanager
def atomic_path(path: Path, *, mode: int = 0o644) -> Iterator[Path]:
    """A temp path to write ``path``'s new content to; renamed over ``path`` on success.

    If the block raises, the temp file is removed and ``path`` is untouched.
    """
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=TEMP_SUFFIX)
    except OSError as err:  # name the file being written, not the temp file's folder
        raise OSError(err.errno, err.strerror, str(path)) from err
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        tmp.chmod(mode)
        try:
            tmp.replace(path)
        except OSError as err:
            raise OSError(err.errno, err.strerror, str(path)) from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
