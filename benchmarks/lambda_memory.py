"""The built Lambda package under the CPU share Lambda gives each memory size.

Usage: python -m benchmarks.lambda_memory ARTIFACT IMAGE... [--reps N] [--python PY312]

Lambda gives a function CPU in proportion to its memory: one vCPU-second per second at
1769 MB (AWS Lambda Developer Guide, "Configure Lambda function memory"), two vCPUs
visible up to 3008 MB. Each size below runs the package (as benchmarks/lambda_bundled.py
does: Python 3.12, the package and a runtime-like boto3, a local moto S3) in a cgroup
whose CPU quota is that share of one core per 1769 MB (cgroup v2 ``cpu.max``, else v1
``cpu.cfs_quota_us``; root only), and one run has no quota at all (``free``). Each run
invokes the handler once (the cold start, not timed), then times one SQS batch of the
IMAGEs, warm: ``ms_per_image`` per size. Where no quota can be set, the sizes are
skipped and ``skipped`` says why.

Prints one JSON object: ``{"sizes": {"1769": ms, ...}, "free": ms, "cpus": n}`` (best of
the repetitions), or ``{"skipped": reason}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks import procs

MB_PER_VCPU = 1769  # one vCPU-second of credits per second at 1769 MB
SIZES = (1769, 2048, 3008, 3538)
PERIOD_US = 100_000
RUNNER = """
import json, sys, time
artifact, runtime, warm, batch = sys.argv[1:5]
sys.path.insert(0, artifact)
sys.path.append(runtime)
from dinoembed.handler.app import lambda_handler
lambda_handler(json.load(open(warm)), None)
start = time.monotonic()
response = lambda_handler(json.load(open(batch)), None)
seconds = time.monotonic() - start
print(json.dumps({"seconds": seconds, "response": response}), flush=True)
"""
# The command runs inside the cgroup: the shell moves itself there, then becomes it.
ENTER = 'echo $$ > "$0" && exec "$@"'


def vcpus(memory_mb: int) -> float:
    return memory_mb / MB_PER_VCPU


class CpuQuota:
    """A cgroup (v2, else v1) holding processes to ``cpus`` cores' worth of CPU time."""

    def __init__(self, path: Path, procs_file: Path, limit: dict[Path, str]) -> None:
        self.path, self.procs_file, self.limit = path, procs_file, limit

    @classmethod
    def make(cls, name: str, cpus: float) -> CpuQuota | str:
        """The cgroup, created with its quota set; or why it cannot be."""
        quota = int(cpus * PERIOD_US)
        v2 = Path("/sys/fs/cgroup")
        v1 = Path("/sys/fs/cgroup/cpu")
        try:
            if "cpu" in _read(v2 / "cgroup.controllers").split():
                if "cpu" not in _read(v2 / "cgroup.subtree_control").split():
                    (v2 / "cgroup.subtree_control").write_text("+cpu")
                group = v2 / name
                limit = {group / "cpu.max": f"{quota} {PERIOD_US}"}
                made = cls(group, group / "cgroup.procs", limit)
            elif (v1 / "cpu.cfs_quota_us").exists():
                group = v1 / name
                limit = {
                    group / "cpu.cfs_period_us": str(PERIOD_US),
                    group / "cpu.cfs_quota_us": str(quota),
                }
                made = cls(group, group / "cgroup.procs", limit)
            else:
                return "no cgroup CPU controller (neither v2 cpu.max nor v1 cpu.cfs_quota_us)"
            made.path.mkdir(exist_ok=True)
            for file, value in made.limit.items():
                file.write_text(value)
        except OSError as err:
            why = "not root" if os.geteuid() != 0 else err.strerror or type(err).__name__
            return f"cannot set a CPU quota with a cgroup here ({why})"
        return made

    def command(self, cmd: list[str]) -> list[str]:
        return ["sh", "-c", ENTER, str(self.procs_file), *cmd]

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.rmdir()


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@contextlib.contextmanager
def quotas(sizes: tuple[int, ...], usable: int) -> Iterator[dict[int, CpuQuota] | str]:
    """One cgroup per memory size (its share, capped at the usable cores); or why none."""
    made: dict[int, CpuQuota] = {}
    try:
        for size in sizes:
            quota = CpuQuota.make(f"dinoembed-bench-{os.getpid()}-{size}", min(vcpus(size), usable))
            if isinstance(quota, str):
                yield quota
                return
            made[size] = quota
        yield made
    finally:
        for quota in made.values():
            quota.remove()


def main(argv: list[str]) -> int:
    from benchmarks.frontends import sqs_event
    from benchmarks.lambda_bundled import local_s3, python312, runtime_dir
    from dinoembed.model.engine import available_cpus

    parser = argparse.ArgumentParser(prog="python -m benchmarks.lambda_memory")
    parser.add_argument("artifact", type=Path)
    parser.add_argument("images", type=Path, nargs="+")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--python", help="the Lambda runtime's Python 3.12 (default: found)")
    args = parser.parse_args(argv)
    python = args.python or python312()
    if python is None:
        parser.error("no Python 3.12 found (pyenv install 3.12, or --python PATH)")
    usable = available_cpus()
    best: dict[str, float] = {}
    report: dict[str, Any]
    with local_s3() as (s3, aws_env):
        counter = iter(range(1_000_000))

        def event(work: Path, paths: list[Path]) -> Path:
            objects = []
            for path in paths:
                key = f"mem/{next(counter)}/{path.name}"
                etag = s3.put_object(Bucket="bench", Key=key, Body=path.read_bytes())["ETag"]
                objects.append((key, path.stat().st_size, etag.strip('"')))
            out = work / f"event-{next(counter)}.json"
            out.write_text(json.dumps(sqs_event("bench", objects)))
            return out

        with tempfile.TemporaryDirectory() as tmp, quotas(SIZES, usable) as groups:
            if isinstance(groups, str):
                report = {"skipped": groups}
            else:
                work = Path(tmp)
                runtime = runtime_dir(work, python)
                env = {
                    "PATH": "/usr/bin:/bin",
                    "HOME": str(work),
                    **aws_env,
                    "POWERTOOLS_LOG_LEVEL": "WARNING",
                }
                runs: list[tuple[str, CpuQuota | None]] = [("free", None)]
                runs += [(str(size), groups[size]) for size in SIZES]
                for rep in range(args.reps):
                    for name, quota in runs:
                        warm = event(work, args.images[:1])
                        batch = event(work, args.images)
                        cmd = [python, "-I", "-S", "-B", "-c", RUNNER, str(args.artifact)]
                        cmd += [str(runtime), str(warm), str(batch)]
                        env["DINOEMBED_CACHE_DIR"] = str(work / f"cache-{name}-{rep}")
                        done = procs.run(quota.command(cmd) if quota else cmd, env)
                        result = json.loads(done.stdout.splitlines()[-1])
                        if result["response"].get("batchItemFailures"):
                            raise RuntimeError(f"failures at {name}: {result['response']}")
                        ms = 1000.0 * result["seconds"] / len(args.images)
                        best[name] = min(best.get(name, ms), ms)
                report = {
                    "cpus": usable,
                    "images": len(args.images),
                    "free": round(best["free"], 1),
                    "sizes": {str(size): round(best[str(size)], 1) for size in SIZES},
                }
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
