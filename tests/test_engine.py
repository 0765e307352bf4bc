"""The engine reads its contract from the model and batches accordingly."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dinoembed.common.vectors import normalize_rows
from dinoembed.errors import ModelFormatError
from dinoembed.model.engine import Engine, available_cpus, create_session
from dinoembed.model.standin import VitConfig, build_tiny, build_vit


@dataclass
class Arg:
    name: str
    shape: Sequence[Any]
    type: str = "tensor(float)"


class FakeSession:
    """Records the batch sizes it is run with; returns row i = [i, 1, ...]."""

    def __init__(self, batch: Any = "N", out_shape: Sequence[Any] = ("N", 8)) -> None:
        self.inputs = [Arg("image", [batch, 3, 224, 224])]
        self.outputs = [Arg("emb", list(out_shape))]
        self.calls: list[int] = []

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any]) -> list[Any]:
        batch = input_feed["image"]
        self.calls.append(batch.shape[0])
        first = batch[:, 0, 0, 0:1].astype(np.float32)
        return [np.concatenate([first, np.ones((batch.shape[0], 7), np.float32)], axis=1)]

    def get_inputs(self) -> list[Arg]:
        return self.inputs

    def get_outputs(self) -> list[Arg]:
        return self.outputs


def _batch(n: int, size: int = 224) -> np.ndarray:
    x = np.zeros((n, 3, size, size), np.float32)
    x[:, 0, 0, 0] = np.arange(n)
    return x


def test_dynamic_batch_runs_once_per_batch() -> None:
    session = FakeSession()
    out = Engine(session, normalize=False).embed(_batch(5))
    assert session.calls == [5]
    assert out[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_static_batch_of_one_runs_image_by_image_in_order() -> None:
    session = FakeSession(batch=1, out_shape=(1, 8))
    out = Engine(session, normalize=False).embed(_batch(4))
    assert session.calls == [1, 1, 1, 1]
    assert out[:, 0].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([Arg("a", ["N", 3, 224, 224]), Arg("b", ["N", 3, 224, 224])], "one image input"),
        ([Arg("a", ["N", 3, 224, 224], "tensor(uint8)")], "float32"),
        ([Arg("a", ["N", 224, 224, 3])], "[N, 3, S, S]"),
        ([Arg("a", ["N", 3, 224, 112])], "square"),
        ([Arg("a", [8, 3, 224, 224])], "batch dimension must be 1 or dynamic"),
    ],
)
def test_models_without_the_contract_are_refused(inputs: list[Arg], message: str) -> None:
    session = FakeSession()
    session.inputs = inputs
    with pytest.raises(ModelFormatError, match=message.replace("[", r"\[")):
        Engine(session)


def test_token_output_uses_token_zero(tmp_path: Path) -> None:
    plain = Engine(create_session(build_tiny(tmp_path / "a.onnx")), normalize=False)
    tokens = Engine(create_session(build_tiny(tmp_path / "b.onnx", tokens=True)), normalize=False)
    assert tokens.spec.output_rank == 3 and tokens.spec.dim == 32
    x = np.random.default_rng(0).standard_normal((3, 3, 224, 224)).astype(np.float32)
    np.testing.assert_allclose(tokens.embed(x), plain.embed(x), rtol=1e-5, atol=1e-6)


def test_real_static_batch_model_matches_dynamic(tmp_path: Path) -> None:
    dynamic = Engine(create_session(build_tiny(tmp_path / "d.onnx", batch=None)))
    static = Engine(create_session(build_tiny(tmp_path / "s.onnx")))
    assert static.spec.static_batch and not dynamic.spec.static_batch
    x = np.random.default_rng(1).standard_normal((5, 3, 224, 224)).astype(np.float32)
    np.testing.assert_allclose(static.embed(x), dynamic.embed(x), rtol=1e-5, atol=1e-6)


def test_input_size_is_read_from_the_model(tmp_path: Path) -> None:
    engine = Engine(create_session(build_tiny(tmp_path / "m.onnx", image_size=112)))
    assert engine.input_size == 112
    assert engine.embed(_batch(2, 112)).shape == (2, 32)


def test_normalisation_gives_unit_vectors_in_the_same_direction(tiny_model: Path) -> None:
    session = create_session(tiny_model)
    raw = Engine(session, normalize=False)
    unit = Engine(session, normalize=True)
    x = np.random.default_rng(2).standard_normal((4, 3, 224, 224)).astype(np.float32)
    r, u = raw.embed(x), unit.embed(x)
    assert u.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(u * np.linalg.norm(r, axis=1, keepdims=True), r, rtol=1e-5)
    assert np.all(np.isfinite(normalize_rows(np.zeros((1, 4), np.float32))))


@pytest.mark.parametrize("batch", [1, None])
def test_small_vit_standin_has_the_dinov2_shape_contract(tmp_path: Path, batch: int | None) -> None:
    cfg = VitConfig(depth=2, dim=48, heads=3, mlp=96)
    engine = Engine(create_session(build_vit(tmp_path / "vit.onnx", cfg, batch=batch)))
    assert engine.spec.static_batch is (batch == 1)
    out = engine.embed(np.random.default_rng(3).standard_normal((2, 3, 224, 224), np.float32))
    assert out.shape == (2, 48) and engine.spec.dim == 48


def test_unloadable_file_is_a_clear_model_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelFormatError, match=r"cannot load ONNX model bad\.onnx"):
        create_session(bad)


def test_available_cpus_respects_affinity() -> None:
    import os

    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))
