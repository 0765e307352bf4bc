"""The measurements: each function runs real processes and records samples.

Every sample is one number in ``Samples`` under a metric name; one repetition
of the suite adds one sample per metric. End-to-end costs are *marginal*
per-image costs, ``(wall(N files) - wall(1 file)) / (N - 1)``, so process
start-up (measured on its own as the cold start) is not smeared over the images.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import procs
from benchmarks.corpus import subset

SEED_SUFFIX = ".seed.json"
OUR_SUFFIX = ".dinov2.json"


@dataclass
class Samples:
    values: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def add(self, name: str, value: float) -> None:
        self.values[name].append(value)


@dataclass(frozen=True)
class Corpus:
    """A benchmark folder (symlinks to the generated files) and one file of it."""

    name: str
    folder: Path
    files: tuple[Path, ...]

    @classmethod
    def make(cls, name: str, files: list[Path], runs: Path) -> Corpus:
        folder = subset(files, runs / f"{name}-{len(files)}")
        return cls(name, folder, tuple(sorted(folder.iterdir())))

    def clear_outputs(self) -> None:
        for path in self.folder.iterdir():
            if path.name.endswith(".json"):
                path.unlink()


@dataclass(frozen=True)
class Bench:
    model: Path
    out: Path
    batch_size: int
    threads: int | None = None
    quiet_wait: float = 30.0  # wait up to this long for other processes to go quiet

    def timed(
        self, cmd: list[str], s: Samples, env: dict[str, str] | None = None
    ) -> procs.ProcResult:
        """Run one measured process, after waiting for a quiet machine; log the contention."""
        if self.quiet_wait > 0:
            procs.wait_for_quiet(self.quiet_wait)
        result = procs.run(cmd, env if env is not None else self.env())
        s.add("others_share", result.others)
        return result

    def env(self) -> dict[str, str]:
        return procs.clean_env({"DINOEMBED_CACHE_DIR": str(self.out / "cache")})

    def embed_cmd(self, model: Path, paths: list[Path]) -> list[str]:
        cmd = [*procs.dinoembed_command(), "embed", "--write-sidecars", "--model", str(model)]
        cmd += ["--batch-size", str(self.batch_size)]
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        return cmd + [str(p) for p in paths]


def model_only(bench: Bench, model: Path, batch: int, images: int, s: Samples) -> float:
    """ms/image of ONNX Runtime alone on ready tensors (the floor)."""
    cmd = [procs.python(), "-m", "benchmarks.model_only", "time", str(model)]
    cmd += ["--batch", str(batch), "--images", str(images)]
    if bench.threads:
        cmd += ["--threads", str(bench.threads)]
    result = bench.timed(cmd, s)
    return float(json.loads(result.stdout)["ms_per_image"])


def physical_limit(bench: Bench, corpus: Corpus, s: Samples, key: str) -> None:
    """(model CPU + decode CPU) per image / cores for the corpus (benchmarks/limit.py)."""
    cmd = [procs.python(), "-m", "benchmarks.limit", str(bench.model), *map(str, corpus.files)]
    if bench.threads:
        cmd += ["--threads", str(bench.threads)]
    report = json.loads(bench.timed(cmd, s).stdout)
    s.add(f"{key}_ms", float(report["limit_ms"]))
    s.add(f"{key}_model_cpu_ms", float(report["model_cpu_ms"]))
    s.add(f"{key}_decode_cpu_ms", float(report["decode_cpu_ms"]))


def ours_e2e(bench: Bench, corpus: Corpus, model: Path, samples: Samples, key: str) -> None:
    """``dinoembed embed --write-sidecars`` over the folder, and over its first file alone."""
    corpus.clear_outputs()
    full = bench.timed(bench.embed_cmd(model, [corpus.folder]), samples)
    _check_sidecars(corpus, OUR_SUFFIX, full.lines)
    corpus.clear_outputs()
    one = bench.timed(bench.embed_cmd(model, [corpus.files[0]]), samples)
    corpus.clear_outputs()
    count = len(corpus.files)
    samples.add(f"{key}_ms", 1000.0 * (full.wall - one.wall) / (count - 1))
    samples.add(f"{key}_wall_ms", 1000.0 * full.wall / count)
    samples.add(f"{key}_rss_mb", full.max_rss_mb)
    if one.first_line is not None:
        samples.add(f"{key}_cold_s", one.first_line)


def seed_e2e(bench: Bench, corpus: Corpus, samples: Samples, key: str) -> None:
    """The seed pipeline's reimplementation over the same files, N and 1."""
    base = [procs.python(), "-m", "benchmarks.seed_pipeline", str(bench.model)]
    corpus.clear_outputs()
    full = bench.timed([*base, *map(str, corpus.files)], samples)
    _check_sidecars(corpus, SEED_SUFFIX, full.lines)
    corpus.clear_outputs()
    one = bench.timed([*base, str(corpus.files[0])], samples)
    corpus.clear_outputs()
    count = len(corpus.files)
    samples.add(f"{key}_ms", 1000.0 * (full.wall - one.wall) / (count - 1))
    samples.add(f"{key}_rss_mb", full.max_rss_mb)


def seed_cache(model: Path, cache_dir: Path) -> str:
    """Put ``model`` where the model store keeps a fetched model; its sha256 names it."""
    digest = hashlib.sha256()
    with model.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    sha256 = digest.hexdigest()
    cached = cache_dir / "models" / f"{sha256}.onnx"
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model, cached.with_name(cached.name + ".part"))
        cached.with_name(cached.name + ".part").replace(cached)
    return sha256


def cold_cached(bench: Bench, sha256: str, image: Path, samples: Samples) -> None:
    """Cold start as after ``dinoembed model fetch``: the model is in the verified cache."""
    env = bench.env()
    env.update(DINOEMBED_MODEL_SHA256=sha256, DINOEMBED_MODEL_URL="https://example.invalid/m.onnx")
    result = bench.timed([*procs.dinoembed_command(), "embed", str(image)], samples, env)
    assert result.first_line is not None
    samples.add("ours_cold_s", result.first_line)


def cold_floor(bench: Bench, samples: Samples) -> None:
    """The floor for a cold start: import, create the session, run once."""
    result = bench.timed([procs.python(), "-m", "benchmarks.floor", str(bench.model)], samples)
    assert result.first_line is not None
    samples.add("floor_cold_s", result.first_line)


def _check_sidecars(corpus: Corpus, suffix: str, lines: int) -> None:
    """A run that skipped images would look fast: every image must have its sidecar."""
    made = [p for p in corpus.folder.iterdir() if p.name.endswith(suffix)]
    if len(made) != len(corpus.files) or lines != len(corpus.files):
        raise RuntimeError(
            f"{corpus.name}: {len(made)} sidecars, {lines} results, {len(corpus.files)} images"
        )
    for path in made[:3]:
        status = json.loads(path.read_text())["status"]
        if status != "success":
            raise RuntimeError(f"{path.name}: status {status}")
