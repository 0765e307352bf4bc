"""Lambda cold start from a built package with a bundled model, against the floor.

Usage: python -m benchmarks.lambda_bundled ARTIFACT [--reps N] [--python PY312] [--breakdown]
(``python -m benchmarks.run --lambda-artifact ARTIFACT`` runs it as two rows, once per
repetition, interleaved with the others.)

ARTIFACT is a package built with ``DINOEMBED_BUNDLE_MODEL=... infra/build_lambda.sh``.
Each repetition starts a fresh Python 3.12 (the Lambda runtime's version) with only the
package (and a runtime-like boto3 after it, its bytecode compiled for 3.12 as the runtime's
own is) on its path, as Lambda does, and times from process start to the line holding
the response (the process's exit is no part of a cold start):

- ``cold``: process start -> the handler's response to one S3 event for one JPEG
  (imports, settings, the bundled model found and loaded, one image embedded, the
  sidecar written to a local moto server);
- ``floor``: process start -> one inference: import onnxruntime, numpy and Pillow from
  the same package, create the session on the bundled model, run once
  (benchmarks/floor.py); nothing a real tool could skip.

Prints one JSON object with the medians and every sample, in seconds. With
``--breakdown``, each cold sample also reports when each step of the first invocation
ran (imports, settings, client, model load, S3 calls, decode, inference), milliseconds
from the interpreter's start (``"breakdown"`` in the JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer
from PIL import Image

from benchmarks import procs

FLOOR = Path(__file__).with_name("floor.py")
PYENV_VERSION = "3.12.1:3.11.7"  # what tests/test_lambda_artifact.py uses
COLD = """
import json, sys
artifact, runtime, event = sys.argv[1:4]
sys.path.insert(0, artifact)
sys.path.append(runtime)
from dinoembed.handler.app import lambda_handler
print(json.dumps(lambda_handler(json.load(open(event)), None)), flush=True)
"""
# The same, with each step of the first invocation stamped on the system-wide monotonic
# clock (the harness makes them relative to the process's start).
BREAKDOWN = """
import functools, json, sys, time
spans = [["interpreter up (runner starts)", time.monotonic(), 0.0]]
def stamp(label, start):
    spans.append([label, start, time.monotonic() - start])
def wrap(owner, attr, label):
    orig = getattr(owner, attr, None)
    if orig is None:
        return
    @functools.wraps(orig)
    def timed(*args, **kwargs):
        start = time.monotonic()
        try:
            return orig(*args, **kwargs)
        finally:
            stamp(label, start)
    setattr(owner, attr, timed)
artifact, runtime, event = sys.argv[1:4]
sys.path.insert(0, artifact)
sys.path.append(runtime)
start = time.monotonic()
from dinoembed.model import engine  # first: the preload starts when app is imported
stamp("import dinoembed.model.engine (numpy)", start)
wrap(engine, "create_session", "ONNX Runtime session (background thread)")
start = time.monotonic()
from dinoembed.handler import app
stamp("import dinoembed.handler.app", start)
from dinoembed.handler import s3io
from dinoembed import pipeline
for owner, attr, label in (
    (app, "runtime", "runtime() (first call: settings, logger, metrics)"),
    (s3io, "make_client", "S3 client (botocore)"),
    (app, "make_client", "S3 client (botocore)"),
    (s3io.S3Objects, "read_sidecar", "GET sidecar"),
    (s3io.S3Objects, "read", "GET image"),
    (pipeline.Pipeline, "_prepare", "decode + preprocess"),
    (pipeline.Pipeline, "_infer", "first inference"),
    (s3io.S3Objects, "put_sidecar", "PUT sidecar"),
    (app, "publish", "metrics flush"),
):
    wrap(owner, attr, label)
start = time.monotonic()
response = app.lambda_handler(json.load(open(event)), None)
stamp("lambda_handler (first invocation)", start)
print(json.dumps({"response": response, "breakdown": spans}), flush=True)
"""
FLOOR_RUNNER = """
import runpy, sys
artifact, floor, model = sys.argv[1:4]
sys.path.insert(0, artifact)
sys.argv = [floor, model]
runpy.run_path(floor, run_name="__main__")
"""
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six.py", "urllib3")


def python312() -> str | None:
    """The real python3.12 binary (pyenv's, else PATH's), or None when there is none.

    A pyenv shim is resolved to its binary: the timed runs get a bare PATH, where a
    shim could not find pyenv.
    """
    candidates: list[str] = []
    env = {**os.environ, "PYENV_VERSION": os.environ.get("PYENV_VERSION", PYENV_VERSION)}
    with contextlib.suppress(OSError):
        found = subprocess.run(
            ["pyenv", "which", "python3.12"], env=env, capture_output=True, text=True, check=False
        )
        if found.returncode == 0 and found.stdout.strip():
            candidates.append(found.stdout.strip())
    if (on_path := shutil.which("python3.12")) is not None:
        candidates.append(on_path)
    probe = "import sys; print(sys.executable if sys.version_info[:2] == (3, 12) else '')"
    for candidate in candidates:
        with contextlib.suppress(OSError):
            done = subprocess.run(
                [candidate, "-c", probe], env=env, capture_output=True, text=True, check=False
            )
            if done.returncode == 0 and done.stdout.strip():
                return done.stdout.strip()
    return None


def runtime_dir(where: Path, python: str) -> Path:
    """boto3 and its pure-Python dependencies, as Lambda's /var/runtime provides them:
    compiled for the runtime's Python (the runtime image ships their bytecode; without it
    every sample would compile botocore from source, which Lambda never does)."""
    site = Path(boto3.__file__).parent.parent
    runtime = where / "var-runtime"
    runtime.mkdir()
    for name in RUNTIME_PACKAGES:
        source = site / name
        if source.is_dir():
            shutil.copytree(source, runtime / name)
        else:
            shutil.copy2(source, runtime / name)
    compile_all = [python, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode"]
    subprocess.run([*compile_all, "unchecked-hash", str(runtime)], capture_output=True, check=True)
    return runtime


def timed(command: list[str], env: dict[str, str], expect: str) -> tuple[float, procs.ProcResult]:
    """Seconds from process start to the line holding ``expect`` (the response), and the run."""
    proc = procs.run(command, env, check=False)
    seconds = proc.line_time(expect)
    if proc.returncode != 0 or seconds is None:
        raise RuntimeError(proc.stdout[-1000:] + proc.stderr[-2000:])
    return seconds, proc


def breakdown(proc: procs.ProcResult) -> list[tuple[str, float, float]]:
    """The BREAKDOWN runner's steps: (label, ms from process start, ms taken)."""
    spans = json.loads(proc.stdout.splitlines()[-1])["breakdown"]
    return [
        (label, round(1000 * (at - proc.forked_at), 1), round(1000 * took, 1))
        for label, at, took in spans
    ]


def warm_up(s3: Any) -> None:
    """Take moto through the requests a cold start makes (a GET that finds no sidecar, a
    GET, a conditional PUT) once, untimed: moto builds its response templates and
    handlers on first use, which measured ~0.05-0.2 s of the first sample in the
    harness's process (sharing the two cores) and is no part of a Lambda cold start."""
    with contextlib.suppress(ClientError):
        s3.get_object(Bucket="bench", Key="warm-up/none.dinov2.json")
    s3.put_object(Bucket="bench", Key="warm-up/a.json", Body=b"{}", IfNoneMatch="*")
    s3.get_object(Bucket="bench", Key="warm-up/a.json")["Body"].read()
    s3.delete_object(Bucket="bench", Key="warm-up/a.json")


@contextlib.contextmanager
def local_s3() -> Iterator[tuple[Any, dict[str, str]]]:
    """A moto server on 127.0.0.1 with the bucket ``bench``: a client of it, and the
    environment a packaged function needs to reach it (endpoint, test credentials)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        s3.create_bucket(Bucket="bench")
        warm_up(s3)
        yield (
            s3,
            {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_LAMBDA_FUNCTION_NAME": "dinoembed-bench",
            },
        )
    finally:
        server.stop()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--python", help="the Lambda runtime's Python 3.12 (default: found)")
    parser.add_argument(
        "--breakdown", action="store_true", help="stamp each step of the first invocation"
    )
    args = parser.parse_args(argv)
    args.python = args.python or python312()
    if args.python is None:
        parser.error("no Python 3.12 found (pyenv install 3.12, or --python PATH)")
    manifest = json.loads((args.artifact / "model" / "bundle.json").read_text())
    model = args.artifact / "model" / manifest["file"]
    from skimage import data

    jpeg = io.BytesIO()
    Image.fromarray(data.astronaut()).save(jpeg, "JPEG", quality=90)
    samples: dict[str, list[float]] = {"cold": [], "floor": []}
    breakdowns: list[Any] = []
    with local_s3() as (s3, aws_env), tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        runtime = runtime_dir(work, args.python)
        for rep in range(args.reps):
            key = f"cold/{rep}.jpg"
            etag = s3.put_object(Bucket="bench", Key=key, Body=jpeg.getvalue())["ETag"]
            record = {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": "bench"},
                    "object": {"key": key, "size": jpeg.tell(), "eTag": etag.strip('"')},
                },
            }
            event = work / f"event-{rep}.json"
            event.write_text(json.dumps({"Records": [record]}))
            env = {
                "PATH": "/usr/bin:/bin",
                "HOME": str(work),
                **aws_env,
                "DINOEMBED_CACHE_DIR": str(work / f"cache-{rep}"),  # a fresh /tmp each time
                "POWERTOOLS_LOG_LEVEL": "WARNING",
            }
            # -B: /var/task is read-only on Lambda, so a run must not leave .pyc files in the
            # package for the next sample to find: only what the build put there counts
            python = [args.python, "-I", "-S", "-B", "-c"]
            script = BREAKDOWN if args.breakdown else COLD
            cold = [*python, script, str(args.artifact), str(runtime), str(event)]
            seconds, run = timed(cold, env, '"embedded": 1')
            samples["cold"].append(seconds)
            if args.breakdown:
                breakdowns.append(breakdown(run))
            floor = [*python, FLOOR_RUNNER, str(args.artifact), str(FLOOR), str(model)]
            samples["floor"].append(timed(floor, env, "(1, ")[0])
    report = {
        "model": manifest["file"],
        "model_bytes": manifest["size"],
        "cold_s": round(statistics.median(samples["cold"]), 3),
        "floor_s": round(statistics.median(samples["floor"]), 3),
        "samples": {k: [round(v, 3) for v in vs] for k, vs in samples.items()},
    }
    if breakdowns:
        report["breakdown"] = breakdowns
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
