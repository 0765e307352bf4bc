"""``python -m dinoembed.cli``: the same as the ``dinoembed`` console script."""

from dinoembed.cli.main import main

raise SystemExit(main())
