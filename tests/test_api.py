"""The Python API (SPEC section 5a): dinoembed.Embedder and dinoembed.embed."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dinoembed
from dinoembed.images.decode import DecodeLimits, decode
from dinoembed.images.transforms import preprocess
from dinoembed.model.loader import inference_layout
from tests.helpers import encode

ROOT = Path(__file__).resolve().parents[1]


def reference_vector(model: Path, img: Image.Image) -> np.ndarray:
    """The embedding computed without the pipeline: decode, preprocess, ONNX Runtime, L2."""
    import onnxruntime as ort

    tensor = preprocess(decode(encode(img, "PNG"), DecodeLimits(10**9, 10**9)), "center-crop", 224)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = np.asarray(session.run(None, {name: tensor[None]})[0], dtype=np.float32)[0]
    return out / np.linalg.norm(out)


def test_every_kind_of_input_in_order(
    tmp_path: Path, tiny_model: Path, photos: dict[str, Image.Image]
) -> None:
    # GIVEN a path (str and Path), encoded bytes, a PIL image and two bad inputs
    cat = tmp_path / "cat.png"
    cat.write_bytes(encode(photos["chelsea"], "PNG"))
    inputs: list[object] = [
        str(cat),
        Path(cat),
        encode(photos["coffee"], "JPEG"),
        photos["astronaut"],
        b"not an image",
        12345,
    ]
    # WHEN embedded through the API
    embedder = dinoembed.Embedder(model_path=tiny_model, cache_dir=tmp_path / "cache")
    results = embedder.embed(inputs)  # type: ignore[arg-type]
    # THEN one result each, in order, named by path or by position
    assert [r.file_path for r in results] == [
        str(cat),
        str(cat),
        "<input 2>",
        "<input 3>",
        "<input 4>",
        "<input 5>",
    ]
    assert [r.status for r in results] == ["success"] * 4 + ["error"] * 2
    assert results[4].error == "not an image: the data is not a recognised image format"
    assert results[5].error is not None and "got int" in results[5].error
    # AND the numbers are those of an independent computation
    for result, img in ((results[0], photos["chelsea"]), (results[3], photos["astronaut"])):
        assert result.embedding is not None
        got = np.array(result.embedding.embedding, dtype=np.float32)
        assert np.allclose(got, reference_vector(tiny_model, img), atol=1e-5)
    assert (
        results[0].source.sha256 is not None and results[0].source.width == photos["chelsea"].width
    )


def test_options_beat_the_environment_and_unset_ones_come_from_it(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DINOEMBED_NORMALIZE", "false")
    monkeypatch.setenv("DINOEMBED_PREPROCESS", "squash")
    embedder = dinoembed.Embedder(model_path=tiny_model, normalize=True)
    (result,) = embedder.embed([Image.new("RGB", (40, 30), "red")])
    assert result.embedding is not None and result.embedding.normalized is True
    assert result.model.preprocess == "squash"  # from DINOEMBED_PREPROCESS
    with pytest.raises(TypeError, match="unknown option"):
        dinoembed.Embedder(model_path=tiny_model, polling=True)


def test_one_shot_embed_and_threads(tmp_path: Path, tiny_model: Path) -> None:
    img = Image.new("RGB", (50, 50), "green")
    (one,) = dinoembed.embed([img], model_path=tiny_model)
    embedder = dinoembed.Embedder(model_path=tiny_model)
    got: list[list[float]] = []

    def work() -> None:
        (r,) = embedder.embed([img])
        assert r.embedding is not None
        got.append(r.embedding.embedding)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert one.embedding is not None
    assert len(got) == 4 and all(v == one.embedding.embedding for v in got)


def test_an_embedder_runs_each_image_on_every_thread_unless_told(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, photos: dict[str, Image.Image]
) -> None:
    # GIVEN the default, an explicit streams=2, and DINOEMBED_STREAMS
    default = dinoembed.Embedder(model_path=tiny_model, threads=2)
    bulk = dinoembed.Embedder(model_path=tiny_model, threads=2, streams=2)
    monkeypatch.setenv("DINOEMBED_STREAMS", "2")
    from_env = dinoembed.Embedder(model_path=tiny_model, threads=2)
    # THEN one image at a time gets both threads unless told otherwise
    assert inference_layout(default.settings) == (1, 2)
    assert inference_layout(bulk.settings) == inference_layout(from_env.settings) == (2, 1)
    # AND the layouts agree on every vector
    images = list(photos.values())
    for a, b in zip(default.embed(images), bulk.embed(images), strict=True):
        assert a.embedding is not None and b.embedding is not None
        np.testing.assert_allclose(a.embedding.embedding, b.embedding.embedding, atol=1e-6)


def test_the_readme_example_runs(tmp_path: Path, tiny_model: Path) -> None:
    # GIVEN the Python example of the README, with the photos it names
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", readme, re.S)
    assert match, "README has no api-example block"
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 64), "orange").save(photos / "cat.jpg")
    Image.new("RGB", (64, 64), "purple").save(tmp_path / "dog.png")
    # WHEN it runs (model from the environment, as a user would configure it)
    run = subprocess.run(
        [sys.executable, "-c", match.group(1)],
        cwd=tmp_path,
        env={
            "DINOEMBED_MODEL_PATH": str(tiny_model),
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
        },
        capture_output=True,
        text=True,
        check=False,
    )
    # THEN it succeeds and prints what the README says it prints
    assert run.returncode == 0, run.stderr
    assert "success" in run.stdout
