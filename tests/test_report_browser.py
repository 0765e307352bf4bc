"""`dinoembed report`: the page as a real browser (headless Chromium) renders it.

Sidecars carry vectors chosen by the test, so the groups are known: astronaut
(512x512) and chelsea (451x300) are declared near-duplicates (the keep is astronaut,
most pixels), coffee is alone, and one image is missing from disk. The screenshot
must show each inlined thumbnail's own pixels, the keep colour around the keep's
thumbnail and not around the other member's.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from dinoembed.cli import main
from dinoembed.results.sidecars import write_sidecar
from tests.helpers import encode
from tests.test_use_support import SUFFIX, result

KEEP_RGB = (0x00, 0xC8, 0x53)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _collection(root: Path, photos: dict[str, Image.Image]) -> dict[str, str]:
    root.mkdir()
    vectors = {
        "astronaut.jpg": [1.0, 0.0, 0.0],
        "chelsea.jpg": [0.99, 0.141, 0.0],
        "coffee.jpg": [0.0, 0.0, 1.0],
        "gone.jpg": [0.0, 1.0, 0.0],
    }
    paths = {}
    for name, vector in vectors.items():
        image = root / name
        if name != "gone.jpg":
            image.write_bytes(encode(photos[name.removesuffix(".jpg")], "JPEG", quality=90))
        write_sidecar(result(str(image), vector), root / (name + SUFFIX))
        paths[name] = str(image)
    return paths


def _screenshot(page: Path, out: Path, tmp: Path) -> NDArray[np.uint8]:
    assert CHROMIUM is not None
    profile = tmp / "profile"
    profile.mkdir()
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--user-data-dir={profile}",
            f"--screenshot={out}",
            "--window-size=1280,2000",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return np.asarray(Image.open(out).convert("RGB"))


def _find(shot: NDArray[np.uint8], thumb: NDArray[np.uint8]) -> tuple[int, int] | None:
    """Top-left corner of the first (topmost) place where ``thumb`` is drawn 1:1."""
    h, w, _ = thumb.shape
    cy, cx = h // 2, w // 2
    near = np.abs(shot.astype(np.int16) - thumb[cy, cx].astype(np.int16)).max(axis=2) <= 3
    for y, x in zip(*np.nonzero(near), strict=True):
        top, left = int(y) - cy, int(x) - cx
        if top < 0 or left < 0 or top + h > shot.shape[0] or left + w > shot.shape[1]:
            continue
        patch = shot[top : top + h, left : left + w].astype(np.int16)
        if np.abs(patch - thumb.astype(np.int16)).mean() < 4:
            return top, left
    return None


def _keep_pixels(shot: NDArray[np.uint8], top: int, left: int, h: int, w: int) -> int:
    """Pixels of the keep colour in a 10-px band around a thumbnail."""
    band = shot[max(top - 10, 0) : top + h + 10, max(left - 10, 0) : left + w + 10]
    close = np.abs(band.astype(np.int16) - np.array(KEEP_RGB)).max(axis=2) <= 8
    return int(close.sum())


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (scripts/test installs it)")
def test_report_renders_thumbnails_and_highlights_the_keep(
    tmp_path: Path,
    photos: dict[str, Image.Image],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a collection with one similar pair, a lone image and a missing image
    monkeypatch.setenv("DINOEMBED_CACHE_DIR", str(tmp_path / "cache"))
    paths = _collection(tmp_path / "photos", photos)
    page = tmp_path / "report.html"
    # WHEN writing the report and rendering it in Chromium
    code = main(["report", str(tmp_path / "photos"), "--out", str(page), "--k", "2"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["groups"] == 1 and summary["placeholders"] >= 1
    text = page.read_text()
    shot = _screenshot(page, tmp_path / "shot.png", tmp_path)
    # THEN the page is self-contained ...
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"""(src|href)=["'](?!data:)""", text)
    # ... the missing image is a placeholder tile, not a crash ...
    assert "image gone" in text
    # ... and every inlined thumbnail is drawn with its own pixels
    uris = re.findall(r'<img src="data:image/jpeg;base64,([^"]+)" alt="([^"]+)"', text)
    thumbs = {
        alt: np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB"))
        for b, alt in uris
    }
    assert set(thumbs) == {"astronaut.jpg", "chelsea.jpg", "coffee.jpg"}
    found = {name: _find(shot, t) for name, t in thumbs.items()}
    assert all(found.values()), found
    # the keep (astronaut: most pixels) is framed in the keep colour; chelsea is not
    keep_top, keep_left = found["astronaut.jpg"]  # type: ignore[misc]
    other_top, other_left = found["chelsea.jpg"]  # type: ignore[misc]
    kh, kw, _ = thumbs["astronaut.jpg"].shape
    oh, ow, _ = thumbs["chelsea.jpg"].shape
    assert _keep_pixels(shot, keep_top, keep_left, kh, kw) > 2 * (kh + kw) * 4
    assert _keep_pixels(shot, other_top, other_left, oh, ow) == 0
    assert "keep: most pixels (512x512)" in text
    assert paths["astronaut.jpg"] in text


def test_report_escapes_untrusted_paths(
    tmp_path: Path,
    photos: dict[str, Image.Image],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN images whose names contain HTML
    monkeypatch.setenv("DINOEMBED_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "p"
    root.mkdir()
    for i, name in enumerate(['<img src=x onerror="alert(1)">.jpg', "a&b.jpg"]):
        (root / name).write_bytes(encode(photos["coffee"], "JPEG"))
        vector = [1.0, 0.01 * i, 0.0]
        write_sidecar(result(str(root / name), vector), root / (name + SUFFIX))
    page = tmp_path / "r.html"
    # WHEN writing the report
    assert main(["report", str(root), "--out", str(page), "--k", "1"]) == 0
    capsys.readouterr()
    text = page.read_text()
    # THEN the names appear only escaped
    assert "<img src=x" not in text and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text
    assert "a&amp;b.jpg" in text and "a&b.jpg" not in text
