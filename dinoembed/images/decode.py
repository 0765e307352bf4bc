"""Decoding untrusted image bytes into an RGB PIL image, with limits checked first.

Every failure becomes an :class:`~dinoembed.errors.ImageError` subclass whose
message is one line a person can act on. Anything else escaping from here is a
bug.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from dinoembed.errors import (
    CorruptImageError,
    ImageTooLargeError,
    NotAnImageError,
    UnsupportedFormatError,
)
from dinoembed.images.libtiff import route_libtiff_messages
from dinoembed.images.transforms import min_decode_size

log = logging.getLogger(__name__)

# MPO (multi-picture JPEG) is opened by the JPEG plugin, which returns an MpoImageFile.
BASE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_heif_lock = threading.Lock()
_heif_state: list[bool] = []

# Magic numbers of formats people drop into folders that are not raster images
# (or that Pillow must not be allowed to hand to an external interpreter).
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "PDF"),
    (b"%!PS", "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"SIMPLE  =", "FITS"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"PK\x03\x04", "ZIP"),
)


# Pillow plugins asked to *name* a file outside the allowlist (never to decode it):
# each only parses a header when opened, and none runs an external program (EPS,
# which Pillow hands to Ghostscript, and WMF are left out; PDF/EPS/PSD/SVG are named
# by their signatures above before this runs). Formats recognised by a magic number
# come first; TGA, which has none, comes last so it cannot claim another format's file.
_PROBE_FORMATS = (
    "ICO",
    "CUR",
    "PPM",
    "PCX",
    "DCX",
    "SGI",
    "QOI",
    "DDS",
    "ICNS",
    "BLP",
    "FLI",
    "FTEX",
    "GBR",
    "IM",
    "MSP",
    "SUN",
    "XBM",
    "XPM",
    "TGA",
)
# Pillow's one "PPM" plugin reads the whole Netpbm family; its magic says which it is.
_NETPBM = {b"P1": "PBM", b"P4": "PBM", b"P2": "PGM", b"P5": "PGM", b"P7": "PAM", b"Pf": "PFM"}


def _heif_available() -> bool:
    """Register pillow-heif's opener once, if it is installed."""
    with _heif_lock:
        if not _heif_state:
            try:
                import pillow_heif  # type: ignore[import-not-found, unused-ignore]

                pillow_heif.register_heif_opener()
                _heif_state.append(True)
            except ImportError:
                _heif_state.append(False)
        return _heif_state[0]


def allowed_formats(head: bytes | None = None) -> tuple[str, ...]:
    """The formats Pillow may open. Given the file's first bytes, HEIF is offered only to
    an ISO base media file (an ``ftyp`` box first, as every HEIC/HEIF file starts):
    registering pillow-heif loads libheif (~8 ms), which no other file needs, so a cold
    start on a JPEG does not pay for it."""
    formats: tuple[str, ...] = BASE_FORMATS
    if features.check("avif"):
        formats += ("AVIF",)
    if (head is None or head[4:8] == b"ftyp") and _heif_available():
        formats += ("HEIF",)
    return formats


def sniff_format(head: bytes) -> str | None:
    """Name a non-allowed format from its first bytes, for a better error message."""
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            return name
    text = head[:512].lstrip().lower()
    if (text.startswith(b"<?xml") and b"<svg" in text) or text.startswith(b"<svg"):
        return "SVG"
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypmsf1", b"ftypheif"):
        return "HEIC/HEIF (install dinoembed[heif])"
    return None


def probe_format(data: bytes) -> str | None:
    """Name a real image in a format outside the allowlist from its header, without
    decoding it (``Image.open`` is lazy), with the safe plugins of ``_PROBE_FORMATS``.

    It reads a stream of its own: some plugins close the stream they were given when
    the image is closed (FTEX does), which must not end the caller's."""
    try:
        with Image.open(io.BytesIO(data), formats=_PROBE_FORMATS) as img:
            name = img.format
    except Exception:  # whatever a plugin raises, the file is not identified
        return None
    if name == "PPM":
        return _NETPBM.get(data[:2], "PPM")
    return name


# EXIF orientations that swap width and height (rotations by 90 or 270 degrees).
_TRANSPOSED = frozenset({5, 6, 7, 8})
_ORIENTATION = 0x0112


def header_size(fh: BinaryIO) -> tuple[int, int] | None:
    """Width and height after EXIF orientation, from the header only (no decoding, the
    allowlisted formats only); None if unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fh, formats=allowed_formats()) as img:
                width, height = img.size
                try:
                    orientation = img.getexif().get(_ORIENTATION)
                except Exception:  # broken EXIF: the pixels are still fine
                    orientation = None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as err:
        log.info("cannot read the image header: %s", err)
        return None
    except (SyntaxError, EOFError, IndexError, TypeError) as err:
        log.info("corrupt image header: %s", err)
        return None
    return (height, width) if orientation in _TRANSPOSED else (width, height)


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    max_pixels: int
    max_bytes: int


@dataclass(frozen=True, slots=True)
class DecodeTarget:
    """What the image will be preprocessed for: lets large JPEGs decode at reduced scale."""

    mode: str
    input_size: int
    reduce: bool = True


def check_byte_size(size: int, limits: DecodeLimits) -> None:
    if size > limits.max_bytes:
        raise ImageTooLargeError(f"file too large: {size} bytes exceeds {limits.max_bytes} bytes")
    if size == 0:
        raise NotAnImageError("not an image: the file is empty")


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded image and what is known of the original: its size after EXIF
    orientation (before any reduced-scale decoding) and the sha256 of its bytes."""

    image: Image.Image
    width: int
    height: int
    sha256: str | None


Source = bytes | Path | Image.Image


def decode_image(
    source: Source, limits: DecodeLimits, target: DecodeTarget | None = None
) -> Decoded:
    """Untrusted bytes, a file or a PIL image -> a loaded RGB image, oriented per EXIF,
    first frame; the bytes of a file are read once, for both hashing and decoding."""
    if isinstance(source, Image.Image):
        return _from_pil(source, limits)
    if isinstance(source, Path):
        check_byte_size(source.stat().st_size, limits)
        source = source.read_bytes()
    check_byte_size(len(source), limits)
    digest = hashlib.sha256(source).hexdigest()
    image, (width, height) = _decode_stream(io.BytesIO(source), limits, target)
    return Decoded(image, width, height, digest)


def decode(source: Source, limits: DecodeLimits, target: DecodeTarget | None = None) -> Image.Image:
    """:func:`decode_image`, the image only."""
    return decode_image(source, limits, target).image


def _from_pil(img: Image.Image, limits: DecodeLimits) -> Decoded:
    """An image already in memory (the Python API): limits, first frame, orientation, RGB."""
    width, height = img.size
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(
            f"image too large: {width}x{height} exceeds {limits.max_pixels} pixels"
        )
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    oriented = to_rgb(_orient(img))
    return Decoded(oriented, oriented.width, oriented.height, None)


def _decode_stream(
    fh: BinaryIO, limits: DecodeLimits, target: DecodeTarget | None
) -> tuple[Image.Image, tuple[int, int]]:
    route_libtiff_messages()  # once: libtiff's C messages become log records
    head = fh.read(512)
    fh.seek(0)
    img = _open(fh, head, limits)
    full = img.size
    if target is not None and target.reduce and img.format in ("JPEG", "MPO"):
        img.draft(None, min_decode_size(img.width, img.height, target.mode, target.input_size))
    _load(img, limits)
    loaded = img.size
    oriented = _orient(img)
    if oriented.size != loaded:  # rotated by 90 degrees: the original's sides swap too
        full = (full[1], full[0])
    return to_rgb(oriented), full


def _open(fh: BinaryIO, head: bytes, limits: DecodeLimits) -> Image.Image:
    try:
        img = Image.open(fh, formats=allowed_formats(head))
    except UnidentifiedImageError as err:
        name = sniff_format(head) or probe_format(_all_bytes(fh))
        if name is not None:
            raise UnsupportedFormatError(f"unsupported format: {name}") from err
        raise NotAnImageError("not an image: the data is not a recognised image format") from err
    except Image.DecompressionBombError as err:
        raise _bomb_error(err, limits, fh) from err
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as err:
        raise CorruptImageError(f"corrupt image header: {_one_line(err)}") from err
    except Exception as err:  # a plugin's own failure (struct.error, KeyError, ...): the data's
        raise CorruptImageError(f"corrupt image header: {_described(err)}") from err
    width, height = img.size
    if width * height > limits.max_pixels:
        img.close()
        raise ImageTooLargeError(
            f"image too large: {width}x{height} exceeds {limits.max_pixels} pixels"
        )
    if width < 1 or height < 1:
        img.close()
        raise CorruptImageError(f"empty image: {width}x{height}")
    return img


def _bomb_error(
    err: Image.DecompressionBombError, limits: DecodeLimits, fh: BinaryIO | None = None
) -> ImageTooLargeError:
    """Pillow refuses > 2x its MAX_IMAGE_PIXELS inside ``Image.open``, before we see the size;
    the header is then read again without that check, so the message has the one form
    ``image too large: WxH exceeds N pixels`` whoever refused the image."""
    pillow_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)  # Pillow's own, when it is the lower
    limit = min(limits.max_pixels, pillow_limit) if pillow_limit else limits.max_pixels
    size = _header_size_unchecked(fh) if fh is not None else None
    if size is not None:
        return ImageTooLargeError(f"image too large: {size[0]}x{size[1]} exceeds {limit} pixels")
    found = re.search(r"\((\d+) pixels\)", str(err))
    pixels = f"{found.group(1)} pixels" if found else "the pixel count"
    return ImageTooLargeError(f"image too large: {pixels} exceeds {limit} pixels")


def _header_size_unchecked(fh: BinaryIO) -> tuple[int, int] | None:
    """The size in the header, read by the allowlisted plugins themselves: ``Image.open``
    would raise the bomb error again. Parsing a header decodes no pixels."""
    fh.seek(0)
    prefix = fh.read(16)
    for name in allowed_formats():
        factory, accept = Image.OPEN.get(name, (None, None))
        if factory is None or (accept is not None and not accept(prefix)):
            continue
        fh.seek(0)
        try:
            img = factory(fh, "")
        except Exception:  # not this format after all: try the next
            continue
        width, height = img.size
        return width, height
    return None


def _load(img: Image.Image, limits: DecodeLimits) -> None:
    try:
        img.load()
    except Image.DecompressionBombError as err:
        raise _bomb_error(err, limits) from err
    except OSError as err:
        message = str(err)
        if "truncated" in message or "premature end" in message.lower():
            raise CorruptImageError(f"truncated {img.format} image") from err
        raise CorruptImageError(f"corrupt {img.format} image: {_one_line(err)}") from err
    except (SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError) as err:
        raise CorruptImageError(f"corrupt {img.format} image: {_one_line(err)}") from err
    except Exception as err:  # a decoder's own failure (struct.error, KeyError, ...): the data's
        raise CorruptImageError(f"corrupt {img.format} image: {_described(err)}") from err


def _orient(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; broken EXIF is ignored (the pixels are still fine)."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception as err:
        log.warning("ignoring unreadable EXIF orientation: %s", _one_line(err))
        return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode -> RGB. Transparency is composited onto white; 16-bit is scaled, not clipped."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        gray = np.clip(arr * (255.0 / peak), 0, 255).round().astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "F":
        gray = np.clip(np.asarray(img, dtype=np.float64), 0, 255).round().astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _all_bytes(fh: BinaryIO) -> bytes:
    """The whole of the (in-memory) stream being decoded."""
    if isinstance(fh, io.BytesIO):
        return fh.getvalue()
    fh.seek(0)
    return fh.read()


def _described(err: BaseException) -> str:
    """An unexpected exception of a Pillow plugin, in one line that names its kind."""
    text = _one_line(err)
    kind = type(err).__name__
    return text if text == kind else f"{kind}: {text}"[:200]


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:200]
