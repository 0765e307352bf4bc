"""Stand-in models: the DINOv2 ViT-S/14 graph with seeded random weights, and a tiny one.

The real weights cannot be downloaded in every environment (CI, air-gapped
machines). ``build_vit`` writes the exact ViT-S/14 architecture (patch 14, 12
blocks, dim 384, 6 heads, MLP 1536, LayerScale, 224 input): the same compute
as the real model, meaningless embeddings. ``build_tiny`` writes a few-KB model
with the same input/output contract for unit tests.

By default both mirror the production model's contract (SPEC §2): a static
input ``input`` ``[1, 3, S, S]`` float32 and one output ``output`` ``[1, D]``,
so the engine runs one image per ``session.run`` exactly as it does with the
real DINOv2 file. ``batch=None`` writes a dynamic-batch variant (batch
dimension named ``batch``). Needs the ``onnx`` package
(``pip install 'dinoembed[standin]'``); nothing else in dinoembed does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dinoembed.errors import ConfigError

OPSET = 17
INPUT_NAME = "input"  # the production model's tensor names (SPEC §2)
OUTPUT_NAME = "output"
PRODUCTION_BATCH = 1  # static: one image per run, like the real model; None = dynamic
STANDIN_MARK = "dinoembed.model.standin"  # metadata key; results then name the model "standin:…"


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as err:
        raise ConfigError("stand-in models need onnx: pip install 'dinoembed[standin]'") from err
    return onnx


@dataclass(frozen=True, slots=True)
class VitConfig:
    image_size: int = 224
    patch: int = 14
    dim: int = 384
    depth: int = 12
    heads: int = 6
    mlp: int = 1536
    layerscale: float = 0.1
    seed: int = 0

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch) ** 2 + 1


VIT_S14 = VitConfig()


class _Graph:
    """A small builder over onnx.helper: named initializers and nodes in order."""

    def __init__(self, seed: int) -> None:
        self.onnx = _onnx()
        self.rng = np.random.default_rng(seed)
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(self.onnx.numpy_helper.from_array(value, name=name))
        return name

    def weight(self, name: str, shape: tuple[int, ...], std: float = 0.02) -> str:
        return self.const(name, (self.rng.standard_normal(shape) * std).astype(np.float32))

    def op(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        self._n += 1
        out = f"{op_type.lower()}_{self._n}"
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def save(
        self, path: Path, last: str, out_shape: list[Any], batch: int | None, size: int
    ) -> None:
        helper, tp = self.onnx.helper, self.onnx.TensorProto
        self.nodes.append(helper.make_node("Identity", [last], [OUTPUT_NAME]))
        n: Any = batch if batch is not None else "batch"
        graph = helper.make_graph(
            self.nodes,
            "dinoembed_standin",
            [helper.make_tensor_value_info(INPUT_NAME, tp.FLOAT, [n, 3, size, size])],
            [helper.make_tensor_value_info(OUTPUT_NAME, tp.FLOAT, [n, *out_shape])],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        model.doc_string = "dinoembed stand-in model: random weights, NOT real DINOv2 embeddings"
        self.onnx.helper.set_model_props(model, {STANDIN_MARK: "random weights"})
        self.onnx.checker.check_model(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.onnx.save(model, str(path))


def _layernorm(g: _Graph, x: str, name: str, dim: int) -> str:
    scale = g.const(f"{name}.weight", np.ones(dim, dtype=np.float32))
    bias = g.const(f"{name}.bias", np.zeros(dim, dtype=np.float32))
    return g.op("LayerNormalization", x, scale, bias, axis=-1, epsilon=1e-6)


def _linear(g: _Graph, x: str, name: str, n_in: int, n_out: int) -> str:
    w = g.weight(f"{name}.weight", (n_in, n_out), std=1.0 / math.sqrt(n_in))
    b = g.const(f"{name}.bias", np.zeros(n_out, dtype=np.float32))
    return g.op("Add", g.op("MatMul", x, w), b)


def _attention(g: _Graph, x: str, name: str, cfg: VitConfig) -> str:
    head_dim = cfg.dim // cfg.heads
    qkv = _linear(g, x, f"{name}.qkv", cfg.dim, 3 * cfg.dim)
    shape = g.const(f"{name}.qkv_shape", np.array([0, 0, 3, cfg.heads, head_dim], np.int64))
    qkv = g.op("Transpose", g.op("Reshape", qkv, shape), perm=[2, 0, 3, 1, 4])
    q, k, v = (
        g.op("Gather", qkv, g.const(f"{name}.idx{i}", np.array(i, np.int64)), axis=0)
        for i in range(3)
    )
    scale = g.const(f"{name}.scale", np.array(1.0 / math.sqrt(head_dim), np.float32))
    scores = g.op("Mul", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2])), scale)
    ctx = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
    merged = g.op(
        "Reshape",
        g.op("Transpose", ctx, perm=[0, 2, 1, 3]),
        g.const(f"{name}.merge_shape", np.array([0, 0, cfg.dim], np.int64)),
    )
    return _linear(g, merged, f"{name}.proj", cfg.dim, cfg.dim)


def _gelu(g: _Graph, x: str, name: str) -> str:
    inv_sqrt2 = g.const(f"{name}.inv_sqrt2", np.array(1.0 / math.sqrt(2.0), np.float32))
    one = g.const(f"{name}.one", np.array(1.0, np.float32))
    half = g.const(f"{name}.half", np.array(0.5, np.float32))
    erf = g.op("Erf", g.op("Mul", x, inv_sqrt2))
    return g.op("Mul", g.op("Mul", x, half), g.op("Add", erf, one))


def _block(g: _Graph, x: str, i: int, cfg: VitConfig) -> str:
    name = f"blocks.{i}"
    gamma1 = g.const(f"{name}.ls1", np.full(cfg.dim, cfg.layerscale, np.float32))
    gamma2 = g.const(f"{name}.ls2", np.full(cfg.dim, cfg.layerscale, np.float32))
    attn = _attention(g, _layernorm(g, x, f"{name}.norm1", cfg.dim), f"{name}.attn", cfg)
    x = g.op("Add", x, g.op("Mul", attn, gamma1))
    hidden = _linear(g, _layernorm(g, x, f"{name}.norm2", cfg.dim), f"{name}.fc1", cfg.dim, cfg.mlp)
    mlp = _linear(g, _gelu(g, hidden, f"{name}.gelu"), f"{name}.fc2", cfg.mlp, cfg.dim)
    return g.op("Add", x, g.op("Mul", mlp, gamma2))


def build_vit(
    path: Path, cfg: VitConfig = VIT_S14, *, batch: int | None = PRODUCTION_BATCH
) -> Path:
    """Write a DINOv2-style ViT (CLS embedding output [batch, dim]) with seeded random weights.

    ``batch`` is the static batch dimension (1, the production contract) or None
    for a dynamic one.
    """
    g = _Graph(cfg.seed)
    patch_w = g.weight("patch_embed.weight", (cfg.dim, 3, cfg.patch, cfg.patch))
    patch_b = g.const("patch_embed.bias", np.zeros(cfg.dim, np.float32))
    x = g.op(
        "Conv", INPUT_NAME, patch_w, patch_b, kernel_shape=[cfg.patch] * 2, strides=[cfg.patch] * 2
    )
    x = g.op("Reshape", x, g.const("flat_shape", np.array([0, cfg.dim, -1], np.int64)))
    patches = g.op("Transpose", x, perm=[0, 2, 1])
    n = g.op(
        "Slice",
        g.op("Shape", patches),
        g.const("zero", np.array([0], np.int64)),
        g.const("one", np.array([1], np.int64)),
    )
    cls_shape = g.op("Concat", n, g.const("cls_tail", np.array([1, cfg.dim], np.int64)), axis=0)
    cls = g.op("Expand", g.weight("cls_token", (1, 1, cfg.dim)), cls_shape)
    x = g.op("Concat", cls, patches, axis=1)
    x = g.op("Add", x, g.weight("pos_embed", (1, cfg.tokens, cfg.dim)))
    for i in range(cfg.depth):
        x = _block(g, x, i, cfg)
    x = _layernorm(g, x, "norm", cfg.dim)
    cls_out = g.op("Gather", x, g.const("cls_index", np.array(0, np.int64)), axis=1)
    g.save(path, cls_out, [cfg.dim], batch, cfg.image_size)
    return path


def build_tiny(
    path: Path,
    *,
    dim: int = 32,
    image_size: int = 224,
    batch: int | None = PRODUCTION_BATCH,
    tokens: bool = False,
    seed: int = 0,
) -> Path:
    """A few-KB model with the same contract: patch conv, 4x4 spatial pooling, projection.

    Flattening the pooled grid keeps it position-sensitive (a mirrored image
    gives a different embedding), which the preprocessing tests rely on.
    With ``tokens`` the output is [N, 2, dim] (token 0 is the embedding).
    ``batch`` as for :func:`build_vit`: static 1 by default, None for dynamic.
    """
    patch = 14
    channels, grid = 4, 4
    g = _Graph(seed)
    w = g.weight("patch.weight", (channels, 3, patch, patch), std=0.05)
    x = g.op("Conv", INPUT_NAME, w, kernel_shape=[patch] * 2, strides=[patch] * 2)
    cells = image_size // patch
    pool = max(1, cells // grid)
    x = g.op("AveragePool", x, kernel_shape=[pool, pool], strides=[pool, pool])
    x = g.op("Reshape", x, g.const("flat", np.array([0, -1], np.int64)))
    feats = channels * (cells // pool) ** 2
    x = g.op("MatMul", x, g.weight("proj", (feats, dim), std=1.0 / math.sqrt(feats)))
    shape: list[Any] = [dim]
    if tokens:
        second = g.op("Mul", x, g.const("half", np.array(0.5, np.float32)))
        x = g.op(
            "Concat",
            g.op("Unsqueeze", x, g.const("ax1", np.array([1], np.int64))),
            g.op("Unsqueeze", second, g.const("ax1b", np.array([1], np.int64))),
            axis=1,
        )
        shape = [2, dim]
    g.save(path, x, shape, batch, image_size)
    return path
