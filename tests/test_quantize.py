"""``dinoembed model quantize``: an int8 copy that loads everywhere and agrees with fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from dinoembed.cli import main
from dinoembed.errors import ConfigError
from dinoembed.images.transforms import preprocess
from dinoembed.model.engine import Engine, create_session
from dinoembed.model.quantize import quantize_model
from dinoembed.model.standin import build_tiny


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("fp32") / "tiny.onnx", dim=64)


def test_quantize_command_writes_an_int8_model_that_loads(
    fp32_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a float32 model  WHEN quantised through the CLI
    out = tmp_path / "int8" / "tiny-int8.onnx"
    code = main(["model", "quantize", str(fp32_model), str(out)])
    # THEN the output is an ONNX model whose weight MatMul became integer arithmetic
    assert code == 0
    assert '"dim": 64' in capsys.readouterr().out
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert "MatMul" not in ops
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}
    # AND nothing but the model is left in the folder (no temp files)
    assert [p.name for p in out.parent.iterdir()] == ["tiny-int8.onnx"]


def test_quantized_embeddings_agree_with_float32(
    fp32_model: Path, tmp_path: Path, photos: dict[str, Image.Image]
) -> None:
    # GIVEN the float32 model and its int8 copy
    int8 = quantize_model(fp32_model, tmp_path / "int8.onnx").output
    batch = np.stack([preprocess(img, "center-crop", 224) for img in photos.values()])
    # WHEN both embed the same real photos
    ref = Engine(create_session(fp32_model, threads=1)).embed(batch)
    got = Engine(create_session(int8, threads=1)).embed(batch)
    # THEN every embedding points the same way (cosine of unit vectors), yet is not identical
    cosines = np.sum(ref * got, axis=1)
    assert cosines.min() > 0.99
    assert not np.array_equal(ref, got)


def test_quantize_refuses_to_overwrite_its_input(fp32_model: Path) -> None:
    with pytest.raises(ConfigError, match="other than its input"):
        quantize_model(fp32_model, fp32_model)


def test_quantize_reports_a_missing_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["model", "quantize", str(tmp_path / "missing.onnx"), str(tmp_path / "out.onnx")])
    assert code == 2
    assert "model file not found" in capsys.readouterr().err
    assert not (tmp_path / "out.onnx").exists()
