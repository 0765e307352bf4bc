"""Hostile and mutated images: only documented errors, never a crash, never a lost batch.

The fuzz test mutates the seed corpus (tests/corpus/seeds) with hypothesis;
``DINOEMBED_FUZZ_EXAMPLES`` raises the number of examples for the longer run
(``scripts/reliability``). Anything it ever finds goes into
tests/corpus/regressions, which is replayed here on every run.
"""

from __future__ import annotations

import io
import struct
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dinoembed.errors import (
    CorruptImageError,
    ImageError,
    ImageTooLargeError,
    NotAnImageError,
    UnsupportedFormatError,
)
from dinoembed.images.decode import DecodeLimits, DecodeTarget, decode
from dinoembed.images.transforms import preprocess
from dinoembed.pipeline import Pipeline, local_item
from tests.helpers import encode, png_bomb
from tests.reliability_plugin import fuzz_examples, tried

CORPUS = Path(__file__).parent / "corpus"
SEEDS = {p.name: p.read_bytes() for p in sorted((CORPUS / "seeds").iterdir())}
LIMITS = DecodeLimits(max_pixels=89_478_485, max_bytes=64 << 20)
TARGET = DecodeTarget("center-crop", 224)
pytestmark = [
    pytest.mark.reliability("fuzzing: image decoding"),
    # Pillow warns about the corrupt metadata these inputs are made of; errors are what count.
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

_slowest: list[float] = [0.0]


def _decode_or_image_error(data: bytes) -> str:
    """Decode untrusted bytes; the only allowed failure is an ImageError with one line."""
    start = time.perf_counter()
    try:
        img = decode(data, LIMITS, TARGET)
        assert img.mode == "RGB" and img.width > 0 and img.height > 0
        tensor = preprocess(img, TARGET.mode, TARGET.input_size)
        assert tensor.shape == (3, 224, 224) and np.isfinite(tensor).all()
        return "ok"
    except ImageError as err:
        message = str(err)
        assert message and "\n" not in message and "Traceback" not in message
        return type(err).__name__
    finally:
        _slowest[0] = max(_slowest[0], time.perf_counter() - start)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 8))):
        action = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "dup"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif action == "set" and data:
            data[pos] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0xD8, 0xD9]))
        elif action == "truncate":
            del data[pos:]
        elif action == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif action == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif action == "dup":
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 256))]
    return bytes(data)


@settings(
    max_examples=fuzz_examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(data=mutated())
def test_mutated_images_decode_or_fail_cleanly(data: bytes) -> None:
    tried()
    _decode_or_image_error(data)


@settings(max_examples=fuzz_examples(100), deadline=None)
@given(data=st.binary(max_size=2048))
def test_random_bytes_are_not_images(data: bytes) -> None:
    tried()
    _decode_or_image_error(data)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_seed_corpus_decodes(name: str) -> None:
    assert _decode_or_image_error(SEEDS[name]) == "ok"


REGRESSIONS = sorted(p for p in (CORPUS / "regressions").iterdir() if p.name != "README.md")


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.name for p in REGRESSIONS])
def test_regression_corpus_is_handled(path: Path) -> None:
    outcome = _decode_or_image_error(path.read_bytes())
    # files named after the error they produced keep producing it
    expected = path.name.split("-", 1)[0]
    if expected.endswith("error"):
        assert outcome.lower() == expected


# ---- hostile images (reliability category of their own) -------------------------------------

hostile = pytest.mark.reliability("hostile images")


def _gif_bomb(width: int, height: int) -> bytes:
    # header + logical screen of width x height, no colour table, one tiny image descriptor
    screen = struct.pack("<HHBBB", width, height, 0, 0, 0)
    descriptor = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return b"GIF89a" + screen + descriptor + b"\x02\x02\x44\x01\x00\x3b"


def _tiff_bomb(width: int, height: int) -> bytes:
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 8),
        (277, 3, 1, 1),
        (278, 4, 1, height),
        (279, 4, 1, 16),
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack("<HHII", tag, kind, count, value)
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 24) + b"\x00" * 16 + ifd


def _jpeg_bomb(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("RGB", (8, 8)), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


BOMBS = {
    "png 20000x20000": png_bomb(20000, 20000),
    "png 10000x10000": png_bomb(10000, 10000),
    "png 1x100000000": png_bomb(1, 100_000_000),
    "gif 65535x65535": _gif_bomb(65535, 65535),
    "gif 10000x9000": _gif_bomb(10000, 9000),
    "tiff 50000x50000": _tiff_bomb(50000, 50000),
    "jpeg 65000x65000": _jpeg_bomb(65000, 65000),
}


@hostile
@pytest.mark.parametrize("name", sorted(BOMBS))
def test_pixel_bombs_are_refused_before_decoding(name: str) -> None:
    with pytest.raises((ImageTooLargeError, CorruptImageError)) as info:
        decode(BOMBS[name], LIMITS, TARGET)
    assert "\n" not in str(info.value)
    if isinstance(info.value, ImageTooLargeError):
        assert str(info.value).startswith("image too large:")


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("payload.txt", "x" * 1000)
    return buf.getvalue()


@hostile
def test_jpeg_zip_polyglot_is_read_as_the_jpeg(photos: dict[str, Image.Image]) -> None:
    jpeg = encode(photos["coffee"], "JPEG")
    img = decode(jpeg + _zip_bytes(), LIMITS, TARGET)
    assert img.size == photos["coffee"].size


@hostile
def test_zip_with_jpeg_inside_is_unsupported(photos: dict[str, Image.Image]) -> None:
    with pytest.raises(UnsupportedFormatError, match="unsupported format: ZIP"):
        decode(_zip_bytes() + encode(photos["coffee"], "JPEG"), LIMITS, TARGET)


def _png_with_chunk(kind: bytes, payload: bytes) -> bytes:
    base = encode(Image.new("RGB", (16, 16), (9, 9, 9)), "PNG")
    chunk = struct.pack(">I", len(payload)) + kind + payload
    chunk += struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    return base[:33] + chunk + base[33:]  # right after IHDR


@hostile
def test_huge_compressed_text_chunk_is_refused() -> None:
    bomb = b"Comment\x00\x00" + zlib.compress(b"A" * (64 << 20), 9)  # 64 MiB when inflated
    with pytest.raises(CorruptImageError) as info:
        decode(_png_with_chunk(b"zTXt", bomb), LIMITS, TARGET)
    assert "\n" not in str(info.value)


@hostile
def test_huge_icc_and_exif_segments_do_not_matter(photos: dict[str, Image.Image]) -> None:
    icc = bytes(np.random.default_rng(0).integers(0, 256, 2_000_000, dtype=np.uint8))
    data = encode(photos["coffee"], "JPEG", icc_profile=icc, exif=b"Exif\x00\x00" + b"\x00" * 60000)
    assert decode(data, LIMITS, TARGET).size == photos["coffee"].size


RENAMED = {
    "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG"),
    "pdf": (b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "PDF"),
    "eps": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "PostScript/EPS"),
    "eps-binary": (b"\xc5\xd0\xd3\xc6" + b"\x00" * 40, "EPS"),
    "fits": (b"SIMPLE  =                    T" + b" " * 50 + b"BITPIX  =  8", "FITS"),
    "psd": (b"8BPS\x00\x01" + b"\x00" * 40, "PSD"),
}


@hostile
@pytest.mark.parametrize("kind", sorted(RENAMED))
def test_non_raster_formats_renamed_jpg_are_refused_by_the_allowlist(kind: str) -> None:
    data, name = RENAMED[kind]
    with pytest.raises(UnsupportedFormatError, match=f"unsupported format: {name}"):
        decode(data, LIMITS, TARGET)


@hostile
@pytest.mark.parametrize("size", [(0, 10), (10, 0), (0, 0)])
def test_zero_sized_images_are_refused(size: tuple[int, int]) -> None:
    data = png_bomb(*size)
    with pytest.raises((CorruptImageError, NotAnImageError)):
        decode(data, LIMITS, TARGET)


@hostile
def test_error_results_carry_no_trace_and_no_host_path(
    embedder: Pipeline, tmp_path: Path, photos: dict[str, Image.Image]
) -> None:
    files = {
        "bomb.png": BOMBS["png 10000x10000"],
        "svg.jpg": RENAMED["svg"][0],
        "trunc.jpg": encode(photos["coffee"], "JPEG")[:500],
        "good.png": SEEDS["rgba.png"],
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    outcomes = list(embedder.embed(local_item(tmp_path / name) for name in files))
    statuses = {Path(o.item.file_path).name: o.result.status for o in outcomes if o.result}
    assert statuses == {
        "bomb.png": "error",
        "svg.jpg": "error",
        "trunc.jpg": "error",
        "good.png": "success",
    }
    for outcome in outcomes:
        error = outcome.result.error
        if error:
            assert str(tmp_path) not in error and "Traceback" not in error and "\n" not in error
