"""The app's one embedder: loaded once, on first use (or when the host warms it), shared by
every request; per-request normalisation on top of raw vectors."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import numpy as np

from dinoembed.common.vectors import normalize_rows
from dinoembed.errors import ConfigError
from dinoembed.pipeline import ImageItem, Pipeline, float32_list
from dinoembed.results.schema import Embedding, EmbeddingResult

log = logging.getLogger(__name__)


class ModelHolder:
    """Builds the pipeline with ``load`` the first time it is needed; a failed load keeps
    nothing, so the next request tries again (and gets the same one-line reason meanwhile).

    ``load`` must give raw vectors (``normalize=False``): ``normalize`` is a per-request
    choice here, and a unit vector cannot be turned back into the raw one.
    """

    def __init__(self, load: Callable[[], Pipeline], expected_sha256: str) -> None:
        self._load = load
        self._expected_sha256 = expected_sha256
        self._pipeline: Pipeline | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._pipeline is not None

    @property
    def name(self) -> str | None:
        """The loaded model's name (``standin:…`` for a stand-in), None before it loads."""
        return self._pipeline.model.name if self._pipeline else None

    @property
    def sha256(self) -> str:
        return self._pipeline.model.sha256 if self._pipeline else self._expected_sha256

    def get(self) -> Pipeline:
        with self._lock:
            if self._pipeline is None:
                pipeline = self._load()
                if pipeline.normalize:
                    raise ConfigError("the app's pipeline must give raw vectors (normalize=False)")
                self._pipeline = pipeline
            return self._pipeline

    def embed(self, data: bytes, file_path: str, *, normalize: bool) -> EmbeddingResult:
        """The result document for one image's bytes (an error result for a bad image).
        Thread-safe: concurrent requests share the pipeline (ONNX Runtime allows it)."""
        pipeline = self.get()
        result = pipeline.embed_one(ImageItem(file_path=file_path, load=lambda: data)).result
        if not normalize or result.embedding is None:
            return result
        raw = np.asarray([result.embedding.embedding], dtype=np.float32)
        unit = normalize_rows(raw)[0]
        embedding = Embedding(
            embedding=float32_list(unit), embedding_dim=int(unit.shape[0]), normalized=True
        )
        return result.model_copy(update={"embedding": embedding})
