"""The benchmark harness, run end to end on a few small images with the tiny model.

This is the only part of ``benchmarks/`` that runs in CI: it proves that the
suite still runs (every row, both front ends included) and that its reports are
complete. It checks no timings.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from benchmarks import procs, report
from benchmarks.corpus import EXIF_ORIENTATION, CorpusSpec, generate
from benchmarks.run import main
from benchmarks.seed_pipeline import seed_preprocess

TIMED_ROWS = {key for key, _, _ in report.ROWS}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_smoke_run_measures_every_row_and_writes_the_reports(tmp_path: Path) -> None:
    # GIVEN the tiny model and three small images per corpus
    results_md = tmp_path / "RESULTS.md"
    # WHEN the whole suite runs once
    code = main(["--smoke", "--out", str(tmp_path), "--write-results", str(results_md)])
    # THEN every row has a number, the JSON and RESULTS.md are written
    assert code == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert TIMED_ROWS - set(data["summary"]) == set()
    for key in ("ours_large_cold_s", "floor_cold_s", "ours_large_rss_mb", "lambda_warm_s"):
        assert data["summary"][key]["best"] > 0
    assert data["meta"]["cpu"] and data["meta"]["date"]
    # AND the rows run the production shape, with one dynamic-batch stand-in row kept
    assert data["meta"]["model"] == "tiny-static.onnx"
    assert data["meta"]["dynamic_batch_model"] == "tiny-dynamic.onnx"
    for name, batch in (("tiny-static.onnx", [1]), ("tiny-dynamic.onnx", ["batch"])):
        inputs = ort.InferenceSession(str(tmp_path / name)).get_inputs()
        assert [(i.name, i.shape) for i in inputs] == [("input", [*batch, 3, 224, 224])]
    agreement = next(iter(data["agreement"].values()))
    assert agreement["images"] == 3 and 0.99 < agreement["min"] <= 1.0 + 1e-6
    text = results_md.read_text()
    for target in report.targets(data["summary"], data["meta"]):
        assert target.name in text
    assert "must be checked by the user" in text
    # AND the bundled Lambda cold start, which needs a package build, says why it is absent
    assert any(n.startswith("Lambda bundled cold-start rows skipped") for n in data["notes"])
    # AND no sidecars are left behind in the folders the runs embedded
    assert list((tmp_path / "runs").rglob("*.json")) == []


def test_regenerated_results_keep_the_hand_written_analysis(tmp_path: Path) -> None:
    # GIVEN a RESULTS.md with an analysis written below the marker
    path = tmp_path / "RESULTS.md"
    path.write_text(f"old table\n{report.KEEP_MARKER}\n## Analysis\nwhy\n")
    data = {"meta": {"cpu": "x"}, "summary": report.summarize({"model_ms": [2.0, 1.0]})}
    # WHEN it is regenerated from new results
    report.write_markdown(data, path)
    # THEN the tables are new and the analysis is still there, once
    text = path.read_text()
    assert "old table" not in text
    assert "| 1. model only, fp32, 1 image per run (the floor) | 1 | 1.5 | ms/img |" in text
    assert text.count(report.KEEP_MARKER) == 1 and text.endswith("## Analysis\nwhy\n")


def test_corpus_is_deterministic_and_phone_like(tmp_path: Path) -> None:
    # GIVEN a small corpus recipe with every second image rotated by EXIF
    spec = CorpusSpec("t", 4, (320, 240), ("JPEG", "PNG"), noise=8, exif_every=2)
    # WHEN it is generated twice into different folders
    first = generate(tmp_path / "a", spec)
    second = generate(tmp_path / "b", spec)
    # THEN the files are byte-identical, portrait every 4th, EXIF-rotated every 2nd
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    assert [p.suffix for p in first] == [".jpg", ".png", ".jpg", ".png"]
    with Image.open(first[1]) as img:
        assert img.getexif().get(EXIF_ORIENTATION) == 6
        assert img.size == (240, 320)  # stored rotated: the tag turns it back to 320x240
    with Image.open(first[3]) as img:
        assert img.getexif().get(EXIF_ORIENTATION) == 6
        assert img.size == (320, 240)  # a portrait image, stored rotated
    # AND a second call reuses the files instead of writing them again
    mtimes = [p.stat().st_mtime_ns for p in first]
    generate(tmp_path / "a", spec)
    assert [p.stat().st_mtime_ns for p in first] == mtimes


def test_seed_baseline_squashes_with_bilinear_resampling(photos: dict[str, Image.Image]) -> None:
    # GIVEN a wide photo  WHEN the seed pipeline's preprocessing runs
    img = photos["rocket"]
    tensor = seed_preprocess(img)
    # THEN it is the whole image squashed to 224x224 (bilinear), normalised, NCHW
    squashed = np.asarray(img.resize((224, 224), Image.Resampling.BILINEAR), dtype=np.float64)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = ((squashed / 255.0 - mean) / std).transpose(2, 0, 1)[None]
    assert tensor.shape == (1, 3, 224, 224) and tensor.dtype == np.float32
    np.testing.assert_allclose(tensor, expected, atol=1e-5)


def _own_rss_mb() -> float:
    """This process's resident set now, from /proc/self/status (VmRSS, KiB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmRSS in /proc/self/status")


def test_peak_rss_is_the_benchmarked_process_own_not_the_harness() -> None:
    # GIVEN a harness process holding a large array, every page touched
    ballast = np.ones(600 * 2**20 // 8)
    parent_mb = _own_rss_mb()
    assert parent_mb > 600
    # WHEN a tiny process and one that allocates 200 MB itself are measured
    tiny = procs.run([sys.executable, "-c", "pass"])
    grows = procs.run([sys.executable, "-c", "import numpy; a = numpy.ones(200 * 2**17)"])
    # THEN the tiny one reports a small peak, not the harness's RSS ...
    assert 0 < tiny.max_rss_mb < parent_mb / 2
    # ... and the peak is still the process's real one: its own 200 MB show
    assert 200 <= grows.max_rss_mb < 200 + parent_mb / 2
    assert tiny.wall > 0 and tiny.returncode == 0
    del ballast


def test_the_bundled_lambda_rows_and_their_ratio_are_reported_when_measured() -> None:
    # GIVEN a run that measured the bundled package (cold 1.2 s, 1.0 s; floor 0.5 s, 0.4 s)
    values = {"lambda_bundled_cold_s": [1.2, 1.0], "lambda_bundled_floor_s": [0.5, 0.4]}
    data = {"meta": {}, "summary": report.summarize(values), "notes": []}
    # WHEN it is rendered THEN both rows appear, and the ratio of the bests: 1.0 / 0.4
    text, markdown = report.render_text(data), report.render_markdown(data)
    for rendered in (text, markdown):
        assert "6. Lambda cold start, bundled model" in rendered
        assert "6. same package's floor" in rendered
        assert "Lambda cold start, bundled model <= 1.5 x its floor" in rendered
        assert "2.50 (target <= 1.5)" in rendered


def test_the_memory_sizes_are_priced_and_the_cheapest_fast_enough_one_is_chosen() -> None:
    # GIVEN warm ms/img per memory size: 1769 MB (1 vCPU) at 100, 2048 at 90, 3008 at 60,
    # 3538 at 55 (2 vCPU, the best), and 50 without a quota
    values = {
        "lambda_mem_free_ms": [50.0],
        "lambda_mem_1769_ms": [100.0],
        "lambda_mem_2048_ms": [90.0],
        "lambda_mem_3008_ms": [60.0],
        "lambda_mem_3538_ms": [55.0],
    }
    rows, chosen = report.memory_sizes(report.summarize(values))
    # THEN only 3008 (55/60 = 0.917) and 3538 keep >= 90% of the best throughput, and
    # 3008 costs less per image: 3008/1024 GB x 0.060 s = 0.17625 GB-s < 3538/1024 x 0.055
    assert chosen == 3008
    # AND the price is GB-seconds x $0.0000166667 plus $0.20 per million 10-image requests
    by_size = {row[0].strip("*"): row for row in rows[1:]}
    expected = 1e6 * (3008 / 1024 * 0.060 * 0.0000166667 + 0.20 / 1e6 / 10)
    assert by_size["3008"][6] == f"{expected:.2f}"
    assert by_size["1769"][3] == "0.50"  # throughput vs no quota: 50 / 100


def test_without_a_package_the_bundled_rows_are_skipped_with_the_reason(tmp_path: Path) -> None:
    from benchmarks.frontends import bundled_package

    assert bundled_package("the build failed") == "the build failed"
    why = bundled_package(tmp_path)
    assert isinstance(why, str) and "not a package with a bundled model" in why
