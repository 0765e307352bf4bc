"""The parts of scripts/sam-local that run without root or Docker.

The whole run (a private dockerd, the stand-in base image, `sam local invoke` and
`start-lambda`) is a step of scripts/test after pytest, as root; these check the two
rules it relies on: the OCI runtime wrapper's edit of a container's config.json, and the
check that nothing started listens beyond loopback.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPTS = Path(__file__).parent.parent / "scripts"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


hostnet = load("hostnet_runtime")
sam_local = load("sam_local")

RIE = "/var/rapid/aws-lambda-rie"


def oci_spec(args: list[str]) -> dict[str, Any]:
    """The parts of a config.json dockerd writes for a container on its default network."""
    return {
        "process": {"args": args, "cwd": "/var/task"},
        "linux": {
            "namespaces": [
                {"type": "pid"},
                {"type": "network"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
            ],
            "sysctl": {"net.ipv4.ip_unprivileged_port_start": "0", "kernel.shmmax": "1"},
        },
    }


def test_every_container_joins_the_host_network_without_net_sysctls() -> None:
    # GIVEN a container that is not the emulator (a `docker build` RUN step)
    spec = oci_spec(["/bin/sh", "-c", "mv a b"])
    # WHEN the wrapper adapts it
    adapted = hostnet.host_network_spec(spec, None, None)
    # THEN it has no network namespace of its own and no net.* sysctl; nothing else changed
    assert [ns["type"] for ns in adapted["linux"]["namespaces"]] == ["pid", "ipc", "uts", "mount"]
    assert adapted["linux"]["sysctl"] == {"kernel.shmmax": "1"}
    assert adapted["process"] == spec["process"]
    assert {"type": "network"} in spec["linux"]["namespaces"]  # the input is left alone


def test_the_emulator_listens_on_loopback_at_the_published_port() -> None:
    # GIVEN the emulator's container as the SAM CLI creates it
    spec = oci_spec([RIE, "--log-level", "error"])
    # WHEN the wrapper adapts it with the port SAM published and a free Runtime API port
    adapted = hostnet.host_network_spec(spec, 40123, 40124)
    # THEN the emulator and its Runtime API listen on 127.0.0.1 there, SAM's flags kept
    assert adapted["process"]["args"] == [
        RIE,
        "--runtime-interface-emulator-address",
        "127.0.0.1:40123",
        "--runtime-api-address",
        "127.0.0.1:40124",
        "--log-level",
        "error",
    ]


def test_an_emulator_without_a_published_port_is_refused() -> None:
    with pytest.raises(ValueError, match="no published port"):
        hostnet.host_network_spec(oci_spec([RIE]), None, None)


def test_the_published_port_is_read_from_dockerds_hostconfig(tmp_path: Path) -> None:
    # GIVEN dockerd's files for a container SAM created with 8080 published on 127.0.0.1
    container = tmp_path / "containers" / "abc123"
    container.mkdir(parents=True)
    hostconfig = {"PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "40999"}]}}
    (container / "hostconfig.json").write_text(json.dumps(hostconfig))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(oci_spec([RIE, "--log-level", "error"])))
    # WHEN the bundle is adapted in place
    args = hostnet.adapt_bundle(bundle, "abc123", tmp_path)
    # THEN the emulator's address is that port, and the file on disk says so
    assert args[1:3] == ["--runtime-interface-emulator-address", "127.0.0.1:40999"]
    assert json.loads((bundle / "config.json").read_text())["process"]["args"] == args
    assert [p.name for p in bundle.iterdir()] == ["config.json"]


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:80", True),
        ("127.0.0.53:53", True),
        ("::1:8080", True),
        ("::ffff:127.0.0.1:9000", True),
        ("0.0.0.0:8080", False),
        (":::8080", False),
        ("10.0.0.5:22", False),
    ],
)
def test_loopback_addresses(address: str, loopback: bool) -> None:
    assert sam_local._is_loopback(address) is loopback


def test_a_listening_socket_is_found_with_its_address() -> None:
    # GIVEN a socket listening on a free loopback port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        # WHEN the listening sockets are read from /proc
        found = sam_local._listening_inodes()
    # THEN it is there, decoded
    assert f"127.0.0.1:{port}" in found.values()
