"""libtiff's own messages (``TIFFFetchNormalTag: …``, ``WEBP compression support is not
configured``) into logging, never raw onto stderr (SPEC §9).

libtiff reports through two process-wide C callbacks whose default writes straight to
file descriptor 2, past Python's ``sys.stderr`` and logging; Pillow (13) neither sets
them nor exposes them. So, once, before the first decode, :func:`route_libtiff_messages`
finds the libtiff that Pillow's ``_imaging`` actually loaded (``/proc/self/maps``: the
wheel bundles its own copy, a distribution's Pillow links the system one) and sets both
callbacks (``TIFFSetWarningHandler``/``TIFFSetErrorHandler``) to a ctypes function that
formats the message with the C library's ``vsnprintf`` and logs it on
``dinoembed.images.libtiff`` at INFO (shown with ``-v``), like other library warnings:
whatever made libtiff complain already ends as the image's own error result.

Why not redirect file descriptor 2 around decoding instead: it is process-wide, so with
decoding in worker threads it would swallow (or misattribute) every other thread's
stderr output, our log records included. The callbacks are the library's own switch;
ctypes takes the GIL for a callback made from any thread. Where libtiff cannot be found
(not Linux, Pillow without libtiff) nothing changes and a DEBUG record says so.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_MESSAGE_BYTES = 1024
# void handler(const char *module, const char *fmt, va_list ap): a va_list arrives as a
# pointer on x86-64 (an array type) and on AArch64 (a large struct passed by reference),
# and is passed on the same way to vsnprintf.
_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)

_lock = threading.Lock()
_installed: list[Any] = []  # the ctypes callbacks, kept alive while libtiff holds them


def _loaded_libtiff() -> str | None:
    """The path of the libtiff shared library mapped into this process, if any."""
    from PIL import Image  # noqa: F401  (loads _imaging, which links libtiff)

    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        if "/libtiff" in path and ".so" in path:
            return path.strip()
    return None


def _handler(vsnprintf: Any) -> Any:
    def handle(module: bytes | None, fmt: bytes | None, args: int | None) -> None:
        try:
            buffer = ctypes.create_string_buffer(_MESSAGE_BYTES)
            vsnprintf(buffer, _MESSAGE_BYTES, fmt, args)
            text = " ".join(buffer.value.decode(errors="replace").split())
            where = (module or b"libtiff").decode(errors="replace")
            log.info("%s: %s", where, text)
        except Exception:  # an exception must never unwind into C
            pass

    return _HANDLER(handle)


def route_libtiff_messages() -> bool:
    """Send libtiff's warnings and errors to logging (idempotent, thread-safe); False
    when there is no libtiff to reach."""
    if _installed:  # the common case, without the lock
        return _installed[0] is not None
    with _lock:
        if _installed:
            return _installed[0] is not None
        path = _loaded_libtiff()
        if path is None:
            log.debug("libtiff not found: its messages, if any, go to stderr")
            _installed.append(None)
            return False
        try:
            libtiff = ctypes.CDLL(path)  # the already-loaded copy: dlopen returns its handle
            libc = ctypes.CDLL(None)
            vsnprintf = libc.vsnprintf
            vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p]
            vsnprintf.argtypes += [ctypes.c_void_p]
            callback = _handler(vsnprintf)
            for name in ("TIFFSetWarningHandler", "TIFFSetErrorHandler"):
                setter = getattr(libtiff, name)
                setter.argtypes, setter.restype = [_HANDLER], ctypes.c_void_p
                setter(callback)
        except (OSError, AttributeError) as err:
            log.debug("cannot route libtiff's messages into logging: %s", err)
            _installed.append(None)
            return False
        _installed.append(callback)
        return True
