"""The C allocator keeps each image's large buffers for the next one (glibc only)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinoembed.common import allocator
from tests.helpers import python_stdout

# The pipeline (through the Python API, which leaves the allocator alone) over the images
# once, then again while counting the minor page faults it takes.
FAULTS = """
import resource, sys
from pathlib import Path
if sys.argv[1] == "tuned":
    from dinoembed.common.allocator import keep_freed_buffers
    assert keep_freed_buffers()
import dinoembed
files = sorted(Path(sys.argv[3]).iterdir())
embedder = dinoembed.Embedder(model_path=sys.argv[2], streams=2)
assert all(r.status == "success" for r in embedder.embed(files))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
assert all(r.status == "success" for r in embedder.embed(files))
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str, model: Path, folder: Path) -> int:
    return int(python_stdout(FAULTS, mode, str(model), str(folder)))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_each_image_reuses_the_last_one_s_buffers(tiny_model: Path, tmp_path: Path) -> None:
    # GIVEN a dozen ~1 MP photos-like images, as people drop them (PNG, JPEG, WebP)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:960, 0:1080]
    for n in range(12):
        pixels = np.stack([x * (n + 1) % 256, y % 256, (x + y) // 8 % 256], -1)
        noisy = (pixels + rng.integers(0, 24, pixels.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(tmp_path / f"img{n}.{('png', 'jpg', 'webp')[n % 3]}")
    # WHEN the pipeline embeds them a second time, with and without the allocator tuned
    default = faults("default", tiny_model, tmp_path)
    tuned = faults("tuned", tiny_model, tmp_path)
    # THEN glibc's default faults their buffers' pages in again for every image (~8 MB
    # each), the tuned allocator hands back the pages it already has
    assert default > 12 * 1000
    assert tuned < default / 4


def test_without_mallopt_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a C library without mallopt (macOS, or ctypes unable to load it)
    class NoMallopt:
        def __init__(self, name: object) -> None:
            raise OSError("no C library here")

    monkeypatch.setattr(allocator.ctypes, "CDLL", NoMallopt)
    # THEN the call says so and raises nothing
    assert allocator.keep_freed_buffers() is False


def test_the_command_line_and_the_lambda_tune_their_own_process(
    monkeypatch: pytest.MonkeyPatch, tiny_model: Path, tmp_path: Path
) -> None:
    from dinoembed.cli.commands import main
    from dinoembed.handler import app, preload
    from tests.test_lambda_support import cold_lambda

    calls: list[str] = []

    def recorder(who: str) -> Callable[[], bool]:
        def keep_freed_buffers() -> bool:
            calls.append(who)
            return True

        return keep_freed_buffers

    monkeypatch.setattr(allocator, "keep_freed_buffers", recorder("cli"))
    monkeypatch.setattr(preload, "keep_freed_buffers", recorder("lambda"))
    image = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), "orange").save(image)
    # WHEN `dinoembed embed` builds its pipeline, and the Lambda handler starts and builds its
    assert main(["embed", "--model", str(tiny_model), str(image)]) == 0
    with cold_lambda(monkeypatch, tmp_path / "cache", model_path=str(tiny_model)):
        preload.start_preload()  # what importing the handler module does, first of all
        app.runtime().embedder()
    # THEN each tuned the allocator once; the Python API (a library) never does
    import dinoembed

    dinoembed.Embedder(model_path=str(tiny_model)).embed([image])
    assert calls == ["cli", "lambda"]
