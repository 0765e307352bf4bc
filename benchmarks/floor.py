"""The cold-start floor: import onnxruntime, numpy and Pillow, create the session, run once.

Nothing a real tool could skip: dinoembed's cold start is compared with this.
Usage: python -m benchmarks.floor MODEL
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
from PIL import Image


def main(argv: list[str]) -> int:
    session = ort.InferenceSession(argv[0], providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    size = spec.shape[-1] if isinstance(spec.shape[-1], int) else 224
    pixels = np.asarray(Image.new("RGB", (size, size)), dtype=np.float32)
    tensor = np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])
    out = session.run(None, {spec.name: tensor})[0]
    sys.stdout.write(f"{out.shape}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
