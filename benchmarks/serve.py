"""Row 8: warm ``POST /embed`` on ``dinoembed serve`` with 4 concurrent clients, against
``dinoembed embed`` on the same images (its marginal per-image time).

The server runs as a child process on 127.0.0.1 with the run's model; it is warmed with a
few requests, then 4 client threads post every image of the corpus once (raw bytes). The
throughput row is wall time / images; the latency rows are the requests' own times.

Standalone: ``python -m benchmarks.serve [--model M] [--images N] [--reps R]`` (default: the
ViT-S/14 stand-in and the ~1 MP corpus), printing the samples and the ratio as JSON.
"""

from __future__ import annotations

import argparse
import json
import queue
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from benchmarks import procs
from benchmarks.suites import Bench, Samples

CLIENTS = 4
HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _content_type(path: Path) -> str:
    kinds = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".webp": "webp"}
    return "image/" + kinds.get(path.suffix.lower(), "octet-stream")


def _post_all(url: str, files: list[Path]) -> tuple[float, list[float]]:
    """Every file posted once by CLIENTS threads; (wall seconds, per-request seconds)."""
    work: queue.Queue[Path] = queue.Queue()
    for path in files:
        work.put(path)
    bodies = {path: path.read_bytes() for path in files}
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            while True:
                try:
                    path = work.get_nowait()
                except queue.Empty:
                    return
                start = time.perf_counter()
                response = http.post(
                    "/embed", content=bodies[path], headers={"content-type": _content_type(path)}
                )
                took = time.perf_counter() - start
                with lock:
                    latencies.append(took)
                    if response.status_code != 200:
                        failures.append(f"{path.name}: {response.status_code}")

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"POST /embed failed: {failures[:3]}")
    return wall, latencies


def serve_embed(bench: Bench, files: list[Path], work: Path, s: Samples) -> None:
    """The serve rows, then ``dinoembed embed`` on the same files for the ratio."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [*procs.dinoembed_command(), "serve", "--model", str(bench.model), "--port", str(port)]
    if bench.threads:
        cmd += ["--threads", str(bench.threads)]
    work.mkdir(parents=True, exist_ok=True)
    with (work / "serve.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=bench.env())
        try:
            deadline = time.monotonic() + 180
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"dinoembed serve did not start (see {work / 'serve.log'})")
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            _post_all(url, files[: 2 * CLIENTS])  # warm: the model ran, the pools exist
            if bench.quiet_wait > 0:
                procs.wait_for_quiet(bench.quiet_wait)
            wall, latencies = _post_all(url, files)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    s.add("serve_embed_ms", 1000.0 * wall / len(files))
    s.add("serve_latency_p50_ms", 1000.0 * statistics.median(latencies))
    s.add("serve_latency_p95_ms", 1000.0 * statistics.quantiles(latencies, n=20)[-1])
    embed = [*procs.dinoembed_command(), "embed", "--model", str(bench.model)]
    embed += ["--batch-size", str(bench.batch_size)]
    if bench.threads:
        embed += ["--threads", str(bench.threads)]
    full = bench.timed([*embed, *map(str, files)], s)
    one = bench.timed([*embed, str(files[0])], s)
    if full.lines != len(files):
        raise RuntimeError(f"embed printed {full.lines} results for {len(files)} images")
    s.add("embed_serve_files_ms", 1000.0 * (full.wall - one.wall) / (len(files) - 1))


def main(argv: list[str] | None = None) -> int:
    from benchmarks.corpus import SMALL, generate
    from benchmarks.run import standin

    p = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__)
    p.add_argument("--model", type=Path, help="fp32 model (default: the ViT-S/14 stand-in)")
    p.add_argument("--images", type=int, default=48, help="~1 MP images (default 48)")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    p.add_argument("--quiet-wait", type=float, default=30.0)
    p.add_argument("--out", type=Path, default=HERE / "out")
    args = p.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model = args.model or standin(out, False, dynamic=False)
    files = sorted(generate(out / "corpus", SMALL, args.images))
    from dinoembed.settings import Settings

    batch = Settings.model_fields["batch_size"].default
    bench = Bench(model, out, batch, None, args.quiet_wait)
    s = Samples()
    for rep in range(args.reps):
        print(f"rep {rep + 1}/{args.reps}", file=sys.stderr, flush=True)
        serve_embed(bench, files, out / "serve", s)
    best = {k: min(v) for k, v in s.values.items()}
    ratio = best["serve_embed_ms"] / best["embed_serve_files_ms"]
    print(json.dumps({"samples": dict(s.values), "best": best, "ratio": ratio}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
