"""Library warnings (Pillow's ``Corrupt EXIF data``, ``DecompressionBombWarning``, ...)
go through logging, never raw onto stderr (SPEC §9).

``logging.captureWarnings`` hands every ``warnings.warn`` to the ``py.warnings``
logger at WARNING. They are not the user's concern at the default verbosity:
dinoembed already turns what matters into results (broken EXIF is ignored, a
bomb is refused by its own pixel limit), so the filter here lowers them to INFO,
in one line, and they show with ``-v``. Each entry point (the CLI, the Lambda
handler) calls :func:`capture_library_warnings` once, after its own logging setup.
"""

from __future__ import annotations

import logging

WARNINGS_LOGGER = "py.warnings"
WARNINGS_LEVEL = logging.INFO


class _LowerLibraryWarnings(logging.Filter):
    """Re-level ``py.warnings`` records to INFO (one line), dropping them when the
    logger does not log INFO: its level check already ran at WARNING."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = WARNINGS_LEVEL, logging.getLevelName(WARNINGS_LEVEL)
        text = record.getMessage().strip()
        record.msg, record.args = (text.splitlines()[0] if text else text), ()
        return logging.getLogger(record.name).isEnabledFor(WARNINGS_LEVEL)


def capture_library_warnings() -> None:
    """Route ``warnings.warn`` output into logging at INFO (idempotent)."""
    logging.captureWarnings(True)
    logger = logging.getLogger(WARNINGS_LOGGER)
    if not any(isinstance(f, _LowerLibraryWarnings) for f in logger.filters):
        logger.addFilter(_LowerLibraryWarnings())
