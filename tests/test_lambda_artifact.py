"""The deployment package works: build it as `sam build` does, then run the handler from it.

The handler runs in a clean Python 3.12 subprocess (the Lambda runtime's version) whose
only import path besides the standard library is the built artifact, against a moto
server on 127.0.0.1, with the tiny model bundled into the package as a user would bundle
theirs (DINOEMBED_BUNDLE_MODEL). The build downloads the Lambda platform's wheels from PyPI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import numpy as np
import pytest
from moto.server import ThreadedMotoServer
from PIL import Image

from tests.helpers import encode
from tests.test_lambda_support import BUCKET, REGION, SUFFIX, cli_embed, load_event, stamp
from tests.test_template import ROOT, sam_binary

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.slow

PYENV_VERSION = "3.12.1:3.11.7"
RUNNER = """
import json, sys
artifact, events = sys.argv[1], sys.argv[2:]
sys.path.insert(0, artifact)
import numpy, onnxruntime
import dinoembed.handler.app as app
from dinoembed.handler.app import lambda_handler

class Context:
    aws_request_id = "artifact-test"

origins = [m.__file__ for m in (app, numpy, onnxruntime)]
responses = [lambda_handler(json.load(open(e)), Context()) for e in events]
print(json.dumps({"origins": origins, "responses": responses,
                  "model_loads": app.runtime().model_loads}))
"""


def python312() -> str:
    """The Python of the Lambda runtime (3.12), from pyenv or PATH."""
    env = {**os.environ, "PYENV_VERSION": PYENV_VERSION}
    if shutil.which("pyenv"):
        found = subprocess.run(
            ["pyenv", "which", "python3.12"], env=env, capture_output=True, text=True, check=False
        )
        if found.returncode == 0:
            return found.stdout.strip()
    path = shutil.which("python3.12")
    assert path, "Python 3.12 is needed to run the Lambda artifact (pyenv install 3.12)"
    return path


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """`sam build` into a temp folder (the build script itself when the SAM CLI is absent)."""
    out = tmp_path_factory.mktemp("sam-build")
    env = {
        **os.environ,
        "PYENV_VERSION": PYENV_VERSION,
        "SAM_CLI_TELEMETRY": "0",
        "DINOEMBED_BUNDLE_MODEL": str(tiny_model),
    }
    sam = sam_binary()
    if sam is not None:
        command = [str(sam), "build", "--build-dir", str(out / "build")]
        function_dir = out / "build" / "EmbedFunction"
    else:
        function_dir = out / "EmbedFunction"
        command = ["bash", "infra/build_lambda.sh", str(function_dir)]
    proc = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return function_dir


@pytest.fixture
def moto_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def client_for(endpoint: str) -> S3Client:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def test_built_artifact_contains_the_package_and_nothing_else(artifact: Path) -> None:
    names = {p.name for p in artifact.iterdir()}
    assert {"dinoembed", "onnxruntime", "numpy", "PIL", "boto3"} <= names
    assert {
        "handler",
        "watcher",
        "tests",
        "benchmarks",
        ".venv",
        "template.yaml",
        "bin",
    }.isdisjoint(names)
    assert (artifact / "dinoembed" / "handler" / "app.py").is_file()
    assert not (artifact / "dinoembed" / "watcher").exists()  # the function never watches folders
    assert not list(artifact.rglob("watchdog"))
    assert (artifact / "model" / "tiny.onnx").is_file()
    so = list((artifact / "onnxruntime" / "capi").glob("onnxruntime_pybind11_state*.so"))
    assert [p.name for p in so] == ["onnxruntime_pybind11_state.cpython-312-x86_64-linux-gnu.so"]
    size = sum(p.stat().st_size for p in artifact.rglob("*") if p.is_file())
    assert size < 250 * 1024 * 1024  # Lambda's limit for an unzipped package


def test_handler_runs_from_the_artifact_against_a_moto_server(
    artifact: Path,
    moto_server: str,
    tmp_path: Path,
    tiny_model: Path,
    photos: dict[str, Image.Image],
) -> None:
    # GIVEN a bucket on the moto server holding two photos
    s3 = client_for(moto_server)
    s3.create_bucket(Bucket=BUCKET)
    data = encode(photos["coffee"], "JPEG")
    s3.put_object(Bucket=BUCKET, Key="photos/red flower.jpg", Body=data)
    s3.put_object(Bucket=BUCKET, Key="photos/cat.jpg", Body=encode(photos["astronaut"], "JPEG"))
    events = []
    for name in ("s3_put.json", "sqs_batch.json"):
        path = tmp_path / name
        path.write_text(json.dumps(stamp(load_event(name), s3)))
        events.append(str(path))
    # WHEN a clean Python 3.12 runs the handler from the artifact (as Lambda would)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_LAMBDA_FUNCTION_NAME": "dinoembed-artifact-test",
        "DINOEMBED_MODEL_PATH": str(artifact / "model" / "tiny.onnx"),
        "DINOEMBED_CACHE_DIR": str(tmp_path / "cache"),
    }
    proc = subprocess.run(
        [python312(), "-I", "-S", "-c", RUNNER, str(artifact), *events],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    # THEN everything was imported from the artifact, and the model loaded once
    assert all(origin.startswith(str(artifact)) for origin in report["origins"])
    assert report["model_loads"] == 1
    # AND both events were handled as the SPEC says
    direct, batch = report["responses"]
    assert direct == {"kind": "s3", "embedded": 1, "errors": 0, "skipped": 0, "deleted": 0}
    assert batch == {
        "batchItemFailures": [{"itemIdentifier": "a8f3c1d2-0b9e-4f6a-9c7d-3e2b1a0f9e8d"}]
    }
    # AND the sidecar on the server matches what `dinoembed embed` computes locally
    body = s3.get_object(Bucket=BUCKET, Key="photos/red flower.jpg" + SUFFIX)["Body"].read()
    sidecar = json.loads(body)
    local = tmp_path / "red flower.jpg"
    local.write_bytes(data)
    reference = cli_embed(local, tiny_model)
    assert reference.embedding is not None
    assert sidecar["file_path"] == f"s3://{BUCKET}/photos/red flower.jpg"
    assert sidecar["model"]["sha256"] == reference.model.sha256
    np.testing.assert_allclose(
        sidecar["embedding"]["embedding"], reference.embedding.embedding, atol=1e-5
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert sorted(k for k in keys if k.endswith(SUFFIX)) == [
        "photos/cat.jpg" + SUFFIX,
        "photos/red flower.jpg" + SUFFIX,
    ]
