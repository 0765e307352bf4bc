"""Both front ends follow the one currency rule (dinoembed.results.sidecars.judge).

- a change of ``DINOEMBED_NORMALIZE`` re-embeds (the Lambda used to ignore it);
- a current sidecar carrying a field this version does not know is left alone
  (as the next version will write some), not overwritten on every replay;
- a sidecar written by a newer schema version is never overwritten.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from PIL import Image

from dinoembed.pipeline import build_pipeline
from dinoembed.results.schema import SCHEMA_VERSION
from dinoembed.results.sidecars import read_sidecar, sidecar_path
from dinoembed.settings import Settings
from tests.helpers import encode
from tests.test_lambda_support import BUCKET, SUFFIX, cold_lambda, load_event, mocked_s3, stamp
from tests.test_watch_support import run_once

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

KEY = "photos/red flower.jpg"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Client]:
    with mocked_s3(monkeypatch) as client:
        yield client


def lambda_once(
    monkeypatch: pytest.MonkeyPatch, s3: S3Client, cache: Path, model: Path, **env: str
) -> dict[str, Any]:
    from dinoembed.handler import app

    with cold_lambda(monkeypatch, cache, model_path=str(model), **env):
        return app.lambda_handler(stamp(load_event("s3_put.json"), s3), None)


def sidecar_doc(s3: S3Client) -> dict[str, Any]:
    return dict(json.loads(s3.get_object(Bucket=BUCKET, Key=KEY + SUFFIX)["Body"].read()))


def rewrite_sidecar(s3: S3Client, change: Callable[[dict[str, Any]], None]) -> bytes:
    doc = sidecar_doc(s3)
    change(doc)
    body = json.dumps(doc).encode()
    s3.put_object(Bucket=BUCKET, Key=KEY + SUFFIX, Body=body)
    return body


def _add_unknown_fields(doc: dict[str, Any]) -> None:
    doc["tags"] = ["from a later version"]
    doc["source"]["exif_make"] = "Apple"


def _newer_schema(doc: dict[str, Any]) -> None:
    doc["schema_version"] = SCHEMA_VERSION + 1
    doc["model"]["sha256"] = "e" * 64  # would be stale if it were ours to judge


# --- Lambda ------------------------------------------------------------------------------


def test_lambda_reembeds_when_normalisation_changes(
    monkeypatch: pytest.MonkeyPatch, s3: S3Client, tiny_model: Path, tmp_path: Path
) -> None:
    # GIVEN an object embedded with normalised vectors
    s3.put_object(Bucket=BUCKET, Key=KEY, Body=encode(Image.new("RGB", (64, 48), "red"), "JPEG"))
    lambda_once(monkeypatch, s3, tmp_path / "c", tiny_model)
    assert sidecar_doc(s3)["embedding"]["normalized"] is True
    # WHEN the function is redeployed with DINOEMBED_NORMALIZE=false and the event replays
    response = lambda_once(monkeypatch, s3, tmp_path / "c", tiny_model, normalize="false")
    # THEN the object is embedded again, raw
    assert response["embedded"] == 1
    assert sidecar_doc(s3)["embedding"]["normalized"] is False


@pytest.mark.parametrize("change", [_add_unknown_fields, _newer_schema], ids=["unknown", "newer"])
def test_lambda_leaves_a_current_or_newer_sidecar_alone(
    monkeypatch: pytest.MonkeyPatch,
    s3: S3Client,
    tiny_model: Path,
    tmp_path: Path,
    change: Callable[[dict[str, Any]], None],
) -> None:
    s3.put_object(Bucket=BUCKET, Key=KEY, Body=encode(Image.new("RGB", (64, 48), "red"), "JPEG"))
    lambda_once(monkeypatch, s3, tmp_path / "c", tiny_model)
    # GIVEN the sidecar as a later dinoembed would have written it
    body = rewrite_sidecar(s3, change)
    # WHEN the event is delivered again
    response = lambda_once(monkeypatch, s3, tmp_path / "c", tiny_model)
    # THEN it is skipped and the sidecar keeps every byte
    assert response["skipped"] == 1 and response["embedded"] == 0
    assert s3.get_object(Bucket=BUCKET, Key=KEY + SUFFIX)["Body"].read() == body


# --- watcher -----------------------------------------------------------------------------


def watch_once(root: Path, model: Path, **settings: Any) -> None:
    config = Settings(model_path=model, cache_dir=root.parent / "cache", **settings)
    run_once(config, root, build_pipeline(config))


def _photo(root: Path) -> Path:
    path = root / "cat.jpg"
    path.write_bytes(encode(Image.new("RGB", (64, 48), "blue"), "JPEG"))
    return path


def test_watcher_reembeds_when_normalisation_changes(tmp_path: Path, tiny_model: Path) -> None:
    (tmp_path / "in").mkdir()
    image = _photo(tmp_path / "in")
    watch_once(tmp_path / "in", tiny_model)
    first = read_sidecar(sidecar_path(image, SUFFIX))
    assert first is not None and first.embedding is not None and first.embedding.normalized
    watch_once(tmp_path / "in", tiny_model, normalize=False)
    second = read_sidecar(sidecar_path(image, SUFFIX))
    assert second is not None and second.embedding is not None
    assert second.embedding.normalized is False


@pytest.mark.parametrize("change", [_add_unknown_fields, _newer_schema], ids=["unknown", "newer"])
def test_watcher_leaves_a_current_or_newer_sidecar_alone(
    tmp_path: Path, tiny_model: Path, change: Callable[[dict[str, Any]], None]
) -> None:
    (tmp_path / "in").mkdir()
    image = _photo(tmp_path / "in")
    watch_once(tmp_path / "in", tiny_model)
    sidecar = sidecar_path(image, SUFFIX)
    doc = json.loads(sidecar.read_bytes())
    change(doc)
    sidecar.write_text(json.dumps(doc))
    before = sidecar.read_bytes(), sidecar.stat().st_mtime_ns
    watch_once(tmp_path / "in", tiny_model)
    assert (sidecar.read_bytes(), sidecar.stat().st_mtime_ns) == before
