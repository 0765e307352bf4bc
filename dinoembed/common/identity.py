"""When a file counts as unchanged without reading it: one rule for the model store's
remembered hashes and for a session created from a model file before it was verified."""

from __future__ import annotations

import os


def file_identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    """What changes whenever a file's content may have: size, mtime, ctime, inode."""
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino
