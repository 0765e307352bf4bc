"""Helpers for the tests of similar / dupes / backfill / export (no tests of its own)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from dinoembed.results.schema import Embedding, EmbeddingResult, ModelInfo, SourceInfo
from dinoembed.results.sidecars import write_sidecar

SUFFIX = ".dinov2.json"
MODEL_A = ModelInfo(name="model-a", sha256="a" * 64, preprocess="center-crop", input_size=224)
MODEL_B = ModelInfo(name="model-b", sha256="b" * 64, preprocess="center-crop", input_size=224)


def result(
    path: str, vector: Sequence[float] | None, model: ModelInfo = MODEL_A, etag: str | None = None
) -> EmbeddingResult:
    """A success result for ``vector``, or an error result when it is None."""
    source = SourceInfo(etag=etag)
    if vector is None:
        return EmbeddingResult(
            file_path=path, status="error", error="not an image", model=model, source=source
        )
    values = [float(v) for v in vector]
    # normalized=True, as the pipeline's default writes it (the currency rule compares it)
    embedding = Embedding(embedding=values, embedding_dim=len(values), normalized=True)
    return EmbeddingResult(
        file_path=path, status="success", embedding=embedding, model=model, source=source
    )


def write_folder(
    root: Path, vectors: NDArray[np.float32], model: ModelInfo = MODEL_A
) -> list[Path]:
    """Sidecars ``img-0000.jpg.dinov2.json``... under ``root`` (images themselves not needed)."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, vector in enumerate(vectors):
        image = root / f"img-{i:04d}.jpg"
        write_sidecar(result(str(image), vector.tolist(), model), root / (image.name + SUFFIX))
        paths.append(image)
    return paths


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> NDArray[np.float32]:
    x = rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def with_near_duplicates(
    rng: np.random.Generator, base: NDArray[np.float32], count: int, noise: float
) -> NDArray[np.float32]:
    """``base`` plus ``count`` noisy copies of random rows of it, all unit length."""
    picks = rng.choice(base.shape[0], count)
    copies = base[picks] + noise * rng.standard_normal((count, base.shape[1]))
    out = np.concatenate([base, copies]).astype(np.float64)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out.astype(np.float32)
