"""``python -m dinoembed.cli``: the same as the ``dinoembed`` console script."""

from dinoembed.cli import main

raise SystemExit(main())
