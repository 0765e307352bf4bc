"""``dinoembed model quantize IN OUT``: an opt-in, dynamically quantised int8 model.

Only the MatMuls with constant weights (the linear layers, ~95% of a ViT's
FLOPs) are quantised, with per-channel int8 weights; activations are quantised
on the fly (ONNX Runtime's DynamicQuantizeMatMul). The patch-embedding Conv and
the attention products stay float32: quantising the Conv makes it slower on
CPU, and the attention products have no constant weights. The output is an
ordinary ONNX model, usable wherever a model path is.

Quantisation changes the embeddings slightly. How much must be checked on the
real weights (``python -m benchmarks.run --agreement-model``): the stand-in's
random weights say nothing about it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dinoembed.common.atomic import atomic_path
from dinoembed.errors import ConfigError, ModelFormatError
from dinoembed.model.engine import create_session, inspect_session

log = logging.getLogger(__name__)

QUANTIZED_OPS = ("MatMul",)


@dataclass(frozen=True, slots=True)
class QuantizeReport:
    source: Path
    output: Path
    source_bytes: int
    output_bytes: int
    dim: int


def quantize_model(source: Path, output: Path) -> QuantizeReport:
    """Write the int8 version of ``source`` to ``output`` atomically; check it still loads."""
    if not source.is_file():
        raise ConfigError(f"model file not found: {source}")
    if source.resolve() == output.resolve():
        raise ConfigError("the quantised model needs an output path other than its input")
    spec = inspect_session(create_session(source, threads=1))
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as tmp:
        _quantize_matmuls(source, tmp)
        quantized = inspect_session(create_session(tmp, threads=1))
        if (quantized.input_size, quantized.dim) != (spec.input_size, spec.dim):
            raise ModelFormatError("the quantised model no longer has the input/output shapes")
    return QuantizeReport(
        source, output, source.stat().st_size, output.stat().st_size, quantized.dim
    )


class _DropAdvice(logging.Filter):
    """The quantiser advises pre-processing through the root logger: not actionable here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _quiet_advice() -> Iterator[None]:
    root, drop = logging.getLogger(), _DropAdvice()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _quantize_matmuls(source: Path, target: Path) -> None:
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as err:  # onnxruntime.quantization imports onnx
        raise ConfigError("quantising needs onnx: pip install 'dinoembed[standin]'") from err
    try:
        with _quiet_advice():
            quantize_dynamic(
                str(source),
                str(target),
                op_types_to_quantize=list(QUANTIZED_OPS),
                per_channel=True,
                weight_type=QuantType.QInt8,
            )
    except Exception as err:  # the quantiser raises bare exceptions of many kinds
        message = " ".join(str(err).split())[:300]
        raise ModelFormatError(f"cannot quantise {source.name}: {message}") from err
