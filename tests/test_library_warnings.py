"""Library warnings go through logging, off stderr at the default verbosity (SPEC §9)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.test_cli import results, run_cli
from tests.test_imaging import _corrupt_exif_jpeg

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")


@pytest.fixture
def corrupt_exif(tmp_path: Path, photos: dict[str, Image.Image]) -> Path:
    path = tmp_path / "corrupt-exif.jpg"
    path.write_bytes(_corrupt_exif_jpeg(photos["coffee"]))
    # the file really makes Pillow warn (else the tests below would prove nothing)
    with pytest.warns(UserWarning, match="Corrupt EXIF data"), Image.open(path) as img:
        img.getexif().get_ifd(0x8769)
    return path


def test_pillow_warning_stays_off_stderr_by_default(corrupt_exif: Path, tiny_model: Path) -> None:
    # WHEN an image whose EXIF makes Pillow warn is embedded at the default verbosity
    proc = run_cli("embed", str(corrupt_exif), "--model", str(tiny_model))
    # THEN it succeeds and stderr holds only dinoembed's own log lines (the stand-in notice)
    assert proc.returncode == 0, proc.stderr
    assert [r.status for r in results(proc.stdout)] == ["success"]
    assert "Corrupt EXIF" not in proc.stderr and "UserWarning" not in proc.stderr
    assert all(LOG_LINE.match(line) for line in proc.stderr.splitlines()), proc.stderr


def test_pillow_warning_is_one_info_log_line_with_verbose(
    corrupt_exif: Path, tiny_model: Path
) -> None:
    proc = run_cli("-v", "embed", str(corrupt_exif), "--model", str(tiny_model))
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "Corrupt EXIF data" in line]
    assert len(lines) == 1 and " INFO py.warnings: " in lines[0]
    assert lines[0].split(" INFO py.warnings: ")[1].count("UserWarning: Corrupt EXIF data") == 1
    assert all(LOG_LINE.match(line) for line in proc.stderr.splitlines()), proc.stderr


@pytest.mark.parametrize("level", ["WARNING", "INFO"])
def test_lambda_entry_point_routes_warnings_into_logging(level: str) -> None:
    # GIVEN the Lambda runtime's root logger at a level, and the execution environment made
    code = (
        "import logging, warnings\n"
        f"logging.basicConfig(level=logging.{level}, format='%(levelname)s %(name)s: %(message)s')"
        "\n"
        "import handler.app as app\n"
        "app.runtime()\n"
        "warnings.warn('Corrupt EXIF data', UserWarning)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DINOEMBED_")}
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    # WHEN a library warns
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    # THEN it is an INFO log record: invisible at WARNING, one log line at INFO
    if level == "WARNING":
        assert proc.stderr == ""
    else:
        assert proc.stderr.startswith("INFO py.warnings: ") and proc.stderr.count("\n") == 1
        assert "UserWarning: Corrupt EXIF data" in proc.stderr
