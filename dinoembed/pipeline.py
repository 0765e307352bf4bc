"""The embedding pipeline every front end drives.

Inputs are decoded and preprocessed on a small thread pool (Pillow releases
the GIL while decoding) feeding batches into the engine, so decoding overlaps
inference. At most a bounded window of images is in flight, so decoded
full-size images never pile up. Outcomes come back in input order.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from dinoembed.engine import Engine, available_cpus, create_session, is_standin
from dinoembed.errors import DinoEmbedError, ImageError
from dinoembed.imaging import DecodeLimits, DecodeTarget, decode
from dinoembed.model_store import ModelSource, ModelStore
from dinoembed.results import Embedding, EmbeddingResult, ModelInfo, SourceInfo
from dinoembed.settings import Settings
from dinoembed.transforms import preprocess

log = logging.getLogger(__name__)

Loader = Callable[[], "bytes | Path"]


@dataclass(frozen=True, slots=True)
class ImageItem:
    """One input: how to name it in the result, how to get its bytes, what we know of it."""

    file_path: str
    load: Loader
    source: SourceInfo = field(default_factory=SourceInfo)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A result for the item, or the non-image error (vanished, transient) that stopped it."""

    item: ImageItem
    result: EmbeddingResult | None
    failure: DinoEmbedError | None = None
    seconds: float = 0.0


_Prepared = tuple[NDArray[np.float32] | None, EmbeddingResult | DinoEmbedError | None, float]
_Inferred = tuple[list[tuple["ImageItem", _Prepared]], NDArray[np.float32] | None, float]


def float32_list(vector: NDArray[np.float32]) -> list[float]:
    """Shortest decimal that round-trips each float32, so sidecars stay compact."""
    return [float(str(v)) for v in vector.astype(np.float32)]


class Embedder:
    """Decode -> preprocess -> batch -> engine -> results, in input order."""

    def __init__(
        self,
        engine: Engine,
        model: ModelInfo,
        limits: DecodeLimits,
        *,
        batch_size: int = 8,
        decode_workers: int = 2,
        reduce_jpeg: bool = True,
    ) -> None:
        if model.input_size != engine.input_size:
            raise ValueError("model info and engine disagree on the input size")
        self.engine = engine
        self.model = model
        self.limits = limits
        self.batch_size = batch_size
        self.decode_workers = max(1, decode_workers)
        self.target = DecodeTarget(model.preprocess, model.input_size, reduce_jpeg)

    def embed(self, items: Iterable[ImageItem]) -> Iterator[Outcome]:
        """Batch k+1 runs in the engine while the caller handles batch k's outcomes."""
        with (
            ThreadPoolExecutor(self.decode_workers, thread_name_prefix="dinoembed-decode") as pool,
            ThreadPoolExecutor(1, thread_name_prefix="dinoembed-infer") as infer,
        ):
            previous: Future[_Inferred] | None = None
            for batch in self._batches(pool, items):
                current = infer.submit(self._infer, batch)
                if previous is not None:
                    yield from self._outcomes(previous.result())
                previous = current
            if previous is not None:
                yield from self._outcomes(previous.result())

    def embed_one(self, item: ImageItem) -> Outcome:
        return next(iter(self.embed([item])))

    def _batches(
        self, pool: ThreadPoolExecutor, items: Iterable[ImageItem]
    ) -> Iterator[list[tuple[ImageItem, _Prepared]]]:
        """Prepared inputs in order, cut after every ``batch_size`` decodable images.
        At most a window of inputs is being decoded at any time."""
        window = self.batch_size + 2 * self.decode_workers
        pending: deque[tuple[ImageItem, Future[_Prepared]]] = deque()
        ready: list[tuple[ImageItem, _Prepared]] = []
        tensors = 0
        for item in chain(items, [None]):
            if item is not None:
                pending.append((item, pool.submit(self._prepare, item)))
            while pending and (len(pending) >= window or item is None):
                done, future = pending.popleft()
                prepared = future.result()
                ready.append((done, prepared))
                tensors += prepared[0] is not None
                if tensors >= self.batch_size:
                    yield ready
                    ready, tensors = [], 0
        if ready:
            yield ready

    def _prepare(self, item: ImageItem) -> _Prepared:
        start = time.perf_counter()
        tensor, other = self._tensor_or_failure(item)
        return tensor, other, time.perf_counter() - start

    def _tensor_or_failure(
        self, item: ImageItem
    ) -> tuple[NDArray[np.float32] | None, EmbeddingResult | DinoEmbedError | None]:
        """The model input for ``item``, or the error result / adapter failure instead."""
        try:
            img = decode(item.load(), self.limits, self.target)
            return preprocess(img, self.model.preprocess, self.model.input_size), None
        except ImageError as err:
            return None, self.error_result(item, str(err))
        except DinoEmbedError as err:
            return None, err
        except FileNotFoundError:
            return None, self.error_result(item, "file not found")
        except OSError as err:
            reason = err.strerror or type(err).__name__
            return None, self.error_result(item, f"cannot read file: {reason}")
        except Exception as err:  # one bad file must not sink the batch; logged as a bug
            log.exception("internal error while decoding %s", item.file_path)
            return None, self.error_result(item, f"internal error: {type(err).__name__}")

    def _infer(self, ready: list[tuple[ImageItem, _Prepared]]) -> _Inferred:
        """On the inference thread: one engine run for the batch's decodable images."""
        tensors = [tensor for _, (tensor, _, _) in ready if tensor is not None]
        if not tensors:
            return ready, None, 0.0
        start = time.perf_counter()
        vectors = self.engine.embed(np.stack(tensors))
        return ready, vectors, (time.perf_counter() - start) / len(tensors)

    def _outcomes(self, inferred: _Inferred) -> Iterator[Outcome]:
        """On the caller's thread (so building results overlaps the next engine run)."""
        ready, vectors, per_image = inferred
        row = 0
        for item, (tensor, other, seconds) in ready:
            if tensor is not None and vectors is not None:
                yield Outcome(item, self._success(item, vectors[row]), None, seconds + per_image)
                row += 1
            elif isinstance(other, EmbeddingResult):
                yield Outcome(item, other, None, seconds)
            else:
                yield Outcome(item, None, other, seconds)

    def _success(self, item: ImageItem, vector: NDArray[np.float32]) -> EmbeddingResult:
        embedding = Embedding(
            embedding=float32_list(vector),
            embedding_dim=int(vector.shape[0]),
            normalized=self.engine.normalize,
        )
        return EmbeddingResult(
            file_path=item.file_path,
            status="success",
            embedding=embedding,
            model=self.model,
            source=item.source,
        )

    def error_result(self, item: ImageItem, message: str) -> EmbeddingResult:
        return EmbeddingResult(
            file_path=item.file_path,
            status="error",
            error=message,
            model=self.model,
            source=item.source,
        )


def build_embedder(settings: Settings, store: ModelStore | None = None) -> Embedder:
    """Resolve the model and assemble the pipeline from settings (one call per process)."""
    store = store or ModelStore(settings.cache_dir)
    resolved = store.resolve(ModelSource.from_settings(settings))
    cpus = available_cpus()
    session = create_session(resolved.path, settings.threads or cpus)
    engine = Engine(session, normalize=settings.normalize)
    name = resolved.name
    if is_standin(session):
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
    return Embedder(
        engine,
        model,
        DecodeLimits(max_pixels=settings.max_pixels, max_bytes=settings.max_bytes),
        batch_size=settings.batch_size,
        decode_workers=settings.decode_workers or cpus,
    )
