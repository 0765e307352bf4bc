"""The Lambda cold start's model load, started while the handler's other imports run.

Creating the ONNX Runtime session (~0.2 s) releases the GIL; importing pydantic-settings,
botocore and Powertools and creating the S3 client (~0.3 s) hold it. Done one after the
other they add up on every cold start; here the session is created on a background
thread from the moment :mod:`dinoembed.handler.app` is imported, so the two overlap
(benchmarks/lambda_bundled.py ``--breakdown`` shows the steps).

A model bundled in the package (``infra/build_lambda.sh``) is the function's usual
case: its session is started first of all, on every vCPU (the function's default
layout), with nothing imported but ONNX Runtime, numpy, the bundle's manifest reader
and, so that creating it reuses the buffers it frees, the allocator tuning
(:func:`start_bundled_session`). Only then are the settings read (pydantic-settings
imports in ~75 ms); when they name that same model and thread count the early session
is the one used, else it is left to finish unused and the settings' own model loaded
(a ``DINOEMBED_MODEL_PATH`` or ``DINOEMBED_THREADS`` set beside a bundle costs that
cold start a second session). This module therefore imports the settings only inside
the functions that read them.

The session is not run ahead of the first image: a warm-up run took ~0.1 s of both
vCPUs while the handler was still importing, and the first inference is no slower than
the next. A model that must be downloaded is still fetched by the first invocation that
has an image to embed, so an ``s3:TestEvent`` cold start downloads nothing.
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING

from dinoembed.common.allocator import keep_freed_buffers
from dinoembed.errors import DinoEmbedError
from dinoembed.model.bundle import BUNDLE_MANIFEST, find_bundled
from dinoembed.model.engine import PendingSession, available_cpus, start_session

if TYPE_CHECKING:
    from dinoembed.model.loader import LoadedModel
    from dinoembed.settings import Settings

# The deployment package's root (LAMBDA_TASK_ROOT, /var/task): this file is
# <root>/dinoembed/handler/preload.py there. infra/build_lambda.sh puts a bundled model
# in <root>/model/.
PACKAGE_ROOT = Path(__file__).parent.parent.parent


def lambda_settings() -> Settings:
    """The settings from ``DINOEMBED_*``, looking for a bundled model in the package and,
    unless ``DINOEMBED_STREAMS`` says otherwise, running each image on every vCPU: an
    invocation is often one image (an S3 event, a Batch Operations task), whose latency
    is what it is billed for, and every scale-out pays the first one."""
    from dinoembed.settings import Settings  # imported late on purpose: see the module doc

    return Settings().or_defaults(bundle_dir=PACKAGE_ROOT / "model", streams=1)


class ModelPreload:
    """A model being loaded (its session created) on a background thread."""

    def __init__(self, settings: Settings, early: PendingSession | None = None) -> None:
        from dinoembed.model.loader import start_loading

        self.settings = settings
        # only started for a local model (needs_no_download): the store fetches nothing
        self._future: Future[LoadedModel] = start_loading(settings, local=True, early=early)

    def take(self, settings: Settings) -> LoadedModel | None:
        """The loaded model (waiting for it), or None when it was loaded for other settings.
        What loading raised is raised here, as building the pipeline would have raised it."""
        if settings != self.settings:
            return None
        return self._future.result()


def needs_no_download(settings: Settings) -> bool:
    """The model is a local file: a ``DINOEMBED_MODEL_PATH`` or one bundled in the package."""
    if settings.model_path is not None:
        return True
    return settings.bundle_dir is not None and (settings.bundle_dir / BUNDLE_MANIFEST).is_file()


def start_bundled_session() -> PendingSession | None:
    """The session of the model bundled in the package, on every vCPU, being created;
    None without a bundle, or with one the first invocation will refuse (it says why)."""
    try:
        bundled = find_bundled(PACKAGE_ROOT / "model")
    except DinoEmbedError:
        return None
    return None if bundled is None else start_session(bundled.path, available_cpus())


def start_preload() -> ModelPreload | None:
    """Start loading the model now when it needs no download; else None (the first
    invocation with an image loads it). Invalid settings are reported by that invocation."""
    # The function's own process: glibc keeps the buffers creating the session frees and
    # reallocates (~55 ms of a ViT-S/14's session) and, later, each image's.
    keep_freed_buffers()
    early = start_bundled_session()
    from pydantic import ValidationError  # with the settings, after the session started

    try:
        settings = lambda_settings()
    except ValidationError:
        return None
    return ModelPreload(settings, early) if needs_no_download(settings) else None
