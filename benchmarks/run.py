"""Run the benchmark suite: ``python -m benchmarks.run [--quick] [--write-results]``.

Prints a table, writes ``benchmarks/out/results.json`` and, with
``--write-results``, regenerates ``benchmarks/RESULTS.md``. Every measurement
runs in its own process; the repetitions are interleaved so that load from
other processes hits all rows alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import frontends, procs, report, serve, suites
from benchmarks.corpus import LARGE, SMALL, TINY, CorpusSpec, generate

HERE = Path(__file__).resolve().parent
SMOKE_LARGE = CorpusSpec("smoke-large", 3, (1024, 768), ("JPEG",), noise=12, exif_every=3)
SMOKE_SMALL = CorpusSpec("smoke-small", 3, (320, 240), ("PNG", "JPEG", "WEBP"), noise=4)
SMOKE_TINY = CorpusSpec("smoke-tiny", 3, (160, 120), ("PNG", "JPEG", "WEBP"), noise=4)


@dataclass(frozen=True)
class Plan:
    reps: int
    large: CorpusSpec
    small: CorpusSpec
    large_count: int
    small_count: int
    burst: int
    frontends: bool
    tiny: CorpusSpec
    tiny_count: int


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    p.add_argument("--quick", action="store_true", help="1 repetition, 16 + 12 images, burst 48")
    p.add_argument("--smoke", action="store_true", help="tiny model, 3 small images (for tests)")
    p.add_argument("--reps", type=int, help="interleaved repetitions (default 3)")
    p.add_argument("--large", type=int, help="12 MP JPEGs (default 64)")
    p.add_argument("--small", type=int, help="~1 MP images (default 48)")
    p.add_argument("--tiny", type=int, help="0.27 MP images (default 96)")
    p.add_argument("--burst", type=int, help="images in the watcher burst (default 500)")
    p.add_argument("--batch-size", type=int, help="engine batch size (default: dinoembed's)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: dinoembed's)")
    p.add_argument("--model", type=Path, help="fp32 model (default: the ViT-S/14 stand-in)")
    p.add_argument(
        "--agreement-model",
        type=Path,
        help="a real model (e.g. the DINOv2 ONNX file): report its int8 copy's agreement",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="before each measurement, wait up to this many seconds for other processes "
        "to leave the CPUs idle (default 30; 0 = never wait)",
    )
    p.add_argument("--no-frontends", action="store_true", help="skip the watcher and Lambda rows")
    p.add_argument(
        "--lambda-artifact",
        type=Path,
        metavar="DIR",
        help="a Lambda package built with a bundled model (infra/build_lambda.sh) whose cold "
        "start is timed against the floor (default: built here with the fp32 model; the rows "
        "are skipped, with a note, when that build is not possible)",
    )
    p.add_argument("--out", type=Path, default=HERE / "out", help="work folder (git-ignored)")
    p.add_argument(
        "--write-results",
        nargs="?",
        const=HERE / "RESULTS.md",
        type=Path,
        metavar="PATH",
        help="regenerate RESULTS.md (default: benchmarks/RESULTS.md)",
    )
    return p.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    if args.smoke:
        plan = Plan(1, SMOKE_LARGE, SMOKE_SMALL, 3, 3, 3, True, SMOKE_TINY, 3)
    elif args.quick:
        plan = Plan(1, LARGE, SMALL, 16, 12, 48, True, TINY, 24)
    else:
        plan = Plan(3, LARGE, SMALL, 64, 48, 500, True, TINY, 96)
    return Plan(
        args.reps or plan.reps,
        plan.large,
        plan.small,
        args.large or plan.large_count,
        args.small or plan.small_count,
        args.burst or plan.burst,
        not args.no_frontends,
        plan.tiny,
        args.tiny or plan.tiny_count,
    )


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Models:
    """What the rows run: the production-shaped fp32 model, its int8 copy, and the
    dynamic-batch stand-in that keeps the batched path measured."""

    fp32: Path
    int8: Path
    dynamic: Path


def standin(out: Path, smoke: bool, *, dynamic: bool) -> Path:
    """A stand-in model built once and cached under out/ (the name says its shape)."""
    shape = "dynamic" if dynamic else "static"
    model = out / f"{'tiny' if smoke else 'standin-vits14'}-{shape}.onnx"
    if not model.exists():
        log(f"building the stand-in model {model.name}")
        flags = (["--tiny"] if smoke else []) + (["--dynamic-batch"] if dynamic else [])
        procs.run([*procs.dinoembed_command(), "model", "standin", str(model), *flags])
    return model


def prepare_models(args: argparse.Namespace, out: Path) -> Models:
    """By default the production shape (static [1,3,224,224], one image per run, as the
    real DINOv2 file); ``--model`` replaces it. The dynamic-batch row always uses a stand-in."""
    model = args.model or standin(out, args.smoke, dynamic=False)
    return Models(model, quantized(model, out), standin(out, args.smoke, dynamic=True))


def quantized(model: Path, out: Path) -> Path:
    int8 = out / f"{model.stem}-int8.onnx"
    if not int8.exists() or int8.stat().st_mtime < model.stat().st_mtime:
        log(f"quantising {model.name} -> {int8.name}")
        procs.run([*procs.dinoembed_command(), "model", "quantize", str(model), str(int8)])
    return int8


def machine(plan: Plan, batch_size: int, models: Models) -> dict[str, Any]:
    import numpy
    import onnxruntime
    import PIL

    from dinoembed.model.engine import available_cpus

    cpu = "unknown"
    with Path("/proc/cpuinfo").open() as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "usable_cpus": available_cpus(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "pillow": PIL.__version__,
        "numpy": numpy.__version__,
        "model": models.fp32.name,
        "dynamic_batch_model": models.dynamic.name,
        "batch_size": batch_size,
        "repetitions": plan.reps,
        "large_count": plan.large_count,
        "small_count": plan.small_count,
        "tiny_count": plan.tiny_count,
        "burst_count": plan.burst,
        "load_average_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def one_rep(
    rep: int,
    sha256: str,
    plan: Plan,
    bench: suites.Bench,
    models: Models,
    corpora: dict[str, suites.Corpus],
    s: suites.Samples,
    bundled: frontends.BundledPackage | None = None,
    notes: list[str] | None = None,
) -> None:
    large, small, tiny = corpora["large"], corpora["small"], corpora["tiny"]
    batch = bench.batch_size
    log(f"rep {rep + 1}/{plan.reps}: model only")
    images = max(2 * batch, 32)
    # The engine feeds a static-batch model one image per run whatever the batch size.
    s.add("model_ms", suites.model_only(bench, bench.model, batch, images, s))
    s.add("int8_model_ms", suites.model_only(bench, models.int8, batch, images, s))
    s.add("dyn_model_bN_ms", suites.model_only(bench, models.dynamic, batch, images, s))
    s.add("dyn_model_b1_ms", suites.model_only(bench, models.dynamic, 1, 8, s))
    log(f"rep {rep + 1}/{plan.reps}: physical limits ((model CPU + decode CPU) / cores)")
    for corpus in (large, small, tiny):
        suites.physical_limit(bench, corpus, s, f"limit_{corpus.name}")
    log(f"rep {rep + 1}/{plan.reps}: 12 MP corpus")
    suites.ours_e2e(bench, large, bench.model, s, "ours_large")
    suites.seed_e2e(bench, large, s, "seed_large")
    suites.ours_e2e(bench, large, models.int8, s, "int8_large")
    suites.ours_e2e(bench, large, models.dynamic, s, "dyn_large")
    log(f"rep {rep + 1}/{plan.reps}: ~1 MP corpus")
    suites.ours_e2e(bench, small, bench.model, s, "ours_small")
    suites.seed_e2e(bench, small, s, "seed_small")
    log(f"rep {rep + 1}/{plan.reps}: 0.27 MP corpus")
    suites.ours_e2e(bench, tiny, bench.model, s, "ours_tiny")
    suites.seed_e2e(bench, tiny, s, "seed_tiny")
    suites.cold_floor(bench, s)
    suites.cold_cached(bench, sha256, large.files[0], s)
    if plan.frontends:
        work = bench.out / "frontends"
        work.mkdir(parents=True, exist_ok=True)
        log(f"rep {rep + 1}/{plan.reps}: watcher burst of {plan.burst}")
        frontends.watcher_burst(bench, list(small.files), plan.burst, work, s)
        log(f"rep {rep + 1}/{plan.reps}: Lambda SQS batch")
        frontends.lambda_batch(bench, large, work, rep, s)
        log(f"rep {rep + 1}/{plan.reps}: dinoembed serve, {serve.CLIENTS} clients")
        serve.serve_embed(bench, list(small.files), work / "serve", s)
        if bundled is not None:
            log(f"rep {rep + 1}/{plan.reps}: Lambda cold start, bundled model")
            frontends.lambda_bundled_cold(bench, bundled, s)
            log(f"rep {rep + 1}/{plan.reps}: Lambda memory sizes (CPU quotas)")
            frontends.lambda_memory(bench, bundled, large, s, notes if notes is not None else [])


def lambda_package(
    args: argparse.Namespace, plan: Plan, model: Path, out: Path, notes: list[str]
) -> frontends.BundledPackage | None:
    """The Lambda package whose cold start is timed: --lambda-artifact, else one built
    here with the run's fp32 model bundled; None (and a note) when there is none."""
    if not plan.frontends:
        return None
    artifact: Path | str | None = args.lambda_artifact
    if artifact is None and args.smoke:
        artifact = "not built in a --smoke run (give --lambda-artifact DIR)"
    elif artifact is None:
        log(f"building the Lambda package with {model.name} bundled")
        artifact = frontends.build_bundled(model, out / "lambda-bundled")
    found = frontends.bundled_package(artifact)
    if isinstance(found, str):
        notes.append(f"Lambda bundled cold-start rows skipped: {found}")
        return None
    return found


def agreement(fp32: Path, int8: Path, files: list[Path]) -> dict[str, float]:
    cmd = [procs.python(), "-m", "benchmarks.model_only", "agree", str(fp32), str(int8)]
    result = procs.run([*cmd, *map(str, files)], procs.clean_env())
    return dict(json.loads(result.stdout))


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.batch_size is None:
        from dinoembed.settings import Settings

        args.batch_size = Settings.model_fields["batch_size"].default
    plan = make_plan(args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    if plan.frontends:
        for row, modules in (
            ("watcher", ("dinoembed.watcher.daemon",)),
            ("Lambda", ("dinoembed.handler.app", "moto")),
            ("dinoembed serve", ("starlette", "uvicorn", "multipart")),
        ):
            if (name := frontends.missing(*modules)) is not None:
                notes.append(f"{row} rows skipped: {name} is not importable")
                plan = Plan(**{**plan.__dict__, "frontends": False})
    if frontends.missing("torch", "timm") is not None:
        notes.append("row 7 (PyTorch eager) skipped: torch and timm are not installed")
    models = prepare_models(args, out)
    model, int8 = models.fp32, models.int8
    log("generating the corpora (cached after the first run)")
    corpora = {
        "large": suites.Corpus.make(
            "large", generate(out / "corpus", plan.large, plan.large_count), out / "runs"
        ),
        "small": suites.Corpus.make(
            "small", generate(out / "corpus", plan.small, plan.small_count), out / "runs"
        ),
        "tiny": suites.Corpus.make(
            "tiny", generate(out / "corpus", plan.tiny, plan.tiny_count), out / "runs"
        ),
    }
    bundled = lambda_package(args, plan, model, out, notes)
    procs.compile_bytecode()
    quiet = 0.0 if args.smoke else args.quiet_wait
    bench = suites.Bench(model, out, args.batch_size, args.threads, quiet)
    sha256 = suites.seed_cache(model, out / "cache")
    meta = machine(plan, args.batch_size, models)
    samples = suites.Samples()
    for rep in range(plan.reps):
        one_rep(rep, sha256, plan, bench, models, corpora, samples, bundled, notes)
    meta["load_average_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    others = samples.values.get("others_share", [0.0])
    meta["other processes' share of the CPUs during the timed runs"] = (
        f"median {statistics.median(others):.0%}, max {max(others):.0%}"
    )
    checked = list(corpora["large"].files[:16])
    agree = {f"{model.name} vs its int8 copy (cosine)": agreement(model, int8, checked)}
    if args.agreement_model:
        given = args.agreement_model
        agree[f"--agreement-model {given.name} vs its int8 copy (cosine)"] = agreement(
            given, quantized(given, out), checked
        )
    notes.append("agreement on the real weights must be checked by the user: --agreement-model")
    data = {
        "meta": meta,
        "summary": report.summarize(samples.values),
        "agreement": agree,
        "notes": notes,
    }
    (out / "results.json").write_text(json.dumps(data, indent=1))
    print(report.render_text(data))
    if args.write_results:
        report.write_markdown(data, args.write_results)
        log(f"wrote {args.write_results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
