"""The physical limit of a corpus: (model CPU + decode CPU) per image / usable cores.

Usage: python -m benchmarks.limit MODEL FILE... [--threads N] [--images N]

Measures, in one process, the CPU seconds (all threads: ``time.process_time``) that
the two halves of the pipeline's work cost per image when each runs alone:

- ``model_cpu_ms``: ONNX Runtime on ready tensors, one image per run, with every core
  busy, in whichever of the engine's two layouts costs less CPU: one stream on all the
  threads (``--streams 1``) or one single-threaded stream per core (the default for
  many images); each is reported (``model_cpu_ms_by_streams``), after a warm-up run;
- ``decode_cpu_ms``: reading, decoding (reduced-scale JPEG as the pipeline does) and
  preprocessing each FILE once, on one thread, averaged over the files.

No pipeline can do this work faster than ``limit_ms`` = their sum / usable cores per
image on this machine (it would need fewer CPU seconds or more cores): the end-to-end
ms/img of the same files is compared with it. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def model_cpu(model: Path, threads: int, streams: int, images: int) -> tuple[float, float, int]:
    """(CPU ms, wall ms) per image of the model alone, ``streams`` runs at once on a session
    of ``threads // streams`` threads, as the engine makes it; and the model's input size."""
    from dinoembed.model.engine import Engine, create_session

    engine = Engine(create_session(model, max(1, threads // streams)), normalize=True)
    size = engine.input_size
    tensor = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    per_stream = max(1, images // streams)

    def run(count: int) -> None:
        for _ in range(count):
            engine.embed(tensor)

    with ThreadPoolExecutor(streams) as pool:
        list(pool.map(run, [1] * streams))  # warm-up: the first run of each thread
        cpu0, wall0 = time.process_time(), time.perf_counter()
        list(pool.map(run, [per_stream] * streams))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    done = per_stream * streams
    return 1000.0 * cpu / done, 1000.0 * wall / done, size


def decode_cpu(files: list[Path], size: int) -> float:
    """CPU ms per file of what the pipeline's decode workers do, on one thread."""
    from dinoembed.images.decode import DecodeLimits, DecodeTarget, decode_image
    from dinoembed.images.transforms import preprocess
    from dinoembed.settings import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

    limits = DecodeLimits(max_pixels=DEFAULT_MAX_PIXELS, max_bytes=DEFAULT_MAX_BYTES)
    target = DecodeTarget("center-crop", size)
    preprocess(decode_image(files[0], limits, target).image, "center-crop", size)  # warm-up
    cpu0 = time.process_time()
    for path in files:
        preprocess(decode_image(path, limits, target).image, "center-crop", size)
    return 1000.0 * (time.process_time() - cpu0) / len(files)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.limit")
    parser.add_argument("model", type=Path)
    parser.add_argument("files", type=Path, nargs="+")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--images", type=int, default=24, help="model runs timed")
    args = parser.parse_args(argv)
    from dinoembed.model.engine import available_cpus

    cores = args.threads or available_cpus()
    by_streams: dict[int, tuple[float, float, int]] = {
        streams: model_cpu(args.model, cores, streams, args.images)
        for streams in sorted({1, cores})
    }
    model_ms, model_wall_ms, size = min(by_streams.values())
    decode_ms = decode_cpu(args.files, size)
    report = {
        "model_cpu_ms": round(model_ms, 2),
        "model_wall_ms": round(model_wall_ms, 2),
        "model_cpu_ms_by_streams": {n: round(v[0], 2) for n, v in by_streams.items()},
        "decode_cpu_ms": round(decode_ms, 2),
        "cores": cores,
        "limit_ms": round((model_ms + decode_ms) / cores, 2),
    }
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
