"""Pillow's own test images (``Tests/images`` of its source distribution on PyPI) through
``dinoembed embed``: one result line per file, no internal error, no traceback, and
nothing but log records on stderr (no raw C-library line). Issue 20.

The source distribution is fetched once with pip (``pip download --no-binary :all:``,
about 47 MB; pip prepares its metadata, which takes minutes the first time) and its
images are kept in ``$XDG_CACHE_HOME/dinoembed-tests`` (default ``~/.cache``), outside
the checkout, so later runs and fresh clones on the same machine reuse them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import PIL
import pytest

# Read at import, before the autouse fixture points XDG_CACHE_HOME at a temporary folder.
PILLOW_VERSION = PIL.__version__
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dinoembed-tests"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")


def _pillow_test_images() -> Path:
    """``Tests/images`` of the installed Pillow's sdist, downloaded on first use."""
    images = CACHE / f"pillow-{PILLOW_VERSION}-Tests-images"
    if images.is_dir():
        return images
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        spec = f"pillow=={PILLOW_VERSION}"
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:"]
        done = subprocess.run(
            [*pip, "--no-deps", spec, "-d", tmp],
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
        sdists = list(Path(tmp).glob("pillow-*.tar.gz"))
        if not sdists:
            if "Could not" in done.stderr and "connection" in done.stderr.lower():
                pytest.skip(f"PyPI is unreachable: cannot download {spec}")
            pytest.fail(f"pip download {spec} failed:\n{done.stderr}")
        prefix = f"pillow-{PILLOW_VERSION}/Tests/images/"
        with tarfile.open(sdists[0]) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            tar.extractall(tmp, members=members, filter="data")
        # renamed into place last: an interrupted download leaves no half corpus behind
        os.replace(Path(tmp) / prefix, images)
    return images


@pytest.fixture(scope="module")
def pillow_images() -> Path:
    return _pillow_test_images()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_pillow_test_images_give_one_clean_result_each(
    pillow_images: Path, tiny_model: Path, tmp_path: Path
) -> None:
    # GIVEN every file of Pillow's test images (a copy: sidecars never land in the cache)
    corpus = tmp_path / "images"
    shutil.copytree(pillow_images, corpus, symlinks=True)
    files = sorted(p for p in corpus.rglob("*") if p.is_file() and not p.is_symlink())
    assert len(files) > 1000
    # WHEN they are all embedded as `find -print0 | dinoembed embed -0 -` would
    env = {k: v for k, v in os.environ.items() if not k.startswith("DINOEMBED_")}
    done = subprocess.run(
        [sys.executable, "-m", "dinoembed.cli", "embed", "-0", "-", "--model", str(tiny_model)],
        input=b"".join(os.fsencode(p) + b"\0" for p in files),
        env=env,
        capture_output=True,
        timeout=1500,
        check=False,
    )
    err = done.stderr.decode(errors="replace")
    # THEN one result line per file, in order; none an internal error
    out = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert done.returncode == 1, err  # some of Pillow's files are broken on purpose
    assert [r["file_path"] for r in out] == [str(p) for p in files]
    internal = [(r["file_path"], r["error"]) for r in out if "internal" in (r["error"] or "")]
    assert internal == []
    assert all(r["error"] and "\n" not in r["error"] for r in out if r["status"] == "error")
    # AND stderr holds log records only: no traceback, no raw libtiff line
    assert "Traceback" not in err
    raw = [line for line in err.splitlines() if not LOG_LINE.match(line)]
    assert raw == []
