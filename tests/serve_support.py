"""Shared by the HTTP API's tests: a folder collection embedded by the tiny stand-in model,
and the app built over it as ``dinoembed serve`` builds it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from numpy.typing import NDArray
from PIL import Image
from starlette.applications import Starlette

from dinoembed.cli.serve import build_app
from dinoembed.pipeline import build_pipeline, local_item
from dinoembed.results.schema import EmbeddingResult
from dinoembed.settings import Settings
from tests.helpers import encode

SUFFIX = ".dinov2.json"
NAMES = ("astronaut", "coffee", "chelsea", "rocket")


def make_collection(root: Path, photos: dict[str, Image.Image], settings: Settings) -> Path:
    """JPEGs of four photos plus ``twin/astronaut.jpg`` (the same bytes as ``astronaut.jpg``),
    each with its sidecar, embedded by the settings' model."""
    (root / "twin").mkdir(parents=True)
    images = [root / f"{name}.jpg" for name in NAMES]
    for name, path in zip(NAMES, images, strict=True):
        path.write_bytes(encode(photos[name], "JPEG", quality=90))
    twin = root / "twin" / "astronaut.jpg"
    twin.write_bytes(images[0].read_bytes())
    pipeline = build_pipeline(settings)
    for path in [*images, twin]:
        outcome = pipeline.embed_one(local_item(path))
        (path.parent / (path.name + SUFFIX)).write_bytes(outcome.result.to_bytes())
    return root


def sidecar_vectors(root: Path) -> dict[str, NDArray[np.float32]]:
    """Relative image path -> the unit vector its sidecar records (read independently)."""
    found = {}
    for sidecar in sorted(root.rglob("*" + SUFFIX)):
        doc = json.loads(sidecar.read_text())
        v = np.asarray(doc["embedding"]["embedding"], dtype=np.float64)
        key = sidecar.relative_to(root).as_posix().removesuffix(SUFFIX)
        found[key] = (v / np.linalg.norm(v)).astype(np.float32)
    return found


def app_over(settings: Settings, location: Path | str | None) -> Starlette:
    return build_app(settings, None if location is None else str(location))


def result_of(doc: dict[str, object]) -> EmbeddingResult:
    return EmbeddingResult.read_json(json.dumps(doc))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    url: str
    port: int
    process: subprocess.Popen[bytes]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


def start_server(
    folder: Path, settings: Settings, tmp: Path, token: str | None = None, *extra: str
) -> Server:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DINOEMBED_")}
    env["DINOEMBED_CACHE_DIR"] = str(tmp / "cache")
    if token:
        env["DINOEMBED_SERVE_TOKEN"] = token
    command = [sys.executable, "-m", "dinoembed.cli", "serve", str(folder), "--port", str(port)]
    command += ["--model", str(settings.model_path), *extra]
    log = (tmp / f"serve-{port}.log").open("wb")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", port, process)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError((tmp / f"serve-{port}.log").read_text())
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    server.stop()
    raise AssertionError("dinoembed serve did not answer within 120 s")
