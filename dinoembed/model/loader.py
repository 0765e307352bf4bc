"""Loading a model for the settings: resolve it, create its ONNX Runtime session.

Creating the session is the slow part of a cold start (~0.2 s for ViT-S/14 on two
cores) and releases the GIL, so an entry point can start it on a background thread
(:func:`start_loading`) while it imports and reads what else it needs. This module
imports only the model store and the engine (numpy; ONNX Runtime when loading), so
that it can start before the heavier image and result modules are imported.
"""

from __future__ import annotations

import importlib
import threading
from concurrent.futures import Future
from dataclasses import dataclass

from dinoembed.model.engine import Engine, available_cpus, create_session
from dinoembed.model.store import ModelSource, ModelStore, ResolvedModel
from dinoembed.settings import Settings


def inference_layout(settings: Settings) -> tuple[int, int]:
    """(streams, ONNX Runtime threads per stream): ``threads`` (default: usable CPUs)
    shared among ``streams`` (default: one per thread)."""
    threads = settings.threads or available_cpus()
    streams = settings.streams or threads
    return streams, max(1, threads // streams)


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A resolved model and the engine on its session: the slow part of building a pipeline
    (creating the session), which an entry point may do ahead of time, e.g. on a
    background thread while it imports the rest of what it needs."""

    resolved: ResolvedModel
    engine: Engine


def load_model(settings: Settings, store: ModelStore | None = None) -> LoadedModel:
    """Resolve the model (downloading it if needed) and create its ONNX Runtime session."""
    store = store or ModelStore(settings.cache_dir)
    return _load_resolved(settings, store.resolve(ModelSource.from_settings(settings)))


def _load_resolved(settings: Settings, resolved: ResolvedModel) -> LoadedModel:
    session = create_session(resolved.path, inference_layout(settings)[1])
    return LoadedModel(resolved, Engine(session, normalize=settings.normalize))


def start_loading(
    settings: Settings, store: ModelStore | None = None, *, local: bool = False
) -> Future[LoadedModel]:
    """The model's session being created on a background thread; what that raises is
    raised by the future's ``result()``.

    ONNX Runtime is imported here, on the caller's thread, and the model resolved here
    too (downloaded if need be), so the loading thread imports nothing and never races
    the caller's imports. ``local``: the caller knows the model is a local file (nothing
    to download, nothing to import), so it is resolved on the loading thread as well: a
    ``DINOEMBED_MODEL_PATH`` is hashed there, not on the caller's. The thread is not a
    daemon: a process that ends early waits for it at exit rather than leaving ONNX
    Runtime mid-way through creating a session (which aborts the process).
    """
    importlib.import_module("onnxruntime")
    store = store or ModelStore(settings.cache_dir)
    source = ModelSource.from_settings(settings)
    resolved = None if local else store.resolve(source)
    loading: Future[LoadedModel] = Future()

    def load() -> None:
        try:
            model = resolved or store.resolve(source)
            loading.set_result(_load_resolved(settings, model))
        except BaseException as err:  # handed to whoever takes the model
            loading.set_exception(err)

    threading.Thread(target=load, name="dinoembed-load").start()
    return loading
