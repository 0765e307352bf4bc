"""The ``dinoembed`` command line: the one composition root.

It is the only place that wires the core (``dinoembed``) to the adapters
(``dinoembed.handler`` for S3, ``dinoembed.watcher`` for folders). Adapters are
imported inside the command that needs them, so ``pip install dinoembed``
without extras still runs ``embed`` and the model commands.

- :mod:`~dinoembed.cli.main`: the parser, logging, dispatch and exit codes;
- :mod:`~dinoembed.cli.wiring`: model store, S3 clients and collection sources;
- one module per command family: :mod:`~dinoembed.cli.embed`,
  :mod:`~dinoembed.cli.model`, :mod:`~dinoembed.cli.use` (similar, dupes, export),
  :mod:`~dinoembed.cli.backfill`.
"""

from dinoembed.cli.main import main

__all__ = ["main"]
