"""The embedding pipeline every front end drives.

Inputs are decoded and preprocessed on a small thread pool (Pillow releases
the GIL while decoding) feeding batches into the engine, so decoding overlaps
inference. The engine runs ``streams`` batches at once, each on its own thread
(ONNX Runtime releases the GIL too): with one stream per core and one ONNX Runtime
thread each, every core runs whole images and no operator waits for a slower
thread, so the decode work fills the cores instead of stalling the model
(docs/performance.md has the measurements). At most a bounded window of images is
in flight, so decoded full-size images never pile up. Outcomes come back in input
order, each with its :class:`Disposition`: what the adapter does with it (write,
skip, retry).
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from dinoembed.errors import (
    ConfigError,
    DinoEmbedError,
    ImageError,
    SourceGoneError,
    TransientError,
)
from dinoembed.images.decode import DecodeLimits, DecodeTarget, decode_image
from dinoembed.images.transforms import preprocess
from dinoembed.model.engine import Engine, available_cpus, is_standin
from dinoembed.model.loader import (
    LoadedModel,
    inference_layout,
    load_model,
    start_loading,
)
from dinoembed.model.store import ModelStore, sha256_file
from dinoembed.results.schema import Embedding, EmbeddingResult, ModelInfo, SourceInfo
from dinoembed.results.sidecars import Recipe
from dinoembed.settings import Preprocess, Settings

log = logging.getLogger(__name__)

MODEL_INPUT_SIZE = 224  # in a recipe known from settings alone: descriptive, not identity

Loader = Callable[[], "bytes | Path | Image.Image"]


@dataclass(frozen=True, slots=True)
class ImageItem:
    """One input: how to name it in the result, how to get its bytes, what we know of it."""

    file_path: str
    load: Loader
    source: SourceInfo = field(default_factory=SourceInfo)


def local_item(path: Path) -> ImageItem:
    """A local file as an input, named by its absolute path, judged by its size and mtime."""
    absolute = path.absolute()
    try:
        stat = absolute.stat()
        source = SourceInfo(size=stat.st_size, mtime=stat.st_mtime)
    except OSError:
        source = SourceInfo()
    return ImageItem(file_path=str(absolute), load=lambda: absolute, source=source)


class Disposition(enum.Enum):
    """What an adapter does with an outcome; it never has to look at the error itself."""

    EMBEDDED = "embedded"  # a success result: write it
    ERROR = "error"  # the input is bad (permanent): write the error result, do not retry
    GONE = "gone"  # the input vanished before it was read: nothing to write
    RETRY = "retry"  # a transient failure (network, throttling): nothing written, retry later

    @property
    def writes(self) -> bool:
        """The result belongs in a sidecar."""
        return self in (Disposition.EMBEDDED, Disposition.ERROR)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result for one input and what to do with it.

    ``result`` is always set (an error result saying why, for GONE and RETRY too, so a
    command line can print one line per input); write it when ``disposition.writes``.
    """

    item: ImageItem
    disposition: Disposition
    result: EmbeddingResult
    seconds: float = 0.0

    @property
    def reason(self) -> str:
        return self.result.error or ""


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A decoded input (its tensor and what decoding learnt of the source), or its outcome."""

    item: ImageItem
    tensor: NDArray[np.float32] | None
    source: SourceInfo
    early: Outcome | None
    seconds: float


@dataclass(frozen=True, slots=True)
class _Inferred:
    batch: list[_Prepared]
    vectors: NDArray[np.float32] | None
    seconds_per_image: float


def float32_list(vector: NDArray[np.float32]) -> list[float]:
    """Shortest decimal that round-trips each float32, so sidecars stay compact."""
    return [float(str(v)) for v in vector.astype(np.float32)]


class Pipeline:
    """Decode -> preprocess -> batch -> engine -> results, in input order.

    Thread-safe: each :meth:`embed` call has its own decode pool and inference threads,
    and ONNX Runtime sessions may be run from several threads.

    The engine may still be loading (:func:`start_pipeline`): inputs are decoded for the
    expected input size meanwhile, and :attr:`engine`, :attr:`model` and the first batch
    wait for it; a tensor made for another size than the model's is made again.
    """

    def __init__(
        self,
        engine: Engine | Future[tuple[Engine, ModelInfo]],
        model: ModelInfo | None,
        limits: DecodeLimits,
        *,
        batch_size: int = 8,
        decode_workers: int = 2,
        streams: int = 1,
        reduce_jpeg: bool = True,
        expected: tuple[Preprocess, int] | None = None,
    ) -> None:
        if isinstance(engine, Engine):
            if model is None or model.input_size != engine.input_size:
                raise ValueError("model info and engine disagree on the input size")
            self._ready: Future[tuple[Engine, ModelInfo]] = Future()
            self._ready.set_result((engine, model))
            expected = (model.preprocess, model.input_size)
        elif expected is None:
            raise ValueError("a pipeline whose engine is loading needs its expected input")
        else:
            self._ready = engine
        self.limits = limits
        self.streams = max(1, streams)
        self._batch_size = batch_size
        self.decode_workers = max(1, decode_workers)
        self.reduce_jpeg = reduce_jpeg
        self.target = DecodeTarget(expected[0], expected[1], reduce_jpeg)

    @property
    def engine(self) -> Engine:
        """The engine (waiting for it while it loads; raising what loading raised)."""
        return self._ready.result()[0]

    @property
    def model(self) -> ModelInfo:
        return self._ready.result()[1]

    @property
    def batch_size(self) -> int:
        """Images per hand-off to the engine. With several streams a static-batch model gets
        one image each, so the streams share the work evenly to the last image (the engine
        runs such a model one image per run whatever the batch); a dynamic-batch model
        keeps its batches. With one stream the engine is not asked (nor waited for)."""
        return 1 if self.streams > 1 and self.engine.spec.static_batch else self._batch_size

    @property
    def normalize(self) -> bool:
        return self.engine.normalize

    @property
    def recipe(self) -> Recipe:
        """What this pipeline's embeddings are made by (for the currency rule)."""
        return Recipe(self.model, self.engine.normalize)

    def embed(self, items: Iterable[ImageItem]) -> Iterator[Outcome]:
        """Up to ``streams`` batches run in the engine, as many wait their turn, while the
        caller handles the outcomes of the oldest."""
        depth = 2 * self.streams
        with (
            ThreadPoolExecutor(self.decode_workers, thread_name_prefix="dinoembed-decode") as pool,
            ThreadPoolExecutor(self.streams, thread_name_prefix="dinoembed-infer") as infer,
        ):
            inflight: deque[Future[_Inferred]] = deque()
            for batch in self._batches(pool, items):
                inflight.append(infer.submit(self._infer, batch))
                while len(inflight) >= depth:
                    yield from self._outcomes(inflight.popleft().result())
            while inflight:
                yield from self._outcomes(inflight.popleft().result())

    def embed_one(self, item: ImageItem) -> Outcome:
        return next(iter(self.embed([item])))

    def _batches(
        self, pool: ThreadPoolExecutor, items: Iterable[ImageItem]
    ) -> Iterator[list[_Prepared]]:
        """Prepared inputs in order, cut after every ``batch_size`` decodable images.
        At most a window of inputs is being decoded at any time."""
        window = self._batch_size + 2 * max(self.decode_workers, self.streams)
        pending: deque[Future[_Prepared]] = deque()
        ready: list[_Prepared] = []
        tensors = 0
        for item in chain(items, [None]):
            if item is not None:
                pending.append(pool.submit(self._prepare, item))
            while pending and (len(pending) >= window or item is None):
                prepared = pending.popleft().result()
                ready.append(prepared)
                tensors += prepared.tensor is not None
                if tensors >= self.batch_size:
                    yield ready
                    ready, tensors = [], 0
        if ready:
            yield ready

    def _prepare(self, item: ImageItem, target: DecodeTarget | None = None) -> _Prepared:
        """The model input for ``item`` (timed), or the outcome that replaces it."""
        target = target or self.target
        start = time.perf_counter()
        try:
            decoded = decode_image(item.load(), self.limits, target)
            tensor = preprocess(decoded.image, target.mode, target.input_size)
            source = item.source.model_copy(
                update={"sha256": decoded.sha256, "width": decoded.width, "height": decoded.height}
            )
            return _Prepared(item, tensor, source, None, time.perf_counter() - start)
        except Exception as err:  # one bad input must not sink the batch
            early = self._failure(item, err)
            return _Prepared(item, None, item.source, early, time.perf_counter() - start)

    def _failure(self, item: ImageItem, err: Exception) -> Outcome:
        """Every way reading or decoding an input can fail, mapped onto what to do about it."""
        if isinstance(err, ImageError):
            return self._outcome(item, Disposition.ERROR, str(err))
        if isinstance(err, SourceGoneError):
            return self._outcome(item, Disposition.GONE, str(err))
        if isinstance(err, TransientError):
            return self._outcome(item, Disposition.RETRY, str(err))
        if isinstance(err, DinoEmbedError):  # e.g. S3 refused the read (AccessDenied)
            return self._outcome(item, Disposition.ERROR, f"cannot read: {err}")
        if isinstance(err, FileNotFoundError):
            return self._outcome(item, Disposition.ERROR, "file not found")
        if isinstance(err, OSError):
            reason = err.strerror or type(err).__name__
            return self._outcome(item, Disposition.ERROR, f"cannot read file: {reason}")
        log.error("internal error while decoding %s", item.file_path, exc_info=err)
        return self._outcome(item, Disposition.ERROR, f"internal error: {type(err).__name__}")

    def _outcome(self, item: ImageItem, disposition: Disposition, reason: str) -> Outcome:
        return Outcome(item, disposition, self.error_result(item, reason))

    def _infer(self, ready: list[_Prepared]) -> _Inferred:
        """On the inference thread: one engine run for the batch's decodable images."""
        size = self.engine.input_size
        if any(p.tensor is not None and p.tensor.shape[-1] != size for p in ready):
            # decoded before the model was loaded, for the size expected of it: not its size
            target = DecodeTarget(self.model.preprocess, size, self.reduce_jpeg)
            ready = [self._prepare(p.item, target) if p.tensor is not None else p for p in ready]
        tensors = [p.tensor for p in ready if p.tensor is not None]
        if not tensors:
            return _Inferred(ready, None, 0.0)
        start = time.perf_counter()
        vectors = self.engine.embed(np.stack(tensors))
        return _Inferred(ready, vectors, (time.perf_counter() - start) / len(tensors))

    def _outcomes(self, inferred: _Inferred) -> Iterator[Outcome]:
        """On the caller's thread (so building results overlaps the next engine run)."""
        row = 0
        for prepared in inferred.batch:
            if prepared.early is not None:
                yield replace(prepared.early, seconds=prepared.seconds)
                continue
            assert inferred.vectors is not None  # every tensor of the batch was inferred
            result = self._success(prepared, inferred.vectors[row])
            row += 1
            seconds = prepared.seconds + inferred.seconds_per_image
            yield Outcome(prepared.item, Disposition.EMBEDDED, result, seconds)

    def _success(self, prepared: _Prepared, vector: NDArray[np.float32]) -> EmbeddingResult:
        embedding = Embedding(
            embedding=float32_list(vector),
            embedding_dim=int(vector.shape[0]),
            normalized=self.engine.normalize,
        )
        return EmbeddingResult(
            file_path=prepared.item.file_path,
            status="success",
            embedding=embedding,
            model=self.model,
            source=prepared.source,
        )

    def error_result(self, item: ImageItem, message: str) -> EmbeddingResult:
        return EmbeddingResult(
            file_path=item.file_path,
            status="error",
            error=message,
            model=self.model,
            source=item.source,
        )


def build_pipeline(
    settings: Settings, store: ModelStore | None = None, *, loaded: LoadedModel | None = None
) -> Pipeline:
    """Resolve the model and assemble the pipeline from settings (one call per process);
    ``loaded``: a model :func:`load_model` already loaded for these settings."""
    engine, model = _engine_and_model(settings, loaded or load_model(settings, store))
    return Pipeline(engine, model, **_pipeline_options(settings))


def start_pipeline(
    settings: Settings,
    store: ModelStore | None = None,
    *,
    loading: Future[LoadedModel] | None = None,
) -> Pipeline:
    """The pipeline at once, its model loading on a background thread
    (:func:`~dinoembed.model.loader.start_loading`, or ``loading`` when the caller started
    it): inputs given to it are read and decoded meanwhile, for the preprocessing and
    input size a model is expected to have, so a command embedding a few images does not
    wait for the session before decoding the first. What loading raises is raised by the
    first use that needs the model."""
    loading = loading or start_loading(settings, store)
    ready: Future[tuple[Engine, ModelInfo]] = Future()

    def describe(done: Future[LoadedModel]) -> None:
        try:
            ready.set_result(_engine_and_model(settings, done.result()))
        except BaseException as err:  # handed to whoever waits for the model
            ready.set_exception(err)

    loading.add_done_callback(describe)
    expected = (settings.preprocess, MODEL_INPUT_SIZE)
    return Pipeline(ready, None, **_pipeline_options(settings), expected=expected)


def _pipeline_options(settings: Settings) -> dict[str, Any]:
    return {
        "limits": DecodeLimits(max_pixels=settings.max_pixels, max_bytes=settings.max_bytes),
        "batch_size": settings.batch_size,
        "decode_workers": settings.decode_workers or available_cpus(),
        "streams": inference_layout(settings)[0],
    }


def _engine_and_model(settings: Settings, loaded: LoadedModel) -> tuple[Engine, ModelInfo]:
    """The engine and what results record of its model (logged once)."""
    resolved, engine = loaded.resolved, loaded.engine
    name = resolved.name
    if is_standin(engine.session):
        log.warning(
            "%s is a stand-in model with random weights: its embeddings are meaningless "
            "(fine for tests and benchmarks only)",
            resolved.path.name,
        )
        name = f"standin:{name}"
    model = ModelInfo(
        name=name,
        sha256=resolved.sha256,
        preprocess=settings.preprocess,
        input_size=engine.input_size,
    )
    log.info(
        "model %s (%s) from %s, %s, dim %d",
        resolved.name,
        resolved.sha256[:12],
        resolved.origin,
        engine.spec.batch_mode,
        engine.spec.dim,
    )
    return engine, model


def expected_model(settings: Settings) -> tuple[str, Preprocess]:
    """The sha256 and preprocessing the function is configured with, without loading it:
    the file's digest for ``--model``/``DINOEMBED_MODEL_PATH``, else ``DINOEMBED_MODEL_SHA256``."""
    if settings.model_path is not None and not settings.sha256_is_explicit:
        try:
            return sha256_file(settings.model_path), settings.preprocess
        except OSError as err:
            raise ConfigError(
                f"--model {settings.model_path}: cannot read: {err.strerror or err}"
            ) from err
    return settings.model_sha256, settings.preprocess


def expected_recipe(settings: Settings) -> Recipe:
    """What a current sidecar must have been made by, from settings alone (no model is
    loaded or downloaded). Only the sha256 and preprocessing identify a model
    (:func:`dinoembed.results.sidecars.same_space`); name and input size are descriptive."""
    sha256, preprocess = expected_model(settings)
    model = ModelInfo(
        name=settings.model_name,
        sha256=sha256,
        preprocess=preprocess,
        input_size=MODEL_INPUT_SIZE,
    )
    return Recipe(model, settings.normalize)
