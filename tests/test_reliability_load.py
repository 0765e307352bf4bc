"""Load: many small images dropped into a watched folder, and big Lambda batches.

``DINOEMBED_LOAD_IMAGES`` sets how many images the watcher gets (1,000 in the normal run,
10,000 in ``scripts/reliability``). Nothing here measures speed: the checks are that no
image is missed, that the daemon's peak RSS stays bounded, and that a batch costs a
bounded number of engine runs and S3 requests (which is what keeps an invocation within
its timeout).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from dinoembed.handler import app
from dinoembed.results.sidecars import read_sidecar
from tests.helpers import encode
from tests.reliability_plugin import tried
from tests.test_lambda_support import BUCKET, SUFFIX, cold_lambda, mocked_s3
from tests.test_reliability_s3 import direct_event, sqs_event
from tests.test_watch_support import sidecar_of, stray_files

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.reliability("load")

RSS_LIMIT_BYTES = 1 << 30  # a correctness bound (a leak per image would cross it), not a target


# Read at import: the autouse fixture in conftest.py clears DINOEMBED_* for every test.
LOAD_IMAGES = int(os.environ.get("DINOEMBED_LOAD_IMAGES", "1000"))
NOTES = os.environ.get("DINOEMBED_RELIABILITY_NOTES")


def note(line: str) -> None:
    """Measured figures go to DINOEMBED_RELIABILITY_NOTES (set by scripts/reliability)."""
    if NOTES:
        with open(NOTES, "a") as out:
            out.write(line + "\n")


def small_pngs(count: int, seed: int = 0) -> list[bytes]:
    """``count`` distinct 24x24 noise PNGs."""
    rng = np.random.default_rng(seed)
    return [
        encode(Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)), "PNG")
        for _ in range(count)
    ]


def peak_rss(pid: int) -> int:
    """VmHWM of a live process: its peak resident set size, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def count_sidecars(folder: Path) -> int:
    return sum(1 for e in os.scandir(folder) if e.name.endswith(SUFFIX))


@pytest.fixture
def daemon(tmp_path: Path, tiny_model: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    folder = tmp_path / "in"
    folder.mkdir()
    cmd = [sys.executable, "-m", "dinoembed.cli", "watch", str(folder), "--model", str(tiny_model)]
    with (tmp_path / "stderr.txt").open("wb") as err:
        proc = subprocess.Popen([*cmd, "--settle-seconds", "0.2"], stderr=err)
    try:
        yield proc, folder
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_thousands_of_images_dropped_into_a_watched_folder_none_missed(
    daemon: tuple[subprocess.Popen[bytes], Path], tmp_path: Path
) -> None:
    # GIVEN a running daemon (ready once its first image has a sidecar)
    proc, folder = daemon
    (folder / "first.png").write_bytes(small_pngs(1, seed=99)[0])
    deadline = time.monotonic() + 120
    while not sidecar_of(folder / "first.png").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None
    # WHEN N small images land in it at once: half written in place, half moved in
    n = LOAD_IMAGES
    staging = tmp_path / "staging"
    staging.mkdir()
    started = time.monotonic()
    for i, data in enumerate(small_pngs(n)):
        name = f"{i:05d}.png"
        if i % 2:
            (staging / name).write_bytes(data)
            (staging / name).rename(folder / name)
        else:
            (folder / name).write_bytes(data)
    # THEN every one of them gets a sidecar (overflowing inotify queues are rescanned)
    deadline = time.monotonic() + 120 + 0.1 * n
    while count_sidecars(folder) < n + 1 and time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-2000:]
        time.sleep(0.5)
    seconds = time.monotonic() - started
    rss = peak_rss(proc.pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    images = sorted(p for p in folder.iterdir() if p.suffix == ".png")
    assert len(images) == n + 1
    missing = [p.name for p in images if not sidecar_of(p).exists()]
    assert missing == []
    bad = [p.name for p in images if (r := read_sidecar(sidecar_of(p))) is None or not r.ok]
    assert bad == []
    assert stray_files(folder) == []
    # AND the daemon's peak RSS stayed bounded
    assert rss < RSS_LIMIT_BYTES, f"peak RSS {rss / 2**20:.0f} MiB"
    note(f"watcher load: {n} images, none missed, peak RSS {rss / 2**20:.0f} MiB, {seconds:.0f} s")
    tried(n)


# --- Lambda batches -----------------------------------------------------------------------


class CountingSession:
    """The real ONNX Runtime session, counting runs and the images in each."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any]) -> list[Any]:
        with self.lock:
            self.batches.append(len(next(iter(input_feed.values()))))
        return list(self.inner.run(output_names, input_feed))

    def get_inputs(self) -> Any:
        return self.inner.get_inputs()

    def get_outputs(self) -> Any:
        return self.inner.get_outputs()


def s3_requests(client: Any) -> Counter[tuple[str, str]]:
    """(operation, "image" | "sidecar") for every call the client makes."""
    counts: Counter[tuple[str, str]] = Counter()

    def hook(model: Any, params: dict[str, Any], **_: Any) -> None:
        kind = "sidecar" if unquote(params["url_path"]).endswith(SUFFIX) else "image"
        counts[(model.name, kind)] += 1

    client.meta.events.register("before-call.s3", hook)
    return counts


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Client]:
    with mocked_s3(monkeypatch) as client:
        yield client


def upload_photos(s3: S3Client, photos: dict[str, Image.Image], n: int) -> list[str]:
    """``n`` distinct 80x60 crops of the real photos."""
    rng = np.random.default_rng(3)
    names = sorted(photos)
    keys = []
    for i in range(n):
        photo = photos[names[i % len(names)]]
        x, y = int(rng.integers(0, photo.width - 80)), int(rng.integers(0, photo.height - 60))
        key = f"load/{i:04d}.jpg"
        s3.put_object(
            Bucket=BUCKET, Key=key, Body=encode(photo.crop((x, y, x + 80, y + 60)), "JPEG")
        )
        keys.append(key)
    return keys


@pytest.mark.parametrize(("shape", "n"), [("sqs", 100), ("direct", 250)])
def test_big_batches_cost_one_engine_run_per_batch_and_three_requests_per_image(
    monkeypatch: pytest.MonkeyPatch,
    s3: S3Client,
    photos: dict[str, Image.Image],
    tiny_dynamic_model: Path,  # batching applies to the dynamic-batch variant only
    tmp_path: Path,
    shape: str,
    n: int,
) -> None:
    # GIVEN n images announced in one invocation (an SQS batch, or one S3 event)
    keys = upload_photos(s3, photos, n)
    event = sqs_event(s3, keys) if shape == "sqs" else direct_event(s3, keys)
    with cold_lambda(monkeypatch, tmp_path / "cache", model_path=str(tiny_dynamic_model)):
        rt = app.runtime()
        session = CountingSession(rt.embedder().engine.session)
        rt.embedder().engine.session = session
        requests = s3_requests(rt.s3_client)
        batch_size = rt.settings.batch_size
        # WHEN the function runs
        response = app.lambda_handler(event, None)
        loads = rt.model_loads
    # THEN every image is embedded
    if shape == "sqs":
        assert response == {"batchItemFailures": []}
    else:
        assert response["embedded"] == n
    assert (
        len([o for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"] if o["Key"].endswith(SUFFIX)])
        == n
    )
    # AND the work is batched: ceil(n / batch size) engine runs of full batches, one model load
    assert loads == 1
    assert len(session.batches) == math.ceil(n / batch_size)
    assert sum(session.batches) == n and max(session.batches) == batch_size
    # AND S3 sees exactly one image read, one sidecar check and one sidecar write per image
    assert requests == Counter(
        {("GetObject", "image"): n, ("GetObject", "sidecar"): n, ("PutObject", "sidecar"): n}
    )
    note(
        f"lambda load ({shape}): {n} records, {len(session.batches)} engine runs, "
        f"{sum(requests.values())} S3 requests"
    )
    tried(n)
