"""The pinned model and the cache's default location: what :mod:`dinoembed.settings`
defaults to, readable without importing pydantic.

The console script reads them before the settings exist, to start the session of
``dinoembed embed FILE``'s model early (:mod:`dinoembed.cli.early`); the settings use
the same values, so the two cannot name different files.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL_NAME = "dinov2_vits14"
DEFAULT_MODEL_URL = (
    "https://huggingface.co/sefaburak/dinov2-small-onnx/resolve/"
    "7a5e61628117b5a8bd6f5e2b2385b76da1b4582e/dinov2_vits14.onnx"
)
DEFAULT_MODEL_SHA256 = "4df36ef0716a8f17d984fc7546a3a5d670fda6911eb298592250cb9e26756063"
DEFAULT_MODEL_SIZE = 86_644_121


def default_cache_dir() -> Path:
    """``/tmp/dinoembed`` inside Lambda (HOME is read-only), else the XDG cache."""
    if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        return Path("/tmp/dinoembed")
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "dinoembed"


def cached_model_path(cache_dir: Path, sha256: str) -> Path:
    """Where the model store keeps a fetched model: named by its sha256."""
    return cache_dir / "models" / f"{sha256}.onnx"
