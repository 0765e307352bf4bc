"""The deployment package works: build it as `sam build` does, then run the handler from it.

The handler runs in a clean Python 3.12 subprocess (the Lambda runtime's version) whose
only import path besides the standard library is the built artifact (and, for the
bundled build, a runtime-like boto3 *after* it, as Lambda's python3.12 runtime puts its
own), against a moto server on 127.0.0.1. Two packages are built (each ~20 s; the build
downloads the Lambda platform's wheels from PyPI):

- the bundled package: ``DINOEMBED_BUNDLE_MODEL`` with the full-size ViT-S/14 stand-in
  (87 MB, the real model's size class), found at run time with no setting and no network;
- the plain package: the model fetched from ``s3://`` into the /tmp cache.

An arm64 package is built too and checked for aarch64 binaries; it cannot run here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import numpy as np
import pytest
from moto.server import ThreadedMotoServer
from PIL import Image

from dinoembed.model.standin import build_vit
from tests.helpers import encode
from tests.test_lambda_support import BUCKET, REGION, SUFFIX, cli_embed, load_event, stamp
from tests.test_template import ROOT, sam_binary

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.slow

PYENV_VERSION = "3.12.1:3.11.7"
LAMBDA_LIMIT = 250 * 1024 * 1024  # Lambda's limit for an unzipped zip package
RUNNER = """
import json, sys
artifact, runtime, events = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path.insert(0, artifact)
if runtime:
    sys.path.append(runtime)  # Lambda's own boto3 comes after the package
import boto3, numpy, onnxruntime, PIL.features
import dinoembed.handler.app as app
from dinoembed.handler.app import lambda_handler

class Context:
    aws_request_id = "artifact-test"

origins = {m.__name__: m.__file__ for m in (app, numpy, onnxruntime, boto3)}
responses = [lambda_handler(json.load(open(e)), Context()) for e in events]
print(json.dumps({"origins": origins, "responses": responses, "avif": PIL.features.check("avif"),
                  "model_loads": app.runtime().model_loads}))
"""
# What the python3.12 runtime provides beside the interpreter (its /var/runtime).
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six.py", "urllib3")
# The formats a photo bucket holds, with the spelling users give them (SPEC section 7).
FORMATS = {
    "IMG_0001.HEIC": "HEIF",
    "scan.avif": "AVIF",
    "page.TIFF": "TIFF",
    "anim.gif": "GIF",
    "old.bmp": "BMP",
    "web.webp": "WEBP",
    "holiday.Jpg": "JPEG",
}


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


def build(
    out: Path, env: dict[str, str] | None = None, *, sam: bool = False
) -> subprocess.CompletedProcess[str]:
    """`sam build` into ``out`` (or the build script itself), with extra environment."""
    extra = env or {}
    full_env = {**os.environ, "PYENV_VERSION": PYENV_VERSION, "SAM_CLI_TELEMETRY": "0", **extra}
    binary = sam_binary()
    if sam and binary is not None:
        command = [str(binary), "build", "--build-dir", str(out / "build")]
    else:
        command = ["bash", "infra/build_lambda.sh", str(out / "build" / "EmbedFunction")]
    return subprocess.run(
        command, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=900, check=False
    )


def built(out: Path, env: dict[str, str] | None = None, *, sam: bool = False) -> Path:
    proc = build(out, env, sam=sam)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out / "build" / "EmbedFunction"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def package_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.fixture(scope="module")
def full_standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ViT-S/14 stand-in (87 MB), under the pinned model's file name."""
    return build_vit(tmp_path_factory.mktemp("full") / "dinov2_vits14.onnx")


@pytest.fixture(scope="module")
def bundled_artifact(tmp_path_factory: pytest.TempPathFactory, full_standin: Path) -> Path:
    out = tmp_path_factory.mktemp("sam-build-bundled")
    env = {
        "DINOEMBED_BUNDLE_MODEL": str(full_standin),
        "DINOEMBED_BUNDLE_SHA256": sha256(full_standin),
    }
    return built(out, env, sam=True)


@pytest.fixture(scope="module")
def plain_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built(tmp_path_factory.mktemp("build-plain"))


@pytest.fixture(scope="module")
def lambda_runtime(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in for /var/runtime: boto3 and its pure-Python dependencies."""
    import boto3 as dev_boto3

    site = Path(dev_boto3.__file__).parent.parent
    runtime = tmp_path_factory.mktemp("var-runtime")
    for name in RUNTIME_PACKAGES:
        source = site / name
        if source.is_dir():
            shutil.copytree(source, runtime / name)
        else:
            shutil.copy2(source, runtime / name)
    return runtime


@pytest.fixture
def moto_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        # moto's state lives in this process, shared by every server: start empty
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"))
        yield endpoint
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


def run_handler(
    artifact: Path,
    runtime: Path | None,
    events: list[Path],
    endpoint: str,
    home: Path,
    **settings: str,
) -> dict[str, Any]:
    """The handler from ``artifact`` in a clean Python 3.12, as Lambda would run it.

    HTTP(S) goes to a dead proxy: any attempt to download a model fails loudly.
    """
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_LAMBDA_FUNCTION_NAME": "dinoembed-artifact-test",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1",
        "DINOEMBED_CACHE_DIR": str(home / "cache"),
        **{f"DINOEMBED_{k.upper()}": v for k, v in settings.items()},
    }
    proc = subprocess.run(
        [
            python312(),
            "-I",
            "-S",
            "-c",
            RUNNER,
            str(artifact),
            str(runtime or ""),
            *map(str, events),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    report["log"] = proc.stdout
    return report


def elf_machine(path: Path) -> int:
    """e_machine of an ELF file (62 = x86-64, 183 = AArch64), read from its header."""
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", path
    endian = "<" if header[5] == 1 else ">"
    return int(struct.unpack(endian + "H", header[18:20])[0])


# -- what the packages contain ------------------------------------------------------------


def test_bundled_package_fits_lambda_with_the_87_mb_model(
    bundled_artifact: Path, full_standin: Path
) -> None:
    names = {p.name for p in bundled_artifact.iterdir()}
    assert {"dinoembed", "onnxruntime", "numpy", "PIL", "pillow_heif", "model"} <= names
    # boto3 & co. are the runtime's: leaving them out is what makes the model fit
    assert {"boto3", "botocore", "s3transfer", "jmespath"}.isdisjoint(names)
    # but S3 Vectors' model files come along (AWS_DATA_PATH), for a runtime that predates it
    assert list((bundled_artifact / "aws-data" / "s3vectors").glob("*/service-2.json*"))
    assert {
        "handler",
        "watcher",
        "tests",
        "benchmarks",
        ".venv",
        "template.yaml",
        "bin",
    }.isdisjoint(names)
    assert not (bundled_artifact / "dinoembed" / "watcher").exists()
    model = bundled_artifact / "model" / "dinov2_vits14.onnx"
    assert model.stat().st_size == full_standin.stat().st_size > 80 * 1024 * 1024
    manifest = json.loads((bundled_artifact / "model" / "bundle.json").read_text())
    assert manifest == {
        "file": "dinov2_vits14.onnx",
        "sha256": sha256(full_standin),
        "size": full_standin.stat().st_size,
    }
    so = list((bundled_artifact / "onnxruntime" / "capi").glob("onnxruntime_pybind11_state*.so"))
    assert [p.name for p in so] == ["onnxruntime_pybind11_state.cpython-312-x86_64-linux-gnu.so"]
    # bytecode for the runtime's Python 3.12, compiled at build time: /var/task is read-only,
    # so without it every cold start compiles what it imports again; hash-based and
    # unchecked (PEP 552 flags 0b01), so no source mtime has to survive the zip
    for module in ("dinoembed/handler/__pycache__/app", "numpy/__pycache__/__init__"):
        pyc = (bundled_artifact / f"{module}.cpython-312.pyc").read_bytes()
        assert int.from_bytes(pyc[4:8], "little") == 0b01, module
    size = package_size(bundled_artifact)
    print(f"bundled package: {size / 2**20:.1f} MiB unzipped")
    assert size < LAMBDA_LIMIT


def test_plain_package_keeps_its_own_boto3(plain_artifact: Path) -> None:
    names = {p.name for p in plain_artifact.iterdir()}
    assert {"dinoembed", "onnxruntime", "boto3", "botocore", "pillow_heif"} <= names
    assert "model" not in names
    assert not names & {"starlette", "mangum", "uvicorn"}  # the HTTP app has its own package
    print(f"plain package: {package_size(plain_artifact) / 2**20:.1f} MiB unzipped")


@pytest.mark.parametrize(
    ("name", "sha", "message"),
    [
        ("dinov2_vits14.onnx", None, "expected 4df36ef0"),  # the pinned name: pinned digest
        ("custom.onnx", "0" * 64, "expected " + "0" * 64),
    ],
)
def test_a_bundled_model_with_the_wrong_sha256_stops_the_build(
    tmp_path: Path, tiny_model: Path, name: str, sha: str | None, message: str
) -> None:
    model = tmp_path / name
    shutil.copy(tiny_model, model)
    env = {"DINOEMBED_BUNDLE_MODEL": str(model)}
    if sha is not None:
        env["DINOEMBED_BUNDLE_SHA256"] = sha
    proc = build(tmp_path, env)
    assert proc.returncode == 1
    assert f"has sha256 {sha256(model)}, {message}" in proc.stderr
    assert not (tmp_path / "build").exists()  # refused before anything was built


def test_arm64_package_has_only_aarch64_binaries(tmp_path: Path) -> None:
    # Built, not run: this machine is x86-64 with no aarch64 emulation.
    artifact = built(tmp_path, {"LAMBDA_ARCH": "arm64"})
    libraries = [p for p in artifact.rglob("*.so*") if p.is_file() and ".so" in p.name]
    assert len(libraries) > 20
    machines = {p.relative_to(artifact).as_posix(): elf_machine(p) for p in libraries}
    assert set(machines.values()) == {183}, {k: v for k, v in machines.items() if v != 183}
    assert list((artifact / "onnxruntime" / "capi").glob("*cpython-312-aarch64-linux-gnu.so"))


def test_x86_package_has_only_x86_64_binaries(plain_artifact: Path) -> None:
    libraries = [p for p in plain_artifact.rglob("*.so*") if p.is_file() and ".so" in p.name]
    assert {elf_machine(p) for p in libraries} == {62}


# -- running them ------------------------------------------------------------------------


def test_bundled_package_embeds_every_photo_format_with_no_model_setting(
    bundled_artifact: Path,
    lambda_runtime: Path,
    moto_server: str,
    tmp_path: Path,
    full_standin: Path,
    photos: dict[str, Image.Image],
) -> None:
    # GIVEN a bucket with one photo in each format, spelled as cameras and users spell them
    import pillow_heif

    pillow_heif.register_heif_opener()
    s3 = client_for(moto_server)
    s3.create_bucket(Bucket=BUCKET)
    data = {}
    pictures = list(photos.values())
    for i, (name, fmt) in enumerate(FORMATS.items()):
        data[name] = encode(pictures[i % len(pictures)], fmt)
        s3.put_object(Bucket=BUCKET, Key=f"photos/{name}", Body=data[name])
    template = load_event("eventbridge_object_created.json")
    batch = load_event("sqs_batch.json")
    records = []
    for i, name in enumerate(FORMATS):
        event = json.loads(json.dumps(template))
        event["detail"]["object"]["key"] = f"photos/{name}"
        records.append({**batch["Records"][0], "messageId": f"m{i}", "body": json.dumps(event)})
    batch["Records"] = records
    event_path = tmp_path / "formats.json"
    event_path.write_text(json.dumps(stamp(batch, s3)))
    # WHEN the bundled package handles the SQS batch, with no DINOEMBED_MODEL_* at all
    report = run_handler(bundled_artifact, lambda_runtime, [event_path], moto_server, tmp_path)
    # THEN everything came from the package, boto3 from the runtime after it
    origins = report["origins"]
    assert all(
        origins[m].startswith(str(bundled_artifact))
        for m in ("dinoembed.handler.app", "numpy", "onnxruntime")
    )
    assert origins["boto3"].startswith(str(lambda_runtime))
    assert report["avif"] is True
    # AND the bundled model was used (no download: HTTP goes to a dead proxy), once
    assert report["responses"] == [{"batchItemFailures": []}]
    assert report["model_loads"] == 1
    assert "from bundled" in report["log"]
    # AND every photo got a success sidecar made by the bundled model
    for name in FORMATS:
        body = s3.get_object(Bucket=BUCKET, Key=f"photos/{name}{SUFFIX}")["Body"].read()
        sidecar = json.loads(body)
        assert sidecar["status"] == "success", (name, sidecar["error"])
        assert sidecar["model"]["sha256"] == sha256(full_standin)
        assert sidecar["embedding"]["embedding_dim"] == 384
    # AND the HEIC and the .Jpg embed as `dinoembed embed` embeds them locally
    for name in ("IMG_0001.HEIC", "holiday.Jpg"):
        local = tmp_path / name
        local.write_bytes(data[name])
        reference = cli_embed(local, full_standin)
        body = s3.get_object(Bucket=BUCKET, Key=f"photos/{name}{SUFFIX}")["Body"].read()
        assert reference.embedding is not None
        np.testing.assert_allclose(
            json.loads(body)["embedding"]["embedding"], reference.embedding.embedding, atol=1e-5
        )


def test_plain_package_fetches_the_model_from_s3_into_tmp(
    plain_artifact: Path,
    moto_server: str,
    tmp_path: Path,
    tiny_model: Path,
    photos: dict[str, Image.Image],
) -> None:
    # GIVEN a bucket holding two photos, and the model in a models bucket
    s3 = client_for(moto_server)
    s3.create_bucket(Bucket=BUCKET)
    s3.create_bucket(Bucket="models")
    s3.put_object(Bucket="models", Key="tiny.onnx", Body=tiny_model.read_bytes())
    data = encode(photos["coffee"], "JPEG")
    s3.put_object(Bucket=BUCKET, Key="photos/red flower.jpg", Body=data)
    s3.put_object(Bucket=BUCKET, Key="photos/cat.jpg", Body=encode(photos["astronaut"], "JPEG"))
    events = []
    for name in ("s3_put.json", "sqs_batch.json"):
        path = tmp_path / name
        path.write_text(json.dumps(stamp(load_event(name), s3)))
        events.append(path)
    # WHEN the plain package runs with the model URL pointing at s3://
    report = run_handler(
        plain_artifact,
        None,
        events,
        moto_server,
        tmp_path,
        model_url="s3://models/tiny.onnx",
        model_sha256=sha256(tiny_model),
    )
    # THEN everything, boto3 included, was imported from the package; the model loaded once
    assert all(origin.startswith(str(plain_artifact)) for origin in report["origins"].values())
    assert report["model_loads"] == 1
    assert (tmp_path / "cache" / "models" / f"{sha256(tiny_model)}.onnx").is_file()
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


def test_the_http_package_adds_the_web_app_to_the_same_core(tmp_path: Path) -> None:
    # GIVEN the Function URL function's build (infra/Makefile build-SearchFunction)
    package = built(tmp_path, {"DINOEMBED_EXTRAS": "lambda-http"})
    names = {p.name for p in package.iterdir()}
    # THEN it holds the core, the AWS adapter, the HTTP app and its Lambda adapter
    assert {"dinoembed", "onnxruntime", "boto3", "starlette", "mangum", "multipart"} <= names
    assert (package / "dinoembed" / "handler" / "http.py").is_file()
    assert (package / "dinoembed" / "web" / "static" / "page.js").is_file()
