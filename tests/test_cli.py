"""`dinoembed` as a user runs it: a subprocess, real files, JSONL on stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dinoembed.results.schema import EmbeddingResult
from tests.helpers import encode


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DINOEMBED_")}
    full_env |= env or {}
    return subprocess.run(
        [sys.executable, "-m", "dinoembed.cli", *args],
        env=full_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def results(stdout: str) -> list[EmbeddingResult]:
    return [EmbeddingResult.model_validate_json(line) for line in stdout.splitlines()]


@pytest.fixture
def folder(tmp_path: Path, photos: dict[str, Image.Image]) -> Path:
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    (root / "a-astronaut.jpg").write_bytes(encode(photos["astronaut"], "JPEG"))
    (root / "b-coffee.png").write_bytes(encode(photos["coffee"], "PNG"))
    (root / "c-broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "d-chelsea.webp").write_bytes(encode(photos["chelsea"], "WEBP"))
    (root / "notes.txt").write_text("not an image, and not picked up from a folder")
    (root / "sub" / "e-rocket.jpg").write_bytes(encode(photos["rocket"], "JPEG"))
    return root


def test_embed_folder_prints_one_result_per_image_in_order(folder: Path, tiny_model: Path) -> None:
    proc = run_cli("embed", str(folder), "--model", str(tiny_model))
    assert proc.returncode == 1, proc.stderr  # one image is broken
    got = results(proc.stdout)
    assert [Path(r.file_path).name for r in got] == [
        "a-astronaut.jpg",
        "b-coffee.png",
        "c-broken.jpg",
        "d-chelsea.webp",
    ]
    assert [r.status for r in got] == ["success", "success", "error", "success"]
    assert all(Path(r.file_path).is_absolute() for r in got)
    assert got[0].model.name == "standin:tiny" and got[0].model.preprocess == "center-crop"
    assert got[0].source.size == (folder / "a-astronaut.jpg").stat().st_size
    assert "Traceback" not in proc.stderr


def test_recursive_and_sidecars(folder: Path, tiny_model: Path) -> None:
    proc = run_cli(
        "embed", str(folder), "--recursive", "--write-sidecars", "--model", str(tiny_model)
    )
    got = results(proc.stdout)
    assert len(got) == 5 and Path(got[-1].file_path).name == "e-rocket.jpg"
    for result in got:
        sidecar = Path(result.file_path + ".dinov2.json")
        assert EmbeddingResult.model_validate_json(sidecar.read_text()) == result
    leftovers = [p for p in folder.rglob(".*") if p.is_file()]
    assert leftovers == []
    # the second run does not pick up its own sidecars as inputs
    again = results(run_cli("embed", str(folder), "-r", "--model", str(tiny_model)).stdout)
    assert len(again) == 5


def test_all_good_exits_zero_and_order_follows_arguments(folder: Path, tiny_model: Path) -> None:
    names = ["d-chelsea.webp", "a-astronaut.jpg", "b-coffee.png"]
    proc = run_cli("embed", *(str(folder / n) for n in names), "--model", str(tiny_model))
    assert proc.returncode == 0, proc.stderr
    assert [Path(r.file_path).name for r in results(proc.stdout)] == names


def test_environment_configures_and_flags_win(folder: Path, tiny_model: Path) -> None:
    image = str(folder / "b-coffee.png")
    env = {
        "DINOEMBED_MODEL_PATH": str(tiny_model),
        "DINOEMBED_PREPROCESS": "squash",
        "DINOEMBED_NORMALIZE": "false",
    }
    from_env = results(run_cli("embed", image, env=env).stdout)[0]
    assert from_env.model.preprocess == "squash"
    assert from_env.embedding is not None and not from_env.embedding.normalized
    flagged = results(run_cli("embed", image, "--preprocess", "center-crop", env=env).stdout)[0]
    assert flagged.model.preprocess == "center-crop"
    vec = np.array(from_env.embedding.embedding)
    assert abs(np.linalg.norm(vec) - 1.0) > 1e-3  # really not normalised


def test_invalid_setting_is_a_one_line_error(folder: Path, tiny_model: Path) -> None:
    proc = run_cli(
        "embed", str(folder), "--model", str(tiny_model), env={"DINOEMBED_BATCH_SIZE": "zero"}
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("dinoembed: error: DINOEMBED_BATCH_SIZE (the environment):")
    assert proc.stdout == ""


def test_unavailable_model_is_a_clear_error(folder: Path, tmp_path: Path) -> None:
    proc = run_cli(
        "embed",
        str(folder),
        env={
            "DINOEMBED_MODEL_URL": "http://127.0.0.1:9/model.onnx",
            "DINOEMBED_CACHE_DIR": str(tmp_path / "cache"),
        },
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("dinoembed: error: cannot download model from http://127.0.0.1:9/")
    assert last.endswith("set DINOEMBED_MODEL_PATH to a local copy")


def _contract(path: Path) -> list[tuple[str, list[Any], str]]:
    """(name, shape, type) of every input then every output, as onnxruntime sees the file."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    args = [*session.get_inputs(), *session.get_outputs()]
    return [(a.name, list(a.shape), a.type) for a in args]


def test_model_standin_mirrors_the_production_contract(tmp_path: Path) -> None:
    # GIVEN the default stand-in
    out = tmp_path / "vits14.onnx"
    made = run_cli("model", "standin", str(out))
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["standin"] is True
    # THEN it has the real DINOv2 file's contract (SPEC §2), nothing more
    assert _contract(out) == [
        ("input", [1, 3, 224, 224], "tensor(float)"),
        ("output", [1, 384], "tensor(float)"),
    ]
    info: dict[str, Any] = json.loads(run_cli("model", "info", "--model", str(out)).stdout)
    assert info["dim"] == 384 and info["input_size"] == 224
    assert info["batch"] == "static (1 image per run)" and info["standin"] is True
    # the exact ViT-S/14 size: ~22M float32 parameters
    import onnx

    params = sum(int(np.prod(t.dims)) for t in onnx.load(str(out)).graph.initializer)
    assert 21_500_000 < params < 22_500_000


@pytest.mark.parametrize("tiny", [False, True])
def test_model_standin_dynamic_batch_has_a_symbolic_batch_dim(tmp_path: Path, tiny: bool) -> None:
    out = tmp_path / "dynamic.onnx"
    made = run_cli("model", "standin", str(out), "--dynamic-batch", *(["--tiny"] * tiny))
    assert made.returncode == 0, made.stderr
    (in_name, in_shape, _), (out_name, out_shape, _) = _contract(out)
    assert (in_name, out_name) == ("input", "output")
    assert isinstance(in_shape[0], str) and in_shape[1:] == [3, 224, 224]
    assert out_shape == [in_shape[0], 32 if tiny else 384]
    info = json.loads(run_cli("model", "info", "--model", str(out)).stdout)
    assert info["batch"] == "dynamic" and info["standin"] is True


def test_tiny_standin_is_a_few_kilobytes_with_the_same_contract(tmp_path: Path) -> None:
    out = tmp_path / "tiny.onnx"
    assert run_cli("model", "standin", str(out), "--tiny").returncode == 0
    assert out.stat().st_size < 64_000
    assert _contract(out) == [
        ("input", [1, 3, 224, 224], "tensor(float)"),
        ("output", [1, 32], "tensor(float)"),
    ]
    info = json.loads(run_cli("model", "info", "--model", str(out)).stdout)
    assert info["dim"] == 32 and info["standin"] is True


def test_help_mentions_every_command() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    for command in ("embed", "watch", "model"):
        assert command in proc.stdout


def test_embed_names_refused_formats_in_its_error_results(
    tmp_path: Path, photos: dict[str, Image.Image], tiny_model: Path
) -> None:
    from tests.test_imaging import REFUSED_FORMATS, write_refused_format

    # GIVEN a good JPEG and real images in every refused format, named on the command line
    good = tmp_path / "good.jpg"
    good.write_bytes(encode(photos["coffee"], "JPEG"))
    refused = [write_refused_format(tmp_path, n, photos["coffee"]) for n in sorted(REFUSED_FORMATS)]
    # WHEN embedded
    proc = run_cli("embed", str(good), *map(str, refused), "--model", str(tiny_model))
    # THEN each refused image gets an error result naming its format; the good one succeeds
    assert proc.returncode == 1, proc.stderr
    got = results(proc.stdout)
    assert [r.status for r in got] == ["success"] + ["error"] * len(refused)
    assert [(Path(r.file_path).name, r.error) for r in got[1:]] == [
        (p.name, f"unsupported format: {REFUSED_FORMATS[p.name][2]}") for p in refused
    ]
