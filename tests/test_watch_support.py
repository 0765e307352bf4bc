"""Helpers shared by the watcher tests (no tests in here)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from dinoembed.common.atomic import is_temp_file
from dinoembed.pipeline import Pipeline
from dinoembed.results.schema import EmbeddingResult
from dinoembed.results.sidecars import read_sidecar
from dinoembed.settings import Settings
from dinoembed.watcher.daemon import WatchDaemon

SUFFIX = ".dinov2.json"
TIMEOUT = 30.0  # generous: the machine may be busy; never a speed assertion


def wait_for(predicate: Callable[[], bool], timeout: float = TIMEOUT, every: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


def sidecar_of(image: Path) -> Path:
    return image.with_name(image.name + SUFFIX)


def result_of(image: Path) -> EmbeddingResult | None:
    return read_sidecar(sidecar_of(image))


def has_sidecar(image: Path) -> Callable[[], bool]:
    return lambda: result_of(image) is not None


def save_photo(photo: Image.Image, path: Path, size: int = 96) -> Path:
    """A small copy of a real photo (JPEG or PNG by extension)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    photo.resize((size, size * photo.height // photo.width)).save(path)
    return path


def noise_png(path: Path, seed: int, size: int = 24) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def stray_files(root: Path) -> list[Path]:
    """Sidecars of sidecars and leftover temp files: there must be none."""
    return [
        p
        for p in root.rglob("*")
        if is_temp_file(p.name) or p.name.endswith(SUFFIX + SUFFIX) or p.name.endswith(".tmp")
    ]


def watch_settings(tiny_model: Path, *, polling: bool = False, **extra: object) -> Settings:
    values: dict[str, object] = {
        "model_path": tiny_model,
        "settle_seconds": 0.2,
        "polling": polling,
    }
    values.update(extra)
    return Settings(**values)  # type: ignore[arg-type]


@contextlib.contextmanager
def running(
    settings: Settings, root: Path, embedder: Pipeline, **kwargs: object
) -> Iterator[WatchDaemon]:
    """A daemon watching ``root`` on a thread; stopped (and checked for exit 0) afterwards."""
    daemon = WatchDaemon(settings, root, embedder=embedder, **kwargs)  # type: ignore[arg-type]
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["rc"] = daemon.run()
        except BaseException as err:  # reported by the test below
            outcome["error"] = err

    thread = threading.Thread(target=target, name="watch-daemon")
    thread.start()
    try:
        assert wait_for(lambda: daemon.ready.is_set() or not thread.is_alive()), "never ready"
        assert "error" not in outcome, outcome
        yield daemon
    finally:
        daemon.stop()
        thread.join(TIMEOUT)
    assert not thread.is_alive(), "daemon did not stop"
    assert outcome.get("rc") == 0, outcome


def run_once(settings: Settings, root: Path, embedder: Pipeline, *, expect: int = 0) -> WatchDaemon:
    """``watch --once``; ``expect`` 1 when some image must fail (an error sidecar)."""
    daemon = WatchDaemon(settings, root, embedder=embedder)
    assert daemon.run(once=True) == expect
    return daemon
