"""Decoding: EXIF orientation, odd modes, and every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinoembed.errors import (
    CorruptImageError,
    ImageError,
    ImageTooLargeError,
    NotAnImageError,
    UnsupportedFormatError,
)
from dinoembed.images.decode import DecodeLimits, decode
from dinoembed.pipeline import ImageItem, Pipeline
from tests.helpers import encode, png_bomb, python_stdout

LIMITS = DecodeLimits(max_pixels=89_478_485, max_bytes=64 << 20)

# EXIF orientation -> the transpose a viewer applies to the stored pixels (EXIF 2.32, 4.6.4).
ORIENTATION_TO_DISPLAY = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
INVERSE = {
    Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270,
}


def _with_orientation(display: Image.Image, orientation: int, fmt: str) -> bytes:
    """Store ``display`` as a camera would: pixels un-rotated, orientation tag set."""
    op = ORIENTATION_TO_DISPLAY[orientation]
    stored = display.transpose(INVERSE.get(op, op))
    exif = Image.Exif()
    exif[0x0112] = orientation
    params = {"quality": 95} if fmt == "JPEG" else {}
    return encode(stored, fmt, exif=exif.tobytes(), **params)


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_orientation_gives_the_displayed_image(
    photos: dict[str, Image.Image], orientation: int
) -> None:
    display = photos["chelsea"]  # not square: a wrong rotation changes the size too
    decoded = decode(_with_orientation(display, orientation, "PNG"), LIMITS)
    assert decoded.size == display.size
    assert np.array_equal(np.asarray(decoded), np.asarray(display))


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_orientation_embedding_matches_transposed_jpeg(
    photos: dict[str, Image.Image], embedder: Pipeline, orientation: int
) -> None:
    display = photos["astronaut"].resize((320, 240))
    tagged = _with_orientation(display, orientation, "JPEG")
    upright = encode(display, "JPEG", quality=95)
    results = [
        o.result
        for o in embedder.embed(
            [ImageItem("tagged.jpg", lambda: tagged), ImageItem("upright.jpg", lambda: upright)]
        )
    ]
    assert all(r is not None and r.ok for r in results)
    a, b = (np.array(r.embedding.embedding) for r in results if r and r.embedding)
    # JPEG re-encoding of rotated pixels differs slightly; a wrong orientation does not come close
    assert float(a @ b) > 0.995


def _cmyk_jpeg(photo: Image.Image) -> bytes:
    return encode(photo.convert("CMYK"), "JPEG")


def test_cmyk_jpeg_decodes_to_rgb(photos: dict[str, Image.Image]) -> None:
    img = decode(_cmyk_jpeg(photos["coffee"]), LIMITS)
    assert img.mode == "RGB"
    # Pillow's CMYK round trip is lossy but must stay the same picture
    diff = np.abs(np.asarray(img, dtype=int) - np.asarray(photos["coffee"], dtype=int)).mean()
    assert diff < 12


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    ramp = np.linspace(0, 65535, 256 * 64).reshape(64, 256).astype(np.uint16)
    img = decode(encode(Image.fromarray(ramp), "PNG"), LIMITS)
    expected = np.round(ramp / 257.0).astype(np.uint8)
    assert np.array_equal(np.asarray(img)[..., 0], expected)


def test_palette_transparency_is_composited_on_white() -> None:
    pal = Image.new("P", (32, 32), 0)
    pal.putpalette([10, 20, 30] + [200, 0, 0] + [0] * 762)
    pal.paste(1, (0, 0, 16, 32))  # left half red, right half index 0 (transparent)
    img = decode(encode(pal, "PNG", transparency=0), LIMITS)
    arr = np.asarray(img)
    assert tuple(arr[5, 5]) == (200, 0, 0)
    assert tuple(arr[5, 25]) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "1", "I;16"])
def test_every_common_mode_becomes_rgb(mode: str) -> None:
    img = Image.new(mode, (40, 30))
    assert decode(encode(img, "PNG"), LIMITS).mode == "RGB"


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert tuple(np.asarray(decode(data, LIMITS))[10, 10]) == (255, 0, 0)


def _truncated_jpeg(photo: Image.Image) -> bytes:
    data = encode(photo, "JPEG")
    return data[: len(data) // 2]


def _corrupt_exif_jpeg(photo: Image.Image) -> bytes:
    data = encode(photo, "JPEG")
    garbage = b"Exif\x00\x00II*\x00\xff\xff\xff\x7f" + b"\xde\xad" * 40
    app1 = b"\xff\xe1" + (len(garbage) + 2).to_bytes(2, "big") + garbage
    return data[:2] + app1 + data[2:]


BAD_INPUTS: dict[str, tuple[str, type[ImageError]]] = {
    "empty.jpg": ("not an image: the file is empty", NotAnImageError),
    "random.jpg": ("not an image", NotAnImageError),
    "text.png": ("not an image", NotAnImageError),
    "truncated.jpg": ("truncated JPEG image", CorruptImageError),
    "bomb.png": ("image too large: 20000x20000 exceeds 89478485 pixels", ImageTooLargeError),
    "bomb-small.png": ("image too large: 10000x10000 exceeds 89478485 pixels", ImageTooLargeError),
    "drawing.svg.jpg": ("unsupported format: SVG", UnsupportedFormatError),
    "doc.pdf.jpg": ("unsupported format: PDF", UnsupportedFormatError),
    "zero-width.bmp": ("not an image", NotAnImageError),
}


def bad_input_bytes(name: str, photo: Image.Image) -> bytes:
    rng = np.random.default_rng(7)
    makers = {
        "empty.jpg": lambda: b"",
        "random.jpg": lambda: rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "text.png": lambda: b"hello, I am a text file pretending to be a PNG\n" * 20,
        "truncated.jpg": lambda: _truncated_jpeg(photo),
        "bomb.png": lambda: png_bomb(20000, 20000),  # Pillow itself refuses it in open()
        "bomb-small.png": lambda: png_bomb(10000, 10000),  # our own check refuses it
        "drawing.svg.jpg": lambda: (
            b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>'
        ),
        "doc.pdf.jpg": lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
        "zero-width.bmp": lambda: _zero_width_bmp(),
    }
    return makers[name]()


def _zero_width_bmp() -> bytes:
    data = bytearray(encode(Image.new("RGB", (4, 4)), "BMP"))
    data[18:22] = (0).to_bytes(4, "little")  # biWidth = 0
    return bytes(data)


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_raises_one_line_image_error(photos: dict[str, Image.Image], name: str) -> None:
    message, kind = BAD_INPUTS[name]
    with pytest.raises(kind) as info:
        decode(bad_input_bytes(name, photos["coffee"]), LIMITS)
    text = str(info.value)
    assert text.startswith(message)
    assert "\n" not in text and "Traceback" not in text


def test_byte_limit_is_checked_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(b"\0" * 2048)
    with pytest.raises(ImageTooLargeError, match="file too large: 2048 bytes exceeds 1024 bytes"):
        decode(path, DecodeLimits(max_pixels=10**8, max_bytes=1024))


def test_pixel_limit_is_configurable(photos: dict[str, Image.Image]) -> None:
    data = encode(photos["coffee"], "PNG")  # 400x600
    with pytest.raises(ImageTooLargeError, match="image too large: 600x400 exceeds 1000 pixels"):
        decode(data, DecodeLimits(max_pixels=1000, max_bytes=1 << 30))


def test_corrupt_exif_is_ignored(photos: dict[str, Image.Image]) -> None:
    img = decode(_corrupt_exif_jpeg(photos["coffee"]), LIMITS)
    assert img.size == photos["coffee"].size


def test_heic_without_pillow_heif_is_an_unsupported_format() -> None:
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("pillow-heif is installed: HEIC is supported")
    heic_header = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    with pytest.raises(UnsupportedFormatError, match=r"unsupported format: HEIC/HEIF \(install"):
        decode(heic_header, LIMITS)


HEIF_ONLY_WHEN_NEEDED = """
import io, sys
import numpy as np
from PIL import Image
from dinoembed.images.decode import DecodeLimits, decode
limits = DecodeLimits(max_pixels=10**8, max_bytes=1 << 30)
y, x = np.mgrid[0:64, 0:96]
photo = Image.fromarray(np.stack([x * 2.6, y * 3.9, (x + y) * 1.5], -1).astype(np.uint8))
jpeg = io.BytesIO(); photo.save(jpeg, "JPEG")
assert decode(jpeg.getvalue(), limits).size == (96, 64)
print("after a JPEG:", "pillow_heif" in sys.modules)
import pillow_heif
heic = io.BytesIO(); pillow_heif.from_pillow(photo).save(heic, quality=95)
got = np.asarray(decode(heic.getvalue(), limits), dtype=int)
print("HEIC mean error:", float(np.abs(got - np.asarray(photo, dtype=int)).mean()))
"""


def test_pillow_heif_is_loaded_for_a_heic_file_only() -> None:
    pytest.importorskip("pillow_heif")
    # GIVEN a fresh interpreter WHEN it decodes a JPEG, then a HEIC
    out = python_stdout(HEIF_ONLY_WHEN_NEEDED)
    # THEN the JPEG did not load libheif (~8 ms of every cold start), and the HEIC decodes
    lines = out.splitlines()
    assert lines[0] == "after a JPEG: False"
    error = float(lines[1].removeprefix("HEIC mean error: "))
    assert error < 6  # lossy, but the same picture (a wrong or blank decode is ~60 off)


def test_avif_decodes_when_pillow_supports_it(photos: dict[str, Image.Image]) -> None:
    from PIL import features

    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF support")
    img = decode(encode(photos["coffee"], "AVIF", quality=90), LIMITS)
    diff = np.abs(np.asarray(img, dtype=int) - np.asarray(photos["coffee"], dtype=int)).mean()
    assert img.size == photos["coffee"].size and diff < 8


# Real images in formats Pillow can open but dinoembed refuses:
# file name -> (Pillow save format, image mode, the name the error must give)
REFUSED_FORMATS: dict[str, tuple[str, str, str]] = {
    "photo.tga": ("TGA", "RGB", "TGA"),
    "favicon.ico": ("ICO", "RGB", "ICO"),
    "photo.ppm": ("PPM", "RGB", "PPM"),
    "gray.pgm": ("PPM", "L", "PGM"),
    "mask.pbm": ("PPM", "1", "PBM"),
    "photo.pcx": ("PCX", "RGB", "PCX"),
    "photo.sgi": ("SGI", "RGB", "SGI"),
    "photo.qoi": ("QOI", "RGB", "QOI"),
    "texture.dds": ("DDS", "RGB", "DDS"),
    "icon.icns": ("ICNS", "RGB", "ICNS"),
    "photo.im": ("IM", "RGB", "IM"),
    "mask.msp": ("MSP", "1", "MSP"),
    "mask.xbm": ("XBM", "1", "XBM"),
    "texture.blp": ("BLP", "P", "BLP"),
}


def write_refused_format(folder: Path, name: str, photo: Image.Image) -> Path:
    fmt, mode, _ = REFUSED_FORMATS[name]
    path = folder / name
    photo.resize((64, 48)).convert(mode).save(path, fmt)
    return path


@pytest.mark.parametrize("name", sorted(REFUSED_FORMATS))
def test_real_image_in_a_refused_format_is_named(
    photos: dict[str, Image.Image], tmp_path: Path, name: str
) -> None:
    # GIVEN a real photo saved by Pillow in a format outside the allowlist
    path = write_refused_format(tmp_path, name, photos["coffee"])
    # WHEN decoded  THEN the error names the format in one line
    with pytest.raises(UnsupportedFormatError) as info:
        decode(path, LIMITS)
    assert str(info.value) == f"unsupported format: {REFUSED_FORMATS[name][2]}"
