"""dinoembed: DINOv2 image embeddings where images land.

The core is pure: settings, model store, imaging, engine, results. Front ends
(``handler/`` for AWS Lambda, ``watcher/`` for local folders) build these
objects and pass them in.
"""

__version__ = "0.1.0"
