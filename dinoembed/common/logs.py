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

import json
import logging
from datetime import UTC, datetime
from typing import Any, TextIO

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


# The attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))
) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, the record's extras, and ``exception`` when there is one.

    Written here rather than taken from a library: it is a dozen lines of the standard
    library, the core may not import aws-lambda-powertools (whose Logger the Lambda uses),
    and python-json-logger would be a new dependency for the same dozen lines."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, tz=UTC)
        entry: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int, stream: TextIO) -> logging.Handler | None:
    """The command line's logging: text lines on ``stream``. Returns the handler (to switch
    to JSON with :func:`use_json` once the settings are known), None when logging was
    already configured (an embedding application's, or pytest's)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])  # a no-op when already configured
    return handler if handler in logging.getLogger().handlers else None


def use_json(handler: logging.Handler | None) -> None:
    if handler is not None:
        handler.setFormatter(JsonFormatter())


def logs_json() -> bool:
    """Is the root logger writing JSON lines (so one-off messages should too)?"""
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)
