"""Loading a model for the settings: resolve it, create its ONNX Runtime session.

Creating the session is the slow part of a cold start (~0.2 s for ViT-S/14 on two
cores) and releases the GIL, so an entry point can start it on a background thread
(:func:`start_loading`) while it imports and reads what else it needs. This module
imports only the model store and the engine (numpy; ONNX Runtime when loading), so
that it can start before the heavier image and result modules are imported.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass

from dinoembed.model.engine import (
    Engine,
    PendingSession,
    create_session,
    in_background,
    inference_threads,
)
from dinoembed.model.store import ModelSource, ModelStore, ResolvedModel
from dinoembed.settings import Settings


def inference_layout(settings: Settings) -> tuple[int, int]:
    """(streams, ONNX Runtime threads per stream) for these settings
    (:func:`~dinoembed.model.engine.inference_threads`)."""
    return inference_threads(settings.threads, settings.streams)


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


def _load_resolved(
    settings: Settings, resolved: ResolvedModel, early: PendingSession | None = None
) -> LoadedModel:
    threads = inference_layout(settings)[1]
    if early is not None and early.serves(resolved.path, threads):
        session = early.future.result()
    else:
        session = create_session(resolved.path, threads)
    return LoadedModel(resolved, Engine(session, normalize=settings.normalize))


def start_loading(
    settings: Settings,
    store: ModelStore | None = None,
    *,
    local: bool = False,
    early: PendingSession | None = None,
) -> Future[LoadedModel]:
    """The model's session being created on a background thread; what that raises is
    raised by the future's ``result()``.

    The model is resolved here, on the caller's thread (downloaded if need be), so the
    loading thread imports nothing and never races the caller's imports. ``local``: the
    caller knows the model is a local file (nothing to download, nothing to import), so
    it is resolved on the loading thread as well: a ``DINOEMBED_MODEL_PATH`` is hashed
    there, not on the caller's. ``early``: a session the caller started before it knew
    the settings (:func:`~dinoembed.model.engine.start_session`), used when it is for the
    model and thread count these settings resolve to, else left to finish unused.
    """
    store = store or ModelStore(settings.cache_dir)
    source = ModelSource.from_settings(settings)
    resolved = None if local else store.resolve(source)

    def load() -> LoadedModel:
        return _load_resolved(settings, resolved or store.resolve(source), early)

    return in_background(load, "dinoembed-load")
