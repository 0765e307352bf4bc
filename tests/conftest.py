"""Shared fixtures: stand-in models, real sample photos, hygiene checks."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinoembed.model.standin import build_tiny
from dinoembed.pipeline import Pipeline, build_pipeline
from dinoembed.settings import Settings

pytest_plugins = [
    "tests.reliability_plugin",
    "tests.s3_backends",
    "tests.lambda_plugin",
    "tests.vectors_server",
]


@pytest.fixture(autouse=True)
def _isolated_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """No test reads the developer's DINOEMBED_* settings or writes into ~/.cache."""
    import os

    for name in list(os.environ):
        if name.startswith("DINOEMBED_") or name == "AWS_LAMBDA_FUNCTION_NAME":
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves threads running (as watchdog's own test suite does)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked:
            return
        time.sleep(0.05)
    pytest.fail(f"test leaked threads: {[t.name for t in leaked]}")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The production shape (static [1,3,224,224] ``input``): one image per run."""
    return build_tiny(tmp_path_factory.mktemp("models") / "tiny.onnx")


@pytest.fixture(scope="session")
def tiny_dynamic_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dynamic-batch variant: the engine runs whole batches through it."""
    return build_tiny(tmp_path_factory.mktemp("models") / "tiny-dynamic.onnx", batch=None)


@pytest.fixture(scope="session")
def tiny_settings(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(model_path=tiny_model, cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def embedder(tiny_settings: Settings) -> Pipeline:
    return build_pipeline(tiny_settings)


def sample_photos() -> dict[str, Image.Image]:
    """Real photographs shipped by scikit-image and scikit-learn (offline)."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = {
        "astronaut": data.astronaut(),
        "coffee": data.coffee(),
        "chelsea": data.chelsea(),
        "rocket": data.rocket(),
    }
    for name, arr in zip(("china", "flower"), load_sample_images().images, strict=True):
        photos[name] = arr
    return {name: Image.fromarray(np.asarray(arr)).convert("RGB") for name, arr in photos.items()}


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    return sample_photos()
