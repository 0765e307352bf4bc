"""Collections to files a vector database can load: ``.npy`` (+ JSON index) or Parquet.

Rows are the collection's L2-normalised float32 vectors, so an inner product is
the cosine (pgvector ``<#>`` / ``<=>``, FAISS ``IndexFlatIP``). Parquet needs
pyarrow (``pip install 'dinoembed[export]'``); nothing else in dinoembed does.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dinoembed.collections.collection import Collection
from dinoembed.common.atomic import write_atomic
from dinoembed.errors import ConfigError

ExportFormat = Literal["npy", "parquet"]
METADATA_KEY = b"dinoembed"


def metadata(collection: Collection) -> dict[str, Any]:
    return {
        "location": collection.location,
        "model": collection.model.model_dump() if collection.model else None,
        "count": len(collection),
        "dim": int(collection.matrix.shape[1]),
        "normalized": True,
    }


def index_path(out: Path) -> Path:
    """``vectors.npy`` -> ``vectors.json`` (the paths and ETags of the rows, in order)."""
    return out.with_suffix(".json")


def is_export_index(path: Path) -> bool:
    """Is the file at ``path`` an index an earlier ``export --format npy`` wrote (which a
    new export of the same ``.npy`` may replace)?"""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and {"paths", "etags", "dim", "count"} <= doc.keys()


def write_npy(collection: Collection, out: Path) -> list[Path]:
    """The matrix as ``out`` and its row index as JSON beside it; returns both paths."""
    buf = io.BytesIO()
    np.save(buf, collection.matrix, allow_pickle=False)
    rows = collection.rows
    index = {
        **metadata(collection),
        "paths": [e.path for e in rows],
        "etags": [e.etag for e in rows],
    }
    write_atomic(out, buf.getvalue())
    write_atomic(index_path(out), json.dumps(index, ensure_ascii=False).encode() + b"\n")
    return [out, index_path(out)]


def write_parquet(collection: Collection, out: Path) -> list[Path]:
    """One row per image: ``path``, ``etag`` and ``embedding`` (fixed-size list of float32)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ConfigError(
            "parquet export needs pyarrow: pip install 'dinoembed[export]' (or use --format npy)"
        ) from err
    matrix = np.ascontiguousarray(collection.matrix, dtype=np.float32)
    dim = int(matrix.shape[1])
    rows = collection.rows
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel(), pa.float32()), dim)
    table = pa.table(
        {
            "path": pa.array([e.path for e in rows], pa.string()),
            "etag": pa.array([e.etag for e in rows], pa.string()),
            "embedding": embedding,
        }
    )
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata(collection))})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_atomic(out, sink.getvalue().to_pybytes())
    return [out]


def export(collection: Collection, fmt: ExportFormat, out: Path) -> list[Path]:
    if fmt == "parquet":
        return write_parquet(collection, out)
    return write_npy(collection, out)
