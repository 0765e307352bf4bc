"""The Lambda cold start's model load, started while the handler's other imports run.

Creating the ONNX Runtime session (~0.2 s) releases the GIL; importing boto3, botocore
and Powertools and creating the S3 client (~0.3 s) hold it. Done one after the other
they add up on every cold start; here the session is created on a background thread
(:func:`dinoembed.model.loader.start_loading`) from the moment
:mod:`dinoembed.handler.app` is imported, so the two overlap
(benchmarks/lambda_bundled.py ``--breakdown`` shows the steps). The session is not
run ahead of the first image: a warm-up run took ~0.1 s of both vCPUs while the
handler was still importing, and saved ~10 ms of the first inference.

Only a model that needs no download is loaded this way: one bundled in the package
(``infra/build_lambda.sh``) or a local ``DINOEMBED_MODEL_PATH``. A model that must be
downloaded is still fetched by the first invocation that has an image to embed, so
an ``s3:TestEvent`` cold start downloads nothing. ONNX Runtime is imported on the
importing thread, before the background thread starts: the thread itself imports
nothing, so the two threads never race on an import.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from pathlib import Path

import onnxruntime  # noqa: F401  # imported here, on the importing thread (see above)
from pydantic import ValidationError

from dinoembed.model.loader import LoadedModel, start_loading
from dinoembed.model.store import BUNDLE_MANIFEST
from dinoembed.settings import Settings

log = logging.getLogger(__name__)

# The deployment package's root (LAMBDA_TASK_ROOT, /var/task): this file is
# <root>/dinoembed/handler/preload.py there. infra/build_lambda.sh puts a bundled model
# in <root>/model/.
PACKAGE_ROOT = Path(__file__).parent.parent.parent


def lambda_settings() -> Settings:
    """The settings from ``DINOEMBED_*``, looking for a bundled model in the package and,
    unless ``DINOEMBED_STREAMS`` says otherwise, running each image on every vCPU: an
    invocation is often one image (an S3 event, a Batch Operations task), whose latency
    is what it is billed for, and every scale-out pays the first one."""
    return Settings().or_defaults(bundle_dir=PACKAGE_ROOT / "model", streams=1)


class ModelPreload:
    """A model being loaded (its session created) on a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # only started for a local model (needs_no_download): the store fetches nothing
        self._future: Future[LoadedModel] = start_loading(settings, local=True)

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


def start_preload() -> ModelPreload | None:
    """Start loading the model now when it needs no download; else None (the first
    invocation with an image loads it). Invalid settings are reported by that invocation."""
    try:
        settings = lambda_settings()
    except ValidationError:
        return None
    return ModelPreload(settings) if needs_no_download(settings) else None
