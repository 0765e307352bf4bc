"""The page at ``GET /`` in a real browser (headless Chromium, driven by Playwright) against
a real ``dinoembed serve`` process with a token: a person chooses an image, and the most
similar images of the collection appear as thumbnails with their scores, and its duplicates.

The screenshot is checked for each result's thumbnail, pixel for pixel, as the report's
browser test does.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from dinoembed.settings import Settings
from tests.serve_support import make_collection, start_server
from tests.test_report_browser import _find

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TOKEN = "page-token"


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (scripts/test installs it)")
def test_the_page_shows_similar_images_and_duplicates_of_an_uploaded_image(
    tmp_path: Path, photos: dict[str, Image.Image], tiny_settings: Settings
) -> None:
    from playwright.sync_api import sync_playwright

    # GIVEN a server (with a token) over a collection holding astronaut.jpg twice
    folder = make_collection(tmp_path / "photos", photos, tiny_settings)
    server = start_server(folder, tiny_settings, tmp_path, TOKEN)
    auth = {"authorization": f"Bearer {TOKEN}"}
    try:
        # WHEN a person opens the page (token in the fragment) and chooses astronaut.jpg
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"{server.url}/#token={TOKEN}")
            page.set_input_files("#file", str(folder / "astronaut.jpg"))
            page.wait_for_function(
                "document.querySelectorAll('#results .tile img[src^=\"blob:\"]').length === 5"
                " && document.querySelectorAll('#duplicates .tile img[src^=\"blob:\"]').length"
                " === 2",
                timeout=60_000,
            )
            page.wait_for_function(
                "[...document.querySelectorAll('.tile img')].every(i => i.complete)"
            )
            shot_path = tmp_path / "page.png"
            page.screenshot(path=str(shot_path), full_page=True)
            results = page.locator("#results .tile .key").all_inner_texts()
            scores = page.locator("#results .tile .score").all_inner_texts()
            dupes = page.locator("#duplicates .tile .key").all_inner_texts()
            browser.close()
        # ... and the same search asked directly
        expected = httpx.post(
            f"{server.url}/search?top_k=12",
            content=(folder / "astronaut.jpg").read_bytes(),
            headers={**auth, "content-type": "image/jpeg"},
        ).json()["results"]
        thumbs = {
            r["key"]: np.asarray(
                Image.open(
                    io.BytesIO(
                        httpx.get(
                            f"{server.url}/thumb", params={"key": r["key"]}, headers=auth
                        ).content
                    )
                ).convert("RGB")
            )
            for r in expected
        }
    finally:
        assert server.stop() == 0
    # THEN the page lists the API's results in its order, with its scores ...
    assert results == [r["key"] for r in expected]
    assert scores == [f"{r['score']:.4f}" for r in expected]
    # ... the duplicates are the image itself and its twin (cosine 1)
    assert sorted(dupes) == ["astronaut.jpg", "twin/astronaut.jpg"]
    # ... and every result's thumbnail is drawn on the screen with its own pixels
    shot = np.asarray(Image.open(shot_path).convert("RGB"))
    missing = [key for key, thumb in thumbs.items() if _find(shot, thumb) is None]
    assert not missing, missing
