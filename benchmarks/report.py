"""Summaries, targets, the printed table and ``RESULTS.md``.

Every quantity is reported as the best (minimum) and the median of the
interleaved repetitions. The machine is shared, and noise from other processes
only ever adds time, so targets are judged on the best values; the medians show
how noisy the run was.

Usage: python -m benchmarks.report benchmarks/out/results.json [RESULTS.md]
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# (metric, label, unit)
ROWS: tuple[tuple[str, str, str], ...] = (
    ("model_ms", "1. model only, fp32, 1 image per run (the floor)", "ms/img"),
    ("int8_model_ms", "1. model only, int8, 1 image per run", "ms/img"),
    ("dyn_model_b1_ms", "1. model only, fp32, dynamic-batch stand-in, batch 1", "ms/img"),
    ("dyn_model_bN_ms", "1. model only, fp32, dynamic-batch stand-in, batch {B}", "ms/img"),
    ("ours_large_ms", "2. embed --write-sidecars, 12 MP JPEG", "ms/img"),
    ("ours_large_wall_ms", "   same, wall time / images (incl. start-up)", "ms/img"),
    ("seed_large_ms", "2. seed pipeline, 12 MP JPEG", "ms/img"),
    ("int8_large_ms", "2. embed, int8 model, 12 MP JPEG", "ms/img"),
    ("dyn_large_ms", "2. embed, dynamic-batch stand-in (batch {B}), 12 MP JPEG", "ms/img"),
    ("limit_large_ms", "   physical limit, 12 MP JPEG ((model + decode CPU) / cores)", "ms/img"),
    ("limit_large_decode_cpu_ms", "   decode + preprocess CPU, 12 MP JPEG", "ms/img"),
    ("limit_large_model_cpu_ms", "   model CPU (all threads), 1 image per run", "ms/img"),
    ("ours_small_ms", "2. embed --write-sidecars, ~1 MP PNG/JPEG/WebP", "ms/img"),
    ("seed_small_ms", "2. seed pipeline, ~1 MP PNG/JPEG/WebP", "ms/img"),
    ("limit_small_ms", "   physical limit, ~1 MP PNG/JPEG/WebP", "ms/img"),
    ("limit_small_decode_cpu_ms", "   decode + preprocess CPU, ~1 MP", "ms/img"),
    ("ours_tiny_ms", "2. embed --write-sidecars, 0.27 MP PNG/JPEG/WebP", "ms/img"),
    ("seed_tiny_ms", "2. seed pipeline, 0.27 MP PNG/JPEG/WebP", "ms/img"),
    ("limit_tiny_ms", "   physical limit, 0.27 MP PNG/JPEG/WebP", "ms/img"),
    ("limit_tiny_decode_cpu_ms", "   decode + preprocess CPU, 0.27 MP", "ms/img"),
    ("ours_cold_s", "3. cold start: dinoembed embed, 1 image, model in cache", "s"),
    ("ours_large_cold_s", "3. cold start: same with --model PATH (hashes it)", "s"),
    ("floor_cold_s", "3. cold start floor: import + session + 1 run", "s"),
    ("ours_large_rss_mb", "4. peak RSS, embed over the 12 MP corpus", "MB"),
    ("seed_large_rss_mb", "4. peak RSS, seed pipeline, same corpus", "MB"),
    ("watch_burst_ms", "5. watcher burst (copy -> last sidecar)", "ms/img"),
    ("embed_burst_ms", "5. embed on the same burst files", "ms/img"),
    ("lambda_cold_s", "6. Lambda SQS batch of 10, cold (process start)", "s"),
    ("lambda_warm_s", "6. Lambda SQS batch of 10, warm", "s"),
    ("serve_embed_ms", "8. dinoembed serve, warm POST /embed, 4 clients, ~1 MP", "ms/img"),
    ("serve_latency_p50_ms", "8.  same, latency of one request, median", "ms"),
    ("serve_latency_p95_ms", "8.  same, latency of one request, 95th percentile", "ms"),
    ("embed_serve_files_ms", "8. embed on the same files", "ms/img"),
)
# Rows that need something the suite cannot always provide (a built Lambda package):
# reported when measured, otherwise a note says why not.
OPTIONAL_ROWS: tuple[tuple[str, str, str], ...] = (
    ("lambda_bundled_cold_s", "6. Lambda cold start, bundled model: start -> response", "s"),
    ("lambda_bundled_floor_s", "6. same package's floor: import + session + 1 run", "s"),
    ("lambda_mem_free_ms", "8. Lambda package, batch of 10 x 12 MP, warm, no quota", "ms/img"),
    *(
        (f"lambda_mem_{mb}_ms", f"8. same, CPU quota of {mb} MB ({mb / 1769:.2f} vCPU)", "ms/img")
        for mb in (1769, 2048, 3008, 3538)
    ),
)
# Published AWS Lambda prices, us-east-1, first tier (aws.amazon.com/lambda/pricing; the
# figures unchanged since arm64 launched in 2021, as stated on 2026-12-07 in
# docs/performance.md): dollars per GB-second of duration, and per request.
PRICE_PER_GB_S = {"x86_64": 0.0000166667, "arm64": 0.0000133334}
PRICE_PER_REQUEST = 0.20 / 1_000_000
IMAGES_PER_REQUEST = 10  # the template's SQS BatchSize
MEMORY_SIZES = (1769, 2048, 3008, 3538)
KEEP_THROUGHPUT = 0.9  # the cheapest size that keeps >= 90% of the best throughput


@dataclass(frozen=True)
class Target:
    name: str
    value: float | None
    limit: float
    higher_is_better: bool
    detail: str

    @property
    def met(self) -> bool | None:
        if self.value is None or self.value <= 0:  # too few images for a marginal cost
            return None
        return self.value >= self.limit if self.higher_is_better else self.value <= self.limit

    def verdict(self) -> str:
        return {True: "met", False: "NOT met", None: "not measured"}[self.met]

    def measured(self) -> str:
        if self.value is None:
            return "-"
        op = ">=" if self.higher_is_better else "<="
        return f"{self.value:.2f} (target {op} {self.limit:g})"


def summarize(values: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    return {
        name: {"best": min(v), "median": statistics.median(v), "samples": v}
        for name, v in values.items()
        if v
    }


def _best(summary: dict[str, dict[str, Any]], name: str) -> float | None:
    entry = summary.get(name)
    return None if entry is None else float(entry["best"])


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def dollars_per_million(memory_mb: int, ms_per_image: float, arch: str) -> float:
    """Duration (GB-seconds x price) plus requests, for a million images."""
    gb_s = memory_mb / 1024 * ms_per_image / 1000
    return 1_000_000 * (gb_s * PRICE_PER_GB_S[arch] + PRICE_PER_REQUEST / IMAGES_PER_REQUEST)


def memory_sizes(summary: dict[str, dict[str, Any]]) -> tuple[list[list[str]], int | None]:
    """The memory-size table (best ms/img of each size) and the size to use: the cheapest
    per image among those keeping >= 90% of the best size's throughput."""
    measured = {mb: _best(summary, f"lambda_mem_{mb}_ms") for mb in MEMORY_SIZES}
    sizes = {mb: ms for mb, ms in measured.items() if ms}
    free = _best(summary, "lambda_mem_free_ms")
    if not sizes or not free:
        return [], None
    fastest = min(sizes.values())
    keeps = [mb for mb, ms in sizes.items() if fastest / ms >= KEEP_THROUGHPUT]
    chosen = min(keeps, key=lambda mb: dollars_per_million(mb, sizes[mb], "x86_64"))
    rows = [
        [
            "memory (MB)",
            "vCPU share",
            "ms/img",
            "throughput vs no quota",
            "vs best size",
            "GB-s per 1000 img",
            "$ per 1M img x86_64",
            "$ per 1M img arm64",
        ]
    ]
    for mb, ms in sizes.items():
        rows.append(
            [
                f"**{mb}**" if mb == chosen else str(mb),
                f"{mb / 1769:.2f}",
                f"{ms:.1f}",
                f"{free / ms:.2f}",
                f"{fastest / ms:.2f}",
                f"{mb / 1024 * ms:.1f}",
                f"{dollars_per_million(mb, ms, 'x86_64'):.2f}",
                f"{dollars_per_million(mb, ms, 'arm64'):.2f}",
            ]
        )
    return rows, chosen


def targets(summary: dict[str, dict[str, Any]], meta: dict[str, Any]) -> list[Target]:
    def ratio(a: str, b: str) -> float | None:
        return _ratio(_best(summary, a), _best(summary, b))

    rss_note = "" if meta.get("large_count", 0) >= 64 else " (fewer than 64 images in this run)"
    return [
        Target(
            "Lambda cold start, bundled model <= 1.5 x its floor",
            ratio("lambda_bundled_cold_s", "lambda_bundled_floor_s"),
            1.5,
            False,
            "process start -> response / the same package's import + session + 1 run",
        ),
        Target(
            "12 MP JPEG end-to-end <= 1.05 x its physical limit",
            ratio("ours_large_ms", "limit_large_ms"),
            1.05,
            False,
            "embed ms/img / ((model CPU + decode CPU) per image / cores)",
        ),
        Target(
            "~1 MP PNG/JPEG/WebP end-to-end <= 1.05 x its physical limit",
            ratio("ours_small_ms", "limit_small_ms"),
            1.05,
            False,
            "embed ms/img / ((model CPU + decode CPU) per image / cores)",
        ),
        Target(
            "0.27 MP PNG/JPEG/WebP end-to-end <= 1.05 x its physical limit",
            ratio("ours_tiny_ms", "limit_tiny_ms"),
            1.05,
            False,
            "embed ms/img / ((model CPU + decode CPU) per image / cores)",
        ),
        Target(
            "~1 MP end-to-end >= 1.15 x faster than the seed pipeline",
            ratio("seed_small_ms", "ours_small_ms"),
            1.15,
            True,
            "seed ms/img / embed ms/img",
        ),
        Target(
            "12 MP end-to-end >= 2.2 x faster than the seed pipeline",
            ratio("seed_large_ms", "ours_large_ms"),
            2.2,
            True,
            "seed ms/img / embed ms/img",
        ),
        Target(
            "cold start <= 1.3 x the floor",
            ratio("ours_cold_s", "floor_cold_s"),
            1.3,
            False,
            "first result of `dinoembed embed` (model in the cache) / floor script",
        ),
        Target(
            "peak RSS of the 64-image 12 MP run <= 300 MB",
            _best(summary, "ours_large_rss_mb"),
            300,
            False,
            "max RSS of the embed process, MB" + rss_note,
        ),
        Target(
            "watcher burst within 15% of embed",
            ratio("watch_burst_ms", "embed_burst_ms"),
            1.15,
            False,
            "watcher ms/img / embed ms/img on the same files",
        ),
        Target(
            "serve POST /embed (4 clients) within 15% of embed",
            ratio("serve_embed_ms", "embed_serve_files_ms"),
            1.15,
            False,
            "serve wall ms / images / embed ms/img on the same files",
        ),
        Target(
            "int8 end-to-end >= 1.6 x fp32 throughput",
            ratio("ours_large_ms", "int8_large_ms"),
            1.6,
            True,
            "fp32 embed ms/img / int8 embed ms/img, 12 MP corpus",
        ),
    ]


def ratios(summary: dict[str, dict[str, Any]]) -> list[str]:
    """Findings without a target, for the rows that were measured."""
    _, chosen = memory_sizes(summary)
    if chosen is None:
        return []
    return [
        f"Lambda memory size: {chosen} MB is the cheapest per image of the sizes keeping "
        f">= {KEEP_THROUGHPUT:.0%} of the best size's throughput (table below)"
    ]


def table(summary: dict[str, dict[str, Any]], meta: dict[str, Any]) -> list[list[str]]:
    rows = [["benchmark", "best", "median", "unit"]]
    for key, label, unit in ROWS + OPTIONAL_ROWS:
        entry = summary.get(key)
        if entry is None:
            continue
        label = label.format(B=meta.get("batch_size", "?"))
        rows.append([label, f"{entry['best']:.3g}", f"{entry['median']:.3g}", unit])
    return rows


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def md_table(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


def render_text(data: dict[str, Any]) -> str:
    summary, meta = data["summary"], data["meta"]
    lines = [text_table(table(summary, meta)), ""]
    for t in targets(summary, meta):
        lines.append(f"{t.verdict():>12}  {t.name}: {t.measured()}")
    lines += [f"{'':>12}  {line}" for line in ratios(summary)]
    memory, _ = memory_sizes(summary)
    if memory:
        lines += ["", text_table([[c.strip("*") for c in row] for row in memory])]
    for note in data.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def render_markdown(data: dict[str, Any]) -> str:
    summary, meta = data["summary"], data["meta"]
    rows = [["target", "measured (best of runs)", "verdict", "how"]]
    rows += [[t.name, t.measured(), t.verdict(), t.detail] for t in targets(summary, meta)]
    agree = data.get("agreement", {})
    parts = [
        "# Benchmark results",
        "",
        "Generated by `python -m benchmarks.run` (see `docs/performance.md`); do not edit by hand.",
        "The model is the **stand-in** (DINOv2 ViT-S/14 architecture, random weights): the",
        "timings are those of the real architecture, the embeddings are meaningless.",
        "",
        "## Machine and conditions",
        "",
        *[f"- {k}: {v}" for k, v in meta.items()],
        "",
        "## Targets",
        "",
        md_table(rows),
        "",
        *[f"- {line}" for line in ratios(summary)],
        "",
        "## All measurements",
        "",
        md_table(table(summary, meta)),
        "",
    ]
    memory, _ = memory_sizes(summary)
    if memory:
        parts += ["## Lambda memory size (CPU quota = the size's vCPU share)", ""]
        parts += [md_table(memory), ""]
        parts += [
            "Prices: us-east-1, first tier, $0.0000166667 (x86_64) / $0.0000133334 (arm64)",
            "per GB-second and $0.20 per million requests (10 images per SQS batch); the",
            "arm64 column assumes the x86_64 ms/img measured here (not measured on Graviton).",
            "",
        ]
    if agree:
        parts += ["## int8 agreement with fp32", ""]
        parts += [f"- {name}: {json.dumps(v)}" for name, v in agree.items()]
        parts += [""]
    parts += [f"- {note}" for note in data.get("notes", [])]
    return "\n".join(parts).rstrip() + "\n"


KEEP_MARKER = "<!-- written by hand below this line: kept when the file is regenerated -->"


def write_markdown(data: dict[str, Any], path: Path) -> None:
    """(Re)write ``path``; the hand-written analysis below KEEP_MARKER survives."""
    kept = ""
    if path.exists():
        old = path.read_text()
        if KEEP_MARKER in old:
            kept = "\n" + KEEP_MARKER + old.split(KEEP_MARKER, 1)[1]
    path.write_text(render_markdown(data) + kept)


def main(argv: list[str]) -> int:
    data = json.loads(Path(argv[0]).read_text())
    if len(argv) > 1:
        write_markdown(data, Path(argv[1]))
    print(render_text(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
