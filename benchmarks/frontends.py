"""Rows for the two front ends: a watcher burst and a Lambda SQS batch against moto, and
the cold start of a built Lambda package with its bundled model against the floor.

Each needs its adapter (``watcher.daemon``, ``handler.app``) and, for Lambda,
moto's server; the bundled cold start also needs a built package and Python 3.12.
When one is missing its row is skipped with the reason.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import procs
from benchmarks.suites import OUR_SUFFIX, Bench, Corpus, Samples

POLL = 0.05


def missing(*modules: str) -> str | None:
    """The first module that cannot be imported, or None."""
    for name in modules:
        if importlib.util.find_spec(name) is None:
            return name
    return None


def _count(folder: Path, suffix: str) -> int:
    return sum(1 for p in folder.iterdir() if p.name.endswith(suffix))


def _wait_for(folder: Path, suffix: str, count: int, timeout: float, proc: Any) -> float:
    deadline = time.monotonic() + timeout
    while _count(folder, suffix) < count:
        if proc.poll() is not None:
            raise RuntimeError(f"the watcher exited early with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out: {_count(folder, suffix)}/{count} sidecars")
        time.sleep(POLL)
    return time.perf_counter()


def watcher_burst(bench: Bench, sources: list[Path], count: int, work: Path, s: Samples) -> None:
    """``count`` images copied into a watched folder -> the last sidecar; then ``embed`` on them."""
    watched = work / "watched"
    shutil.rmtree(watched, ignore_errors=True)
    (watched / "burst").mkdir(parents=True)
    cmd = [*procs.dinoembed_command(), "watch", str(watched), "--model", str(bench.model)]
    cmd += ["--batch-size", str(bench.batch_size)]
    with (work / "watch.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=bench.env())
        try:
            # A first image proves the watcher is up and its model loaded.
            shutil.copyfile(sources[0], watched / f"probe{sources[0].suffix}")
            _wait_for(watched, OUR_SUFFIX, 1, 120.0, proc)
            if bench.quiet_wait > 0:
                procs.wait_for_quiet(bench.quiet_wait)
            start = time.perf_counter()
            for i in range(count):
                src = sources[i % len(sources)]
                shutil.copyfile(src, watched / "burst" / f"b{i:04d}{src.suffix}")
            done = _wait_for(watched / "burst", OUR_SUFFIX, count, 10.0 * count + 60, proc)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    s.add("watch_burst_ms", 1000.0 * (done - start) / count)
    burst = watched / "burst"
    for sidecar in burst.glob(f"*{OUR_SUFFIX}"):
        sidecar.unlink()
    files = sorted(burst.iterdir())
    full = bench.timed(bench.embed_cmd(bench.model, [burst]), s)
    one = bench.timed(bench.embed_cmd(bench.model, files[:1]), s)
    s.add("embed_burst_ms", 1000.0 * (full.wall - one.wall) / (count - 1))
    shutil.rmtree(watched)


class MotoServer:
    """moto's S3 server on a free local port, as a child process."""

    def __init__(self, log_path: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [procs.python(), "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.close()
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self._log.close()


def sqs_event(bucket: str, objects: list[tuple[str, int, str]]) -> dict[str, Any]:
    records = []
    for i, (key, size, etag) in enumerate(objects):
        s3 = {"bucket": {"name": bucket}, "object": {"key": key, "size": size, "eTag": etag}}
        body = {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": s3}]}
        records.append(
            {
                "messageId": f"bench-{i:04d}",
                "receiptHandle": f"bench-{i:04d}",
                "body": json.dumps(body),
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:dinoembed-bench",
                "awsRegion": "us-east-1",
            }
        )
    return {"Records": records}


def lambda_batch(bench: Bench, corpus: Corpus, work: Path, rep: int, s: Samples) -> None:
    """One SQS batch of (up to) 10 images, cold (fresh process) then warm, against moto S3."""
    import boto3

    env = bench.env()
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_LAMBDA_FUNCTION_NAME="dinoembed-bench",
        DINOEMBED_MODEL_PATH=str(bench.model),
        DINOEMBED_BATCH_SIZE=str(bench.batch_size),
        POWERTOOLS_LOG_LEVEL="WARNING",
    )
    server = MotoServer(work / "moto.log")
    try:
        env["AWS_ENDPOINT_URL"] = server.url
        client = boto3.client(
            "s3",
            endpoint_url=server.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket="bench")
        files = corpus.files[:10]
        events = []
        for phase in ("cold", "warm"):
            objects = []
            for path in files:
                key = f"rep{rep}/{phase}/{path.name}"
                etag = client.put_object(Bucket="bench", Key=key, Body=path.read_bytes())["ETag"]
                objects.append((key, path.stat().st_size, etag.strip('"')))
            event_path = work / f"sqs-{phase}.json"
            event_path.write_text(json.dumps(sqs_event("bench", objects)))
            events.append(event_path)
        result_path = work / "lambda-result.json"
        cmd = [procs.python(), "-m", "benchmarks.lambda_invoke", str(result_path)]
        start = bench.timed(cmd + [str(e) for e in events], s, env).started_at
        report = json.loads(result_path.read_text())
        listed = client.list_objects_v2(Bucket="bench", Prefix=f"rep{rep}/")
        sidecars = [o["Key"] for o in listed.get("Contents", []) if o["Key"].endswith(OUR_SUFFIX)]
    finally:
        server.close()
    for entry in report:
        if entry["response"].get("batchItemFailures"):
            raise RuntimeError(f"lambda reported failures: {entry['response']}")
    if len(sidecars) != 2 * len(files):
        raise RuntimeError(f"lambda wrote {len(sidecars)} sidecars for {2 * len(files)} images")
    s.add("lambda_cold_s", report[0]["done_at"] - start)
    s.add("lambda_warm_s", report[1]["seconds"])


@dataclass(frozen=True)
class BundledPackage:
    """A package built with ``DINOEMBED_BUNDLE_MODEL=... infra/build_lambda.sh DIR``."""

    artifact: Path
    python312: str


REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "infra" / "build_lambda.sh"
PYENV_VERSION = "3.12.1:3.11.7"  # Python 3.12 for the build, as tests/test_lambda_artifact.py


def build_bundled(model: Path, out: Path) -> Path | str:
    """``infra/build_lambda.sh`` with ``model`` bundled, into ``out`` (rebuilt every run, so
    the package holds the code being measured: ~15 s with pip's cache warm); or why not."""
    if shutil.which("bash") is None or not BUILD_SCRIPT.is_file():
        return f"cannot build the package here (needs bash and {BUILD_SCRIPT.name})"
    shutil.rmtree(out, ignore_errors=True)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    env = procs.clean_env(
        {
            "DINOEMBED_BUNDLE_MODEL": str(model),
            "DINOEMBED_BUNDLE_SHA256": digest,
            "PYENV_VERSION": os.environ.get("PYENV_VERSION", PYENV_VERSION),
        }
    )
    try:
        done = subprocess.run(
            ["bash", str(BUILD_SCRIPT), str(out)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"the package build failed: {err}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return f"the package build failed ({BUILD_SCRIPT.name} exit {done.returncode}): {last}"
    return out


def bundled_package(artifact: Path | str) -> BundledPackage | str:
    """The package to time, or why its rows are skipped (a reason is passed through)."""
    if isinstance(artifact, str):
        return artifact
    if not (artifact / "model" / "bundle.json").is_file():
        return f"{artifact} is not a package with a bundled model (see infra/build_lambda.sh)"
    from benchmarks.lambda_bundled import python312

    python = python312()
    if python is None:
        return "no Python 3.12 (the Lambda runtime's version) found"
    return BundledPackage(artifact, python)


def lambda_bundled_cold(bench: Bench, package: BundledPackage, s: Samples) -> None:
    """One cold start of the bundled package and one floor run (benchmarks/lambda_bundled.py)."""
    cmd = [procs.python(), "-m", "benchmarks.lambda_bundled", str(package.artifact)]
    cmd += ["--reps", "1", "--python", package.python312]
    result = bench.timed(cmd, s, procs.clean_env())
    report = json.loads(result.stdout)
    s.add("lambda_bundled_cold_s", report["cold_s"])
    s.add("lambda_bundled_floor_s", report["floor_s"])


def lambda_memory(
    bench: Bench, package: BundledPackage, corpus: Corpus, s: Samples, notes: list[str]
) -> None:
    """The package's warm ms/img under each memory size's CPU share (benchmarks/lambda_memory.py);
    a note instead when no CPU quota can be set here."""
    cmd = [procs.python(), "-m", "benchmarks.lambda_memory", str(package.artifact)]
    cmd += [*map(str, corpus.files[:10]), "--python", package.python312]
    report = json.loads(bench.timed(cmd, s, procs.clean_env()).stdout.splitlines()[-1])
    if "skipped" in report:
        note = f"Lambda memory-size rows skipped: {report['skipped']}"
        if note not in notes:
            notes.append(note)
        return
    s.add("lambda_mem_free_ms", report["free"])
    for size, ms in report["sizes"].items():
        s.add(f"lambda_mem_{size}_ms", ms)
