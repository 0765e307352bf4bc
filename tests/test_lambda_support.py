"""Helpers shared by the Lambda tests (this module holds no tests of its own).

- event fixtures from ``infra/events`` (the files ``sam local invoke -e`` takes), with
  ``stamp`` filling in the real size and ETag of the objects a test uploaded, as
  S3 does in a real notification;
- ``mocked_s3``: moto's in-process S3 with the example bucket;
- ``cold_lambda``: a fresh execution environment for ``dinoembed.handler.app`` (state,
  environment, and the logging configuration Powertools installs, all restored
  afterwards so other tests see the loggers as they were).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from dinoembed.handler import app
from dinoembed.results.schema import EmbeddingResult

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

EVENTS_DIR = Path(__file__).parent.parent / "infra" / "events"
BUCKET = "dinoembed-example-bucket"
REGION = "us-east-1"
SUFFIX = ".dinov2.json"


def load_event(name: str) -> dict[str, Any]:
    return dict(json.loads((EVENTS_DIR / name).read_text()))


def stamp(event: dict[str, Any], client: S3Client) -> dict[str, Any]:
    """A copy of ``event`` whose object records carry the uploaded objects' size and ETag."""

    def fix(bucket: str, obj: dict[str, Any], etag_field: str) -> None:
        try:
            head = client.head_object(Bucket=bucket, Key=unquote_plus(obj["key"]))
        except ClientError:
            return  # a missing object keeps the fixture's values
        obj["size"] = head["ContentLength"]
        obj[etag_field] = head["ETag"].strip('"')

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for child in node:
                walk(child)
        if not isinstance(node, dict):
            return
        if isinstance(node.get("s3"), dict) and "object" in node["s3"]:
            fix(node["s3"]["bucket"]["name"], node["s3"]["object"], "eTag")
        if node.get("source") == "aws.s3" and isinstance(node.get("detail"), dict):
            fix(node["detail"]["bucket"]["name"], node["detail"]["object"], "etag")
        for name, value in node.items():
            if name in ("body", "Message") and isinstance(value, str):
                with contextlib.suppress(ValueError):
                    inner = json.loads(value)
                    walk(inner)
                    node[name] = json.dumps(inner)
            else:
                walk(value)

    stamped = copy.deepcopy(event)
    walk(stamped)
    return stamped


def aws_test_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials, one region, no real endpoints, no botocore retries."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")


@contextlib.contextmanager
def mocked_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Client]:
    aws_test_env(monkeypatch)
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket=BUCKET)
        yield client


@contextlib.contextmanager
def preserved_logging() -> Iterator[None]:
    """Undo what ``aws_lambda_powertools.Logger`` does to the ``dinoembed`` logger and root."""
    logger = logging.getLogger("dinoembed")
    saved = (list(logger.handlers), logger.level, logger.propagate, list(logger.filters))
    attrs = {a: getattr(logger, a) for a in ("init", "powertools_handler") if hasattr(logger, a)}
    root_filters = {h: list(h.filters) for h in logging.root.handlers}
    try:
        yield
    finally:
        logger.handlers[:], logger.level, logger.propagate, logger.filters[:] = saved
        for attr in ("init", "powertools_handler", "powertools_buffer_config"):
            if attr in attrs:
                setattr(logger, attr, attrs[attr])
            elif hasattr(logger, attr):
                delattr(logger, attr)
        for handler in logging.root.handlers:
            handler.filters[:] = root_filters.get(handler, handler.filters)


@contextlib.contextmanager
def cold_lambda(
    monkeypatch: pytest.MonkeyPatch, cache_dir: Path, **settings: str
) -> Iterator[None]:
    """A fresh execution environment configured by ``DINOEMBED_*`` variables."""
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "dinoembed-test")
    monkeypatch.setenv("DINOEMBED_CACHE_DIR", str(cache_dir))
    for name, value in settings.items():
        monkeypatch.setenv(f"DINOEMBED_{name.upper()}", value)
    app.reset()
    with preserved_logging():
        try:
            yield
        finally:
            app.reset()


def read_sidecar(client: S3Client, key: str) -> EmbeddingResult:
    body = client.get_object(Bucket=BUCKET, Key=key + SUFFIX)["Body"].read()
    return EmbeddingResult.model_validate_json(body)


def sidecar_keys(client: S3Client) -> list[str]:
    listing = client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return sorted(obj["Key"] for obj in listing if obj["Key"].endswith(SUFFIX))


def cli_embed(path: Path, model: Path) -> EmbeddingResult:
    """What ``dinoembed embed`` prints for one file (run as a user runs it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DINOEMBED_", "AWS_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "dinoembed.cli", "embed", str(path), "--model", str(model)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return EmbeddingResult.model_validate_json(proc.stdout.splitlines()[0])
