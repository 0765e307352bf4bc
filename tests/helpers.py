"""Helpers shared by the tests: image bytes, probe models, vector comparisons."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def cosine(a: NDArray[Any], b: NDArray[Any]) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_bomb(width: int, height: int) -> bytes:
    """A valid-looking PNG header claiming width x height pixels, a few hundred bytes long."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\x00" * (width + 1) * 4)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def make_probe(path: Path, *, channels: int = 4, seed: int = 1) -> Path:
    """A position-sensitive probe model: a 14x14/14 patch conv whose whole output grid is the
    embedding ([N, channels*16*16]), so any shift, flip or distortion of the input shows."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((channels, 3, 14, 14)).astype(np.float32) * 0.05
    dim = channels * 16 * 16
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[14, 14], strides=[14, 14]),
        helper.make_node("Reshape", ["c", "shape"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 224, 224])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", dim])],
        [
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(np.array([0, dim], dtype=np.int64), "shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def reference_eval_transform(img: Image.Image, size: int = 224) -> NDArray[np.float32]:
    """The DINOv2 eval transform written out from torchvision's documented semantics,
    independently of dinoembed.images.transforms: Resize(256) keeps the aspect ratio with the
    short side 256 and the long side int(256 * long / short); CenterCrop(224) offsets are
    int(round((dim - 224) / 2)); ToTensor divides by 255; Normalize uses ImageNet stats."""
    w, h = img.size
    resize_to = 256 * size // 224
    if w <= h:
        new_w, new_h = resize_to, int(resize_to * h / w)
    else:
        new_w, new_h = int(resize_to * w / h), resize_to
    resized = img.convert("RGB").resize((new_w, new_h), Image.Resampling.BICUBIC)
    left = round((new_w - size) / 2.0)
    top = round((new_h - size) / 2.0)
    crop = resized.crop((left, top, left + size, top + size))
    x = np.asarray(crop).astype(np.float64) / 255.0
    mean = np.array([0.485, 0.456, 0.406])
    std = np.array([0.229, 0.224, 0.225])
    return ((x - mean) / std).transpose(2, 0, 1).astype(np.float32)


@contextmanager
def tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A real size-capped filesystem at ``mount`` (root only; skips the test elsewhere)."""
    mount.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def python_stdout(script: str, *args: str, env: dict[str, str] | None = None) -> str:
    """What ``script`` prints when run by a fresh interpreter (this one's executable):
    for what a process does from its start (its imports, its allocator). Fails on a
    non-zero exit."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, check=True, env=env
    )
    return done.stdout
