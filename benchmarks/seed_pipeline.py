"""The baseline: a reimplementation of the seed plugin's pipeline, for comparison only.

Per image: full-size decode, squash to 224x224 with bilinear resampling, one
model run at batch 1, ``json.dumps`` of the result into a sidecar and onto
stdout. This is what dinoembed replaces; do not use it for real embeddings (it
distorts the aspect ratio, unlike the DINOv2 reference transform).

Usage: python -m benchmarks.seed_pipeline MODEL IMAGE...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
SUFFIX = ".seed.json"


def seed_preprocess(img: Image.Image) -> np.ndarray:
    """Squash to 224x224 bilinear, /255, ImageNet mean/std, NCHW [1, 3, 224, 224]."""
    arr = np.asarray(img.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
    chw = ((arr.astype(np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)
    return np.ascontiguousarray(chw[None], dtype=np.float32)


def embed_file(session: Any, path: Path) -> dict[str, Any]:
    with Image.open(path) as img:
        img.load()  # full-size decode
        tensor = seed_preprocess(img)
    name = session.get_inputs()[0].name
    out = np.asarray(session.run(None, {name: tensor})[0], dtype=np.float32)
    vector = out[0] if out.ndim == 2 else out[0, 0]
    vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
    return {
        "file_path": str(path.absolute()),
        "status": "success",
        "embedding": {
            "embedding": vector.tolist(),
            "embedding_dim": int(vector.shape[0]),
            "normalized": True,
        },
    }


def main(argv: list[str]) -> int:
    model, files = Path(argv[0]), [Path(a) for a in argv[1:]]
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for path in files:
        text = json.dumps(embed_file(session, path))
        path.with_name(path.name + SUFFIX).write_text(text)
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
