"""ONNX Runtime batch engine behind a small session protocol.

The engine reads everything it needs from the model: the input name and size
S, whether the batch dimension is static 1 (one image per run) or dynamic, and
the embedding dimension D from the first output ([N, D], or [N, T, D] whose
token 0 is CLS).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from dinoembed.common.identity import file_identity
from dinoembed.common.vectors import normalize_rows
from dinoembed.errors import ModelFormatError

log = logging.getLogger(__name__)

DEFAULT_INPUT_SIZE = 224
Tensor = NDArray[np.float32]
T = TypeVar("T")


class NodeArg(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def shape(self) -> Sequence[Any]: ...
    @property
    def type(self) -> str: ...


class Session(Protocol):
    """What the engine needs of an inference session (onnxruntime.InferenceSession fits)."""

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any]) -> list[Any]: ...
    def get_inputs(self) -> Sequence[NodeArg]: ...
    def get_outputs(self) -> Sequence[NodeArg]: ...


@dataclass(frozen=True, slots=True)
class ModelSpec:
    input_name: str
    output_name: str
    input_size: int
    static_batch: bool
    output_rank: int
    dim: int

    @property
    def batch_mode(self) -> str:
        return "static (1 image per run)" if self.static_batch else "dynamic"


def available_cpus() -> int:
    """CPUs this process may use: affinity mask and cgroup v2/v1 quota, whichever is lower."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, int(quota + 0.5)))
    return max(1, count)


def inference_threads(threads: int | None, streams: int | None) -> tuple[int, int]:
    """(streams, ONNX Runtime threads per stream): ``threads`` (default: usable CPUs)
    shared among ``streams`` (default: one per thread)."""
    threads = threads or available_cpus()
    streams = streams or threads
    return streams, max(1, threads // streams)


def _cgroup_cpu_quota() -> float | None:
    try:
        parts = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if parts and parts[0] != "max":
            return int(parts[0]) / int(parts[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def create_session(path: Path, threads: int | None = None) -> Session:
    """An ONNX Runtime CPU session with an explicit intra-op thread count."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or available_cpus()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # The memory-pattern planner allocates one more block for the whole run on top of what
    # the arena already holds from the first run: ~200 MB more peak RSS at batch 16, no speed.
    options.enable_mem_pattern = False
    # Decode threads share the cores with inference: idle ORT workers must sleep, not spin.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as err:
        message = " ".join(str(err).split())[:300]
        raise ModelFormatError(f"cannot load ONNX model {path.name}: {message}") from err
    return session


def in_background(work: Callable[[], T], name: str) -> Future[T]:
    """``work()`` on a new thread; what it returns or raises comes out of the future.

    ONNX Runtime is imported here, on the caller's thread, so that the new thread imports
    nothing and never races the caller's imports. The thread is an executor's, so not a
    daemon: a process ending early waits for it at exit rather than leaving ONNX Runtime
    mid-way through creating a session (which aborts the process).
    """
    importlib.import_module("onnxruntime")
    executor = ThreadPoolExecutor(1, thread_name_prefix=name)
    try:
        return executor.submit(work)
    finally:
        executor.shutdown(wait=False)  # the thread ends when ``work`` does


@dataclass(frozen=True, slots=True)
class PendingSession:
    """A session for ``path`` on ``threads`` intra-op threads, being created on a
    background thread (:func:`start_session`) from the file as it was then (``identity``)."""

    path: Path
    threads: int
    identity: tuple[int, int, int, int]
    future: Future[Session]

    def serves(self, path: Path, threads: int) -> bool:
        """Whether this is the session a load of ``path`` on ``threads`` threads needs:
        same path, same thread count, and the file not replaced or changed since it was
        started (a model verified after the session started must be the one it read)."""
        if self.path != path or self.threads != threads:
            return False
        try:
            return file_identity(path.stat()) == self.identity
        except OSError:
            return False


def start_session(path: Path, threads: int) -> PendingSession:
    """Start creating the session for ``path`` now, before its caller knows for sure that
    it will want it: creating it (~0.2 s for ViT-S/14 on two cores) releases the GIL, so
    it overlaps whatever the caller imports and reads meanwhile. Raises ``OSError`` when
    ``path`` cannot be read at all."""
    identity = file_identity(path.stat())
    return PendingSession(
        path,
        threads,
        identity,
        in_background(lambda: create_session(path, threads), "dinoembed-session"),
    )


def _static(dim: Any) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def inspect_session(session: Session) -> ModelSpec:
    """Read the image-in, embedding-out contract from the model, or refuse it clearly."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise ModelFormatError(f"model must have one image input, it has {len(inputs)}")
    image = inputs[0]
    if image.type != "tensor(float)":
        raise ModelFormatError(f"model input must be float32, it is {image.type}")
    shape = list(image.shape)
    if len(shape) != 4 or _static(shape[1]) not in (3, None):
        raise ModelFormatError(f"model input must be [N, 3, S, S], it is {shape}")
    height, width = _static(shape[2]), _static(shape[3])
    if height is not None and width is not None and height != width:
        raise ModelFormatError(f"model input must be square, it is {height}x{width}")
    size = height or width or DEFAULT_INPUT_SIZE
    batch = _static(shape[0])
    if batch not in (None, 1):
        raise ModelFormatError(f"model batch dimension must be 1 or dynamic, it is {batch}")
    if not outputs:
        raise ModelFormatError("model has no outputs")
    out_shape = list(outputs[0].shape)
    if len(out_shape) not in (2, 3):
        raise ModelFormatError(f"model output must be [N, D] or [N, T, D], it is {out_shape}")
    dim = _static(out_shape[-1])
    spec = ModelSpec(image.name, outputs[0].name, size, batch == 1, len(out_shape), dim or 0)
    if dim is None:
        probe = np.zeros((1, 3, size, size), dtype=np.float32)
        out = session.run([spec.output_name], {image.name: probe})[0]
        dim = int(_first_token(spec, out).shape[1])
        spec = ModelSpec(image.name, outputs[0].name, size, batch == 1, len(out_shape), dim)
    return spec


def _first_token(spec: ModelSpec, out: Any) -> Tensor:
    arr = np.asarray(out, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[:, 0, :]
    if arr.ndim != 2:
        raise ModelFormatError(f"model output must be [N, D] or [N, T, D], got {arr.shape}")
    return arr


def is_standin(session: Session) -> bool:
    """True for models written by ``dinoembed model standin`` (marked in their metadata)."""
    meta = getattr(session, "get_modelmeta", None)
    if meta is None:
        return False
    return "dinoembed.model.standin" in (meta().custom_metadata_map or {})


class Engine:
    """Runs batches of preprocessed images through a session; float32 in and out."""

    def __init__(self, session: Session, *, normalize: bool = True) -> None:
        self.session = session
        self.spec = inspect_session(session)
        self.normalize = normalize

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    def warm_up(self) -> None:
        """One run on a blank image. ONNX Runtime's first run of a session is several times
        slower than the next ones (it allocates its arena and starts its thread pool); an
        entry point that loads the model ahead of time pays that there, not on its first
        image."""
        self._run(np.zeros((1, 3, self.input_size, self.input_size), dtype=np.float32))

    def embed(self, batch: Tensor) -> Tensor:
        """[N, 3, S, S] -> [N, D] (L2-normalised when asked)."""
        if batch.ndim != 4 or batch.shape[1:] != (3, self.input_size, self.input_size):
            raise ValueError(f"batch must be [N, 3, {self.input_size}, {self.input_size}]")
        if self.spec.static_batch and batch.shape[0] != 1:
            parts = [self._run(batch[i : i + 1]) for i in range(batch.shape[0])]
            vectors = np.concatenate(parts, axis=0)
        else:
            vectors = self._run(batch)
        return normalize_rows(vectors) if self.normalize else vectors

    def _run(self, batch: Tensor) -> Tensor:
        feed = {self.spec.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        out = self.session.run([self.spec.output_name], feed)[0]
        vectors = _first_token(self.spec, out)
        if vectors.shape[0] != batch.shape[0]:
            raise ModelFormatError(
                f"model returned {vectors.shape[0]} embeddings for {batch.shape[0]} images"
            )
        return vectors
