"""dinoembed: DINOv2 image embeddings where images land.

The core is pure: settings, model store, imaging, engine, pipeline, results,
sidecars, collections. The front ends (``dinoembed.handler`` for AWS Lambda,
``dinoembed.watcher`` for local folders) are wired to it by the command line
(``dinoembed.cli``). From Python::

    import dinoembed
    results = dinoembed.Embedder(model_path="dinov2_vits14.onnx").embed(["cat.jpg"])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dinoembed.api import Embedder, embed
    from dinoembed.results.schema import EmbeddingResult

__version__ = "0.2.0"
__all__ = ["Embedder", "EmbeddingResult", "__version__", "embed"]


def __getattr__(name: str) -> Any:
    """The API is imported on first use, so ``import dinoembed.cli`` stays light."""
    if name in ("Embedder", "embed"):
        from dinoembed import api

        return getattr(api, name)
    if name == "EmbeddingResult":
        from dinoembed.results.schema import EmbeddingResult

        return EmbeddingResult
    raise AttributeError(f"module 'dinoembed' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The lazy names too, so ``dir(dinoembed)`` and completion show the API."""
    return sorted({*globals(), *__all__})
