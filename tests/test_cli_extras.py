"""A missing optional dependency ends in one line naming the extra to install.

The CLI runs in a subprocess whose import system refuses the extra's modules, as
after ``pip install dinoembed`` without it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REFUSE = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Refuse())
from dinoembed.cli import main
sys.argv = ["dinoembed", *sys.argv[2:]]
sys.exit(main())
"""

AWS = "boto3,botocore,aws_lambda_powertools"

CASES = [
    ("watchdog", ["watch", "--once", "{dir}"], "watch"),
    ("watchdog", ["backfill", "{dir}"], "watch"),
    (AWS, ["backfill", "s3://bucket/photos/"], "lambda"),
    (AWS, ["dupes", "s3://bucket/photos/"], "lambda"),
    (AWS, ["export", "s3://bucket/", "--format", "npy", "--out", "{dir}/v.npy"], "lambda"),
    (AWS, ["model", "fetch"], "lambda"),  # DINOEMBED_MODEL_URL=s3://… below
    (AWS, ["embed", "{dir}/a.jpg"], "lambda"),
    ("onnx", ["model", "standin", "{dir}/s.onnx", "--tiny"], "standin"),
    ("pyarrow", ["export", "{dir}", "--format", "parquet", "--out", "{dir}/v.parquet"], "export"),
]


@pytest.mark.parametrize(("blocked", "args", "extra"), CASES, ids=lambda v: str(v)[:40])
def test_a_missing_extra_names_the_pip_install(
    blocked: str, args: list[str], extra: str, tmp_path: Path, tiny_model: Path
) -> None:
    # GIVEN an install without the extra's modules, a folder with one image and its sidecar
    (tmp_path / "a.jpg").write_bytes(b"not needed: the extra is missing first")
    if extra == "export":
        from dinoembed.cli.commands import main
        from tests.conftest import sample_photos
        from tests.test_watch_support import save_photo

        save_photo(sample_photos()["coffee"], tmp_path / "a.jpg")
        assert main(["embed", str(tmp_path), "--write-sidecars", "--model", str(tiny_model)]) == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("DINOEMBED_")}
    env["DINOEMBED_MODEL_URL"] = "s3://models/dinov2.onnx"
    if extra == "watch":
        env["DINOEMBED_MODEL_PATH"] = str(tiny_model)
    argv = [a.format(dir=tmp_path) for a in args]
    # WHEN the command runs
    done = subprocess.run(
        [sys.executable, "-c", REFUSE, blocked, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # THEN one error line naming the extra, exit 2, no traceback
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, done.stderr
    errors = [x for x in done.stderr.splitlines() if x.startswith("dinoembed: error: ")]
    assert len(errors) == 1, done.stderr
    assert f"pip install 'dinoembed[{extra}]'" in errors[0]
