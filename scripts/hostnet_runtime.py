"""An OCI runtime wrapper that runs every container in the host's network, on 127.0.0.1 only.

scripts/sam-local gives it to its private dockerd as the default runtime (through a small
shell shim that sets the variables below). For each ``runc create`` it edits the bundle's
``config.json``, then hands over to runc with the same arguments:

- the network namespace is removed, so the container shares the host's network (dockerd
  runs with ``--bridge=none``: a container of its own would have only loopback, which
  the SAM CLI cannot reach; SAM 1.170's ``--docker-network host`` does not change that);
- the ``net.*`` sysctls dockerd adds are removed (runc refuses them without a network
  namespace of the container's own);
- the Lambda Runtime Interface Emulator that the SAM CLI starts
  (``/var/rapid/aws-lambda-rie``) is told to listen on ``127.0.0.1:<the host port SAM
  published for 8080>``, read from dockerd's ``hostconfig.json`` of that container, and
  to serve its Runtime API on a free ``127.0.0.1`` port, instead of ``0.0.0.0:8080`` and
  ``127.0.0.1:9001``: nothing listens beyond loopback, and containers do not collide.

Environment: ``HOSTNET_RUNC`` (the real runc), ``HOSTNET_DATA_ROOT`` (dockerd's
``--data-root``), ``HOSTNET_LOG`` (optional: one line per edited container).
Standard library only: it runs under whatever Python the shim names.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

RIE = "/var/rapid/aws-lambda-rie"
RIE_PORT = "8080/tcp"  # the port SAM publishes (samcli Container.RAPID_PORT_CONTAINER)


def free_port() -> int:
    """A port nothing listens on now, on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def published_port(hostconfig: dict[str, Any]) -> int | None:
    """The host port dockerd was asked to publish the emulator's 8080 on, if any."""
    bindings = (hostconfig.get("PortBindings") or {}).get(RIE_PORT) or []
    for binding in bindings:
        if binding.get("HostPort"):
            return int(binding["HostPort"])
    return None


def host_network_spec(
    spec: dict[str, Any], rie_port: int | None, api_port: int | None
) -> dict[str, Any]:
    """``spec`` (an OCI config.json) for the host's network, the emulator on loopback."""
    spec = json.loads(json.dumps(spec))  # a deep copy
    linux = spec.setdefault("linux", {})
    linux["namespaces"] = [ns for ns in linux.get("namespaces", []) if ns.get("type") != "network"]
    sysctl = linux.get("sysctl") or {}
    linux["sysctl"] = {key: value for key, value in sysctl.items() if not key.startswith("net.")}
    args = spec.get("process", {}).get("args") or []
    if args and args[0] == RIE:
        if rie_port is None or api_port is None:
            raise ValueError("the emulator's container has no published port for 8080")
        spec["process"]["args"] = [
            RIE,
            "--runtime-interface-emulator-address",
            f"127.0.0.1:{rie_port}",
            "--runtime-api-address",
            f"127.0.0.1:{api_port}",
            *args[1:],
        ]
    return spec


def adapt_bundle(bundle: Path, container_id: str, data_root: Path) -> list[str]:
    """Rewrite ``bundle/config.json`` in place; the container's new command line."""
    config = bundle / "config.json"
    spec = json.loads(config.read_text())
    rie_port = api_port = None
    if (spec.get("process", {}).get("args") or [None])[0] == RIE:
        hostconfig = data_root / "containers" / container_id / "hostconfig.json"
        rie_port = published_port(json.loads(hostconfig.read_text()))
        api_port = free_port()
    adapted = host_network_spec(spec, rie_port, api_port)
    temp = config.with_name(config.name + ".hostnet")
    temp.write_text(json.dumps(adapted))
    temp.replace(config)
    return list(adapted.get("process", {}).get("args") or [])


def main(argv: list[str]) -> None:
    runc = os.environ["HOSTNET_RUNC"]
    if "create" in argv and "--bundle" in argv:
        bundle = Path(argv[argv.index("--bundle") + 1])
        container_id = argv[-1]  # runc create [options] <container-id>
        args = adapt_bundle(bundle, container_id, Path(os.environ["HOSTNET_DATA_ROOT"]))
        log = os.environ.get("HOSTNET_LOG")
        if log:
            with open(log, "a") as out:
                out.write(f"{container_id[:12]} host network: {' '.join(args)}\n")
    os.execv(runc, [runc, *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
