"""The Lambda handler's model preload: a local model is loaded on a background thread
from import time, and the first invocation uses exactly that model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dinoembed.errors import ModelFormatError
from dinoembed.handler import app, preload
from dinoembed.model.loader import inference_layout
from dinoembed.pipeline import build_pipeline
from dinoembed.settings import Settings
from tests.test_lambda_support import cold_lambda


def bundle(tiny_model: Path, folder: Path) -> Path:
    """A package's model/ folder as infra/build_lambda.sh writes it."""
    folder.mkdir()
    shutil.copy(tiny_model, folder / "tiny.onnx")
    manifest = {"file": "tiny.onnx", "sha256": "0" * 64, "size": tiny_model.stat().st_size}
    (folder / "bundle.json").write_text(json.dumps(manifest))
    return folder


def test_a_local_model_needs_no_download_and_a_url_does(tiny_model: Path, tmp_path: Path) -> None:
    # GIVEN settings naming a model path, a bundle folder, an empty folder, or only a URL
    bundled = bundle(tiny_model, tmp_path / "model")
    # WHEN / THEN only the local files are preloaded
    assert preload.needs_no_download(Settings(model_path=tiny_model))
    assert preload.needs_no_download(Settings(bundle_dir=bundled))
    assert not preload.needs_no_download(Settings(bundle_dir=tmp_path))
    assert not preload.needs_no_download(Settings())


def test_no_preload_without_a_local_model_or_with_invalid_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # GIVEN a function whose model must be downloaded
    monkeypatch.setattr(preload, "PACKAGE_ROOT", tmp_path)
    # WHEN the handler module would start its preload THEN there is none
    assert preload.start_preload() is None
    # AND invalid settings start nothing either (the first invocation reports them)
    monkeypatch.setenv("DINOEMBED_BATCH_SIZE", "0")
    assert preload.start_preload() is None


def test_the_preloaded_model_embeds_as_a_freshly_built_pipeline(
    monkeypatch: pytest.MonkeyPatch, tiny_model: Path, tmp_path: Path
) -> None:
    # GIVEN a package with a bundled model, preloaded as at import
    monkeypatch.setattr(preload, "PACKAGE_ROOT", tmp_path)
    bundle(tiny_model, tmp_path / "model")
    with cold_lambda(monkeypatch, tmp_path / "cache"):
        started = preload.start_preload()
        assert started is not None
        monkeypatch.setattr(app, "_preload", started)
        # WHEN the first invocation needs the pipeline
        pipeline = app.runtime().embedder()
        loads = app.runtime().model_loads
    # THEN it is built on the preloaded engine, once
    assert pipeline.engine is started.take(started.settings).engine  # type: ignore[union-attr]
    assert loads == 1
    assert pipeline.model.name == "standin:tiny"
    # AND it embeds exactly as a pipeline built the usual way from the same file
    reference = build_pipeline(Settings(model_path=tiny_model, cache_dir=tmp_path / "ref"))
    image = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    np.testing.assert_array_equal(pipeline.engine.embed(image), reference.engine.embed(image))


def test_a_preload_for_other_settings_is_not_used(
    monkeypatch: pytest.MonkeyPatch, tiny_model: Path, tmp_path: Path
) -> None:
    # GIVEN a preload made for other settings (e.g. the environment changed since import)
    other = preload.ModelPreload(Settings(model_path=tiny_model, normalize=False))
    with cold_lambda(monkeypatch, tmp_path / "cache", model_path=str(tiny_model)):
        monkeypatch.setattr(app, "_preload", other)
        # WHEN the first invocation needs the pipeline
        pipeline = app.runtime().embedder()
    # THEN it loads its own model, for its own settings
    assert pipeline.engine is not other.take(other.settings).engine  # type: ignore[union-attr]
    assert pipeline.normalize is True


def test_a_failed_preload_fails_the_invocation_once_then_loads_anew(
    monkeypatch: pytest.MonkeyPatch, tiny_model: Path, tmp_path: Path
) -> None:
    # GIVEN a model file that is not a model when the preload runs
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not onnx")
    with cold_lambda(monkeypatch, tmp_path / "cache", model_path=str(path)):
        monkeypatch.setattr(app, "_preload", preload.ModelPreload(app.lambda_settings()))
        # WHEN the first invocation needs the pipeline THEN it fails as a load would
        with pytest.raises(ModelFormatError):
            app.runtime().embedder()
        # AND once the file is fixed, the next invocation loads it (nothing stale kept)
        shutil.copy(tiny_model, path)
        assert app.runtime().embedder().model.name == "standin:model"


def test_the_function_runs_each_image_on_every_vcpu_unless_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An invocation is often one image (an S3 event, a Batch Operations task): one stream
    assert preload.lambda_settings().streams == 1
    assert inference_layout(preload.lambda_settings().model_copy(update={"threads": 2})) == (1, 2)
    # AND DINOEMBED_STREAMS still chooses
    monkeypatch.setenv("DINOEMBED_STREAMS", "2")
    assert preload.lambda_settings().streams == 2
