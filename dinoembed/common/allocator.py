"""The C allocator kept from handing every image's buffers back to the kernel.

Each image the pipeline decodes allocates the same few large buffers again (the decoded
pixels in Pillow's blocks, the resized copy, numpy's float tensors: ~8 MB for a ~1 MP
image). glibc serves an allocation above its mmap threshold with a fresh ``mmap`` and
gives the top of a heap back to the kernel above its trim threshold, so every image
faulted those pages in again, zeroed: ~2,000 page faults and ~5 ms of kernel time per
~1 MP image, ~4% of the whole pipeline on two cores (docs/performance.md). With the
thresholds raised (both are needed: either alone changed nothing measurable) the
buffers stay in the heap and the next image reuses them; peak RSS over 64 12-MP
images is unchanged (259 MB either way).

It is process-wide, so only dinoembed's own processes call it (the command line, the
Lambda handler), not the Python API inside someone else's program. No library exposes
``mallopt``; ctypes calls it where the C library has it (glibc), and elsewhere (macOS,
musl's no-op) nothing changes.
"""

from __future__ import annotations

import ctypes

# glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc caps the mmap threshold at half its heap size (32 MiB on 64-bit): the largest
# allowed. Blocks above it (a 12 MP image decoded at full size) are still mmapped.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20


def keep_freed_buffers() -> bool:
    """Raise glibc's mmap and trim thresholds; True when both were set."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mmap_set = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and mmap_set
