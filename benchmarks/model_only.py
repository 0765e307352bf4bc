"""Model-only timings (ONNX Runtime on ready tensors) and int8-vs-fp32 agreement.

Usage:
  python -m benchmarks.model_only time MODEL --batch B --images N
  python -m benchmarks.model_only agree REFERENCE CANDIDATE IMAGE...

Both print one JSON object. Sessions are made exactly as dinoembed's engine makes
them, so this is the floor the end-to-end pipeline is measured against.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def time_model(model: Path, batch: int, images: int, threads: int | None) -> dict[str, float]:
    from dinoembed.model.engine import Engine, create_session

    engine = Engine(create_session(model, threads), normalize=False)
    size = engine.input_size
    rng = np.random.default_rng(0)
    tensor = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    engine.embed(tensor)  # warm-up: first-run allocations
    runs = max(1, images // batch)
    start = time.perf_counter()
    for _ in range(runs):
        engine.embed(tensor)
    seconds = time.perf_counter() - start
    return {"ms_per_image": 1000.0 * seconds / (runs * batch), "batch": batch, "runs": runs}


def agreement(reference: Path, candidate: Path, files: list[Path]) -> dict[str, float]:
    """Cosine similarity of the two models' embeddings of the same preprocessed images."""
    from dinoembed.images.decode import DecodeLimits, DecodeTarget, decode
    from dinoembed.images.transforms import preprocess
    from dinoembed.model.engine import Engine, create_session

    ref = Engine(create_session(reference), normalize=True)
    cand = Engine(create_session(candidate), normalize=True)
    limits = DecodeLimits(max_pixels=200_000_000, max_bytes=1 << 30)
    target = DecodeTarget("center-crop", ref.input_size)
    batch = np.stack(
        [preprocess(decode(f, limits, target), "center-crop", ref.input_size) for f in files]
    )
    cosines = np.sum(ref.embed(batch) * cand.embed(batch), axis=1)
    return {"images": len(files), "min": float(cosines.min()), "mean": float(cosines.mean())}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.model_only")
    sub = parser.add_subparsers(dest="what", required=True)
    timing = sub.add_parser("time")
    timing.add_argument("model", type=Path)
    timing.add_argument("--batch", type=int, default=16)
    timing.add_argument("--images", type=int, default=64)
    timing.add_argument("--threads", type=int)
    agree = sub.add_parser("agree")
    agree.add_argument("reference", type=Path)
    agree.add_argument("candidate", type=Path)
    agree.add_argument("files", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.what == "time":
        report = time_model(args.model, args.batch, args.images, args.threads)
    else:
        report = agreement(args.reference, args.candidate, args.files)
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
