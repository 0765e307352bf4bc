"""The ``dinoembed`` command line: the one composition root.

It is the only place that wires the core (``dinoembed``) to the adapters
(``dinoembed.handler`` for S3, ``dinoembed.watcher`` for folders). Adapters are
imported inside the command that needs them, so ``pip install dinoembed``
without extras still runs ``embed`` and the model commands.

- :func:`main` (the console script): starts ``embed FILE``'s model session
  (:mod:`~dinoembed.cli.early`), then runs :func:`dinoembed.cli.commands.main`;
- :mod:`~dinoembed.cli.commands`: the parser, logging, dispatch and exit codes;
- :mod:`~dinoembed.cli.wiring`: model store, S3 clients and collection sources;
- one module per command family: :mod:`~dinoembed.cli.embed`,
  :mod:`~dinoembed.cli.model`, :mod:`~dinoembed.cli.use` (similar, dupes, export),
  :mod:`~dinoembed.cli.backfill`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """The ``dinoembed`` console script. Nothing heavier than argparse is imported here
    before the model session has been started (dinoembed.cli.early says why)."""
    from dinoembed.cli import early

    early.start(sys.argv[1:] if argv is None else argv)
    from dinoembed.cli.commands import main as run

    try:
        return run(argv)
    finally:
        early.take()  # a session the command did not use is not left for a later call


__all__ = ["main"]
