"""The Lambda handler's model preload: a local model is loaded on a background thread
from import time, and the first invocation uses exactly that model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dinoembed.errors import ModelFormatError, ModelIntegrityError
from dinoembed.handler import app, preload
from dinoembed.model.engine import PendingSession, available_cpus
from dinoembed.model.loader import inference_layout
from dinoembed.pipeline import build_pipeline
from dinoembed.settings import Settings
from tests.helpers import python_stdout
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


EARLY_START = """
import sys
from pathlib import Path
from dinoembed.handler import preload
preload.PACKAGE_ROOT = Path(sys.argv[1])
early = preload.start_bundled_session()
heavy = ("dinoembed.settings", "pydantic_settings")
print("settings imported:", any(name in sys.modules for name in heavy))
print("session inputs:", [i.name for i in early.future.result().get_inputs()], early.threads)
"""


def test_the_bundled_model_s_session_starts_before_the_settings_are_imported(
    tiny_model: Path, tmp_path: Path
) -> None:
    # GIVEN a package with a bundled model
    bundle(tiny_model, tmp_path / "model")
    # WHEN a fresh interpreter starts the bundled model's session, as the handler does first
    out = python_stdout(EARLY_START, str(tmp_path))
    # THEN pydantic-settings (~75 ms of imports) is not in the way: the session starts first
    settings_line, session_line = out.splitlines()
    assert settings_line == "settings imported: False"
    # AND it is the bundled model's, on every CPU (the function's default layout)
    assert session_line == f"session inputs: ['input'] {available_cpus()}"


@pytest.fixture
def early(monkeypatch: pytest.MonkeyPatch, tiny_model: Path, tmp_path: Path) -> PendingSession:
    """A package with a bundled model, whose session the handler started first of all."""
    monkeypatch.setattr(preload, "PACKAGE_ROOT", tmp_path)
    bundle(tiny_model, tmp_path / "model")
    started = preload.start_bundled_session()
    assert started is not None
    return started


def test_the_early_session_is_the_one_used_when_the_settings_agree(
    monkeypatch: pytest.MonkeyPatch, early: PendingSession, tmp_path: Path
) -> None:
    # GIVEN the bundled model's session started before the settings were read
    with cold_lambda(monkeypatch, tmp_path / "cache"):
        loaded = preload.ModelPreload(preload.lambda_settings(), early).take(app.lambda_settings())
    # THEN the loaded engine runs on that very session (no second one was created)
    assert loaded is not None
    assert loaded.engine.session is early.future.result()
    assert loaded.resolved.origin == "bundled"


def test_an_early_session_for_another_thread_count_is_left_unused(
    monkeypatch: pytest.MonkeyPatch, early: PendingSession, tmp_path: Path
) -> None:
    # GIVEN the bundled model's early session, on every CPU
    # WHEN the settings ask for another thread count (DINOEMBED_THREADS)
    threads = available_cpus() + 1
    with cold_lambda(monkeypatch, tmp_path / "cache", threads=str(threads)):
        settings = preload.lambda_settings()
        loaded = preload.ModelPreload(settings, early).take(settings)
    # THEN the model is loaded on a session of its own, which embeds as the early one does
    assert loaded is not None
    assert loaded.engine.session is not early.future.result()
    image = np.random.default_rng(2).standard_normal((1, 3, 224, 224)).astype(np.float32)
    reference = early.future.result().run(None, {"input": image})[0]
    reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    np.testing.assert_allclose(loaded.engine.embed(image), reference, rtol=1e-5, atol=1e-6)


def test_a_broken_bundle_starts_no_early_session_and_the_invocation_says_why(
    monkeypatch: pytest.MonkeyPatch, tiny_model: Path, tmp_path: Path
) -> None:
    # GIVEN a package whose bundle manifest names the wrong size
    monkeypatch.setattr(preload, "PACKAGE_ROOT", tmp_path)
    folder = bundle(tiny_model, tmp_path / "model")
    manifest = json.loads((folder / "bundle.json").read_text())
    (folder / "bundle.json").write_text(json.dumps({**manifest, "size": 1}))
    # WHEN the handler would start its sessions THEN none starts early
    assert preload.start_bundled_session() is None
    # AND the first invocation that needs the model fails with the one-line reason
    with cold_lambda(monkeypatch, tmp_path / "cache"), pytest.raises(ModelIntegrityError) as info:
        app.runtime().embedder()
    assert str(info.value).startswith("bundled model ") and "expected 1" in str(info.value)
