"""``dinoembed backfill s3://… --manifest OUT.csv``: an S3 Batch Operations manifest of the
images without a current sidecar (moto and SeaweedFS)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from urllib.parse import unquote, unquote_plus

import pytest

from dinoembed.cli import main
from dinoembed.results.schema import Embedding, EmbeddingResult, ModelInfo, SourceInfo
from tests.s3_backends import S3Endpoint
from tests.test_lambda_support import BUCKET

SUFFIX = ".dinov2.json"
PREFIX = "photos/"
SHA = "e" * 64
ODD_KEYS = {  # at positions whose state (i % 5) puts them in the manifest
    0: f"{PREFIX}holiday 2024/IMG 0001.HEIC",  # spaces
    1: f"{PREFIX}red+flower.jpg",  # a plus, which is not a space
    2: f"{PREFIX}café/crème brûlée.png",  # unicode
    5: f'{PREFIX}a,b "quoted" 100%.jpg',  # CSV and percent-encoding specials
}


def sidecar(key: str, etag: str, *, sha256: str = SHA, error: str | None = None) -> bytes:
    model = ModelInfo(name="m", sha256=sha256, preprocess="center-crop", input_size=224)
    common = {"file_path": f"s3://{BUCKET}/{key}", "model": model, "source": SourceInfo(etag=etag)}
    if error:
        return EmbeddingResult(status="error", error=error, **common).to_bytes()  # type: ignore[arg-type]
    emb = Embedding(embedding=[1.0, 0.0], embedding_dim=2, normalized=True)
    return EmbeddingResult(status="success", embedding=emb, **common).to_bytes()  # type: ignore[arg-type]


@pytest.fixture
def todo(s3_endpoint: S3Endpoint) -> set[str]:
    """A prefix in every state; returns the keys the manifest must list."""
    s3 = s3_endpoint.client
    expected: set[str] = set()
    for i in range(30):
        key = ODD_KEYS.get(i, f"{PREFIX}{i % 3}/img-{i}.jpg")
        etag = s3.put_object(Bucket=BUCKET, Key=key, Body=f"image {i}".encode())["ETag"]
        state = i % 5
        if state == 0:  # no sidecar
            expected.add(key)
        elif state == 1:  # a sidecar for an older version of the image
            s3.put_object(Bucket=BUCKET, Key=key + SUFFIX, Body=sidecar(key, '"old"'))
            expected.add(key)
        elif state == 2:  # made by another model
            s3.put_object(Bucket=BUCKET, Key=key + SUFFIX, Body=sidecar(key, etag, sha256="f" * 64))
            expected.add(key)
        elif state == 3:  # a current error sidecar: a permanent failure, not retried
            body = sidecar(key, etag, error="not an image: no")
            s3.put_object(Bucket=BUCKET, Key=key + SUFFIX, Body=body)
        else:  # current
            s3.put_object(Bucket=BUCKET, Key=key + SUFFIX, Body=sidecar(key, etag))
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}notes.txt", Body=b"not an image")
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}gone.jpg{SUFFIX}", Body=sidecar("gone", '"x"'))
    s3.put_object(Bucket=BUCKET, Key="elsewhere/outside.jpg", Body=b"outside the prefix")
    assert set(ODD_KEYS.values()) <= expected
    return expected


def listing(endpoint: S3Endpoint) -> dict[str, str]:
    pages = endpoint.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def test_manifest_lists_exactly_the_images_without_a_current_sidecar(
    todo: set[str],
    s3_endpoint: S3Endpoint,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DINOEMBED_MODEL_SHA256", SHA)  # only a digest: nothing is loaded
    before = listing(s3_endpoint)
    out = tmp_path / "manifest.csv"
    # WHEN writing the manifest
    code = main(["backfill", f"s3://{BUCKET}/{PREFIX}", "--manifest", str(out)])
    summary = json.loads(capsys.readouterr().out)
    # THEN the summary says what it found (error sidecars as errors, as `status` counts
    # them: 6 of the 30), and nothing was embedded or queued
    assert code == 0
    assert summary == {
        "location": f"s3://{BUCKET}/{PREFIX}", "images": 30, "current": 30 - len(todo) - 6,
        "todo": len(todo), "embedded": 0, "errors": 6, "skipped": 0, "failed": 0,
        "queued": 0, "manifest": str(out),
    }  # fmt: skip
    assert listing(s3_endpoint) == before  # the bucket is untouched
    # AND the CSV has one bucket,key row per image, keys URL-encoded
    text = out.read_text(encoding="utf-8")
    rows = list(csv.reader(text.splitlines()))
    assert all(len(row) == 2 and row[0] == BUCKET for row in rows)
    encoded = [row[1] for row in rows]
    assert not any(c in key for key in encoded for c in ' ,"+é')  # all escaped
    assert {unquote_plus(key) for key in encoded} == todo  # how the function decodes it
    assert {unquote(key) for key in encoded} == todo  # and without '+'-as-space too
    assert len(encoded) == len(todo)
    # the odd keys in the manifest: spaces as %20, '+' as %2B, UTF-8 bytes escaped
    assert "photos/holiday%202024/IMG%200001.HEIC" in encoded
    assert "photos/red%2Bflower.jpg" in encoded


def test_manifest_of_a_complete_prefix_is_empty(
    s3_endpoint: S3Endpoint,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DINOEMBED_MODEL_SHA256", SHA)
    key = f"{PREFIX}done.jpg"
    etag = s3_endpoint.client.put_object(Bucket=BUCKET, Key=key, Body=b"x")["ETag"]
    s3_endpoint.client.put_object(Bucket=BUCKET, Key=key + SUFFIX, Body=sidecar(key, etag))
    out = tmp_path / "manifest.csv"
    assert main(["backfill", f"s3://{BUCKET}/{PREFIX}", "--manifest", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["todo"] == 0
    assert out.read_bytes() == b""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}", "--manifest", "{tmp}/m.csv"], "--manifest is for s3:// locations"),
        (
            ["s3://bucket/p/", "--manifest", "{tmp}/m.csv", "--queue-url", "https://q"],
            "choose one",
        ),
    ],
)
def test_manifest_misuse_is_a_one_line_error(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["backfill", *[a.replace("{tmp}", str(tmp_path)) for a in args]])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and message in err
    assert not (tmp_path / "m.csv").exists()
