"""What the command line prints on stdout: JSON documents, UTF-8, one per line."""

from __future__ import annotations

import json
import sys
from typing import Any


def to_json(doc: Any) -> str:
    """One line of JSON with non-ASCII text as itself (``café``, not ``caf\\u00e9``)."""
    return json.dumps(doc, ensure_ascii=False)


def print_json(doc: Any) -> None:
    sys.stdout.write(to_json(doc) + "\n")


def use_utf8_stdout() -> None:
    """stdout is UTF-8 whatever the locale says (results carry file names)."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(encoding="utf-8")
