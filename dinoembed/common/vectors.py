"""Embedding vectors as float32 matrices, and scaling their rows to unit length."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Matrix = NDArray[np.float32]


def normalize_rows(matrix: NDArray[np.floating]) -> Matrix:
    """Rows scaled to unit length (all-zero rows stay zero), as a new float32 array."""
    out = np.array(matrix, dtype=np.float32, copy=True)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out
