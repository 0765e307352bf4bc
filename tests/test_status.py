"""``dinoembed status``: coverage of folders (real files, real embeddings) and S3 prefixes.

Expected counts come from how each fixture was built, never from the code under test.
"""

from __future__ import annotations

import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from dinoembed.cli import main
from dinoembed.model.standin import build_tiny
from dinoembed.model.store import sha256_file
from dinoembed.results.coverage import error_reason
from dinoembed.results.schema import Embedding, EmbeddingResult, ModelInfo, SourceInfo
from tests.helpers import encode
from tests.s3_backends import S3Endpoint
from tests.test_lambda_support import BUCKET

SUFFIX = ".dinov2.json"
PREFIX = "photos/"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def status(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    code = main(["status", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


# ---------------------------------------------------------------- error reasons


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("not an image: the file is empty", "not an image"),
        ("not an image: the data is not a recognised image format", "not an image"),
        ("image too large: 30000x30000 exceeds 89478485 pixels", "image too large"),
        ("truncated JPEG image", "truncated JPEG image"),
        ("unsupported format: TGA", "unsupported format"),
        ("GetObject s3://bucket/a-b.jpg failed: AccessDenied", "GetObject … failed"),
        ("/home/me/x.jpg: cannot read", "…"),
        ("", "(no message)"),
        (None, "(no message)"),
    ],
)
def test_error_messages_are_grouped_by_their_head(message: str | None, reason: str) -> None:
    assert error_reason(message) == reason


# ---------------------------------------------------------------- folders


@dataclass
class Folder:
    root: Path
    model: Path
    expected: dict[str, object] = field(default_factory=dict)
    top_level: dict[str, object] = field(default_factory=dict)


def _photo(photos: dict[str, Image.Image], name: str, path: Path, fmt: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(photos[name].resize((64, 48)), fmt))
    return path


@pytest.fixture
def folder(
    tmp_path: Path,
    tiny_model: Path,
    photos: dict[str, Image.Image],
    capsys: pytest.CaptureFixture[str],
) -> Folder:
    """A folder with images in every state, sidecars made by really running ``embed``."""
    root = tmp_path / "photos"
    current = [
        _photo(photos, "astronaut", root / "a.jpg"),
        _photo(photos, "coffee", root / "sub" / "b.png", "PNG"),
        _photo(photos, "chelsea", root / "sub" / "deep" / "c.jpg"),
    ]
    (root / "bad.jpg").write_bytes(b"this is not an image")
    (root / "empty.jpg").write_bytes(b"")
    whole = encode(photos["rocket"], "JPEG")
    (root / "trunc.jpg").write_bytes(whole[: len(whole) // 2])
    errors = [root / "bad.jpg", root / "empty.jpg", root / "trunc.jpg"]
    touched = _photo(photos, "china", root / "touched.jpg")
    gone = _photo(photos, "flower", root / "gone.jpg")
    garbage = _photo(photos, "rocket", root / "garbage.jpg")
    future = _photo(photos, "coffee", root / "future.jpg")
    notes = root / "notes.txt"
    notes.write_text("not an image, and its error sidecar is nobody's orphan")
    everything = [*current, *errors, touched, gone, garbage, future, notes]
    embed = ["embed", "--write-sidecars", "--model", str(tiny_model)]
    main([*embed, *map(str, everything)])
    other_model = _photo(photos, "china", root / "other-model.jpg")
    main([*embed[:-1], str(build_tiny(tmp_path / "other.onnx", seed=1)), str(other_model)])
    raw = _photo(photos, "astronaut", root / "raw.jpg")
    main([*embed, "--no-normalize", str(raw)])
    capsys.readouterr()
    # then, after embedding: ...
    st = touched.stat()
    os.utime(touched, (st.st_atime, st.st_mtime + 100))  # the image changed
    gone.unlink()  # its sidecar is an orphan
    (root / ("garbage.jpg" + SUFFIX)).write_text("{not a dinoembed result")
    sidecar = root / ("future.jpg" + SUFFIX)
    doc = json.loads(sidecar.read_text()) | {"schema_version": 2, "from_the_future": True}
    sidecar.write_text(json.dumps(doc))
    (root / ".a.jpg.dinov2.json.1234.tmp").write_text("a killed writer's temp file")
    _photo(photos, "coffee", root / "new.jpg")  # never embedded
    expected: dict[str, object] = {
        "location": str(root),
        "images": 12,  # 3 current, 3 errors, touched, other-model, raw, garbage, future, new
        "current": 3,
        "errors": 3,
        "missing": 2,  # new.jpg, and garbage.jpg whose "sidecar" is not a result
        "stale": 3,  # touched (mtime), other-model (model sha256), raw (normalisation)
        "orphaned": 1,  # gone.jpg's
        "newer": 1,  # future.jpg's
        "error_reasons": {"not an image": 2, "truncated JPEG image": 1},
    }
    top_level = expected | {"images": 10, "current": 1}  # without sub/ and sub/deep/
    return Folder(root, tiny_model, expected, top_level)


def test_folder_status_counts_every_state(
    folder: Folder, capsys: pytest.CaptureFixture[str]
) -> None:
    code, doc = status([str(folder.root), "--model", str(folder.model)], capsys)
    assert doc == folder.expected
    assert code == 1  # something is missing, stale or failed


def test_folder_status_without_recursion(
    folder: Folder, capsys: pytest.CaptureFixture[str]
) -> None:
    code, doc = status([str(folder.root), "--model", str(folder.model), "--no-recursive"], capsys)
    assert (code, doc) == (1, folder.top_level)


def test_folder_status_table(folder: Folder, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", str(folder.root), "--model", str(folder.model)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(folder.root)
    table = {line.split()[0]: int(line.split()[1]) for line in lines[1:8]}
    assert table == {
        k: v for k, v in folder.expected.items() if k not in ("location", "error_reasons")
    }
    assert lines[8:] == ["error reasons:", "   2  not an image", "   1  truncated JPEG image"]


def test_another_recipe_makes_every_sidecar_stale(
    folder: Folder, capsys: pytest.CaptureFixture[str]
) -> None:
    # squash preprocessing: no sidecar was made that way (error ones included)
    code, doc = status(
        [str(folder.root), "--model", str(folder.model), "--preprocess", "squash"], capsys
    )
    assert code == 1
    assert (doc["current"], doc["errors"], doc["stale"], doc["missing"]) == (0, 0, 9, 2)


def test_a_complete_folder_exits_zero(
    tmp_path: Path,
    tiny_model: Path,
    photos: dict[str, Image.Image],
    capsys: pytest.CaptureFixture[str],
) -> None:
    images = [_photo(photos, name, tmp_path / f"{name}.jpg") for name in ("coffee", "rocket")]
    main(["embed", "--write-sidecars", "--model", str(tiny_model), *map(str, images)])
    capsys.readouterr()
    code, doc = status([str(tmp_path), "--model", str(tiny_model)], capsys)
    assert (code, doc["images"], doc["current"]) == (0, 2, 2)


def test_the_model_identity_comes_from_settings_without_loading_it(
    folder: Folder, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN only DINOEMBED_MODEL_SHA256 (the default model URL cannot be reached here,
    # so any attempt to download it would fail the command)
    monkeypatch.setenv("DINOEMBED_MODEL_SHA256", sha256_file(folder.model))
    code, doc = status([str(folder.root)], capsys)
    # THEN the same verdicts as with the file itself
    assert (code, doc) == (1, folder.expected)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/folder"], "not a folder or s3://bucket/prefix"),
        (
            ["{tmp}", "--model", "/nonexistent/model.onnx"],
            "--model /nonexistent/model.onnx: does not exist",
        ),
        (["s3://"], "no bucket name"),
    ],
)
def test_status_that_cannot_run_exits_two(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["status", *[a.replace("{tmp}", str(tmp_path)) for a in args]])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- S3


def _sidecar(key: str, sha256: str, etag: str | None, *, error: str | None = None,
             normalized: bool = True) -> bytes:  # fmt: skip
    model = ModelInfo(name="m", sha256=sha256, preprocess="center-crop", input_size=224)
    source = SourceInfo(etag=etag)
    if error is not None:
        res = EmbeddingResult(
            file_path=f"s3://{BUCKET}/{key}", status="error", error=error, model=model,
            source=source,
        )  # fmt: skip
    else:
        emb = Embedding(embedding=[0.6, 0.8], embedding_dim=2, normalized=normalized)
        res = EmbeddingResult(
            file_path=f"s3://{BUCKET}/{key}", status="success", embedding=emb, model=model,
            source=source,
        )  # fmt: skip
    return res.to_bytes()


MODEL_SHA = "c" * 64
OTHER_SHA = "d" * 64


@pytest.fixture
def prefix(s3_endpoint: S3Endpoint) -> dict[str, object]:
    """A prefix past one listing page (1,000 keys), every state; returns the expected JSON."""
    s3 = s3_endpoint.client
    counts = {"current": 0, "errors": 0, "missing": 0, "stale": 0, "orphaned": 0}
    reasons = {"not an image": 0, "image too large": 0}
    images = 0
    for i in range(540):
        key = f"{PREFIX}{i % 4}/IMG {i}+é.JPG" if i % 90 == 0 else f"{PREFIX}{i % 4}/img-{i}.jpg"
        etag = s3.put_object(Bucket=BUCKET, Key=key, Body=f"image {i}".encode())["ETag"]
        images += 1
        kind = i % 9
        if kind == 0:
            counts["missing"] += 1
            continue
        if kind == 1:
            body, state = _sidecar(key, MODEL_SHA, '"an older version"'), "stale"
        elif kind == 2:
            body, state = _sidecar(key, OTHER_SHA, etag), "stale"
        elif kind == 3:
            body, state = _sidecar(key, MODEL_SHA, etag, normalized=False), "stale"
        elif kind == 4:
            body, state = _sidecar(key, MODEL_SHA, etag, error=f"not an image: case {i}"), "errors"
            reasons["not an image"] += 1
        elif kind == 5 and i % 2:
            too_large = "image too large: 9x9 exceeds 8 pixels"
            body, state = _sidecar(key, MODEL_SHA, etag, error=too_large), "errors"
            reasons["image too large"] += 1
        else:
            body, state = _sidecar(key, MODEL_SHA, etag), "current"
        s3.put_object(Bucket=BUCKET, Key=key + SUFFIX, Body=body)
        counts[state] += 1
    for i in range(4):  # sidecars whose image was deleted
        key = f"{PREFIX}deleted-{i}.png"
        s3.put_object(Bucket=BUCKET, Key=key + SUFFIX, Body=_sidecar(key, MODEL_SHA, '"x"'))
        counts["orphaned"] += 1
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}notes.txt", Body=b"hello")
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}notes.txt{SUFFIX}", Body=b"{}")
    s3.put_object(Bucket=BUCKET, Key="elsewhere/x.jpg", Body=b"outside the prefix")
    return {
        "location": f"s3://{BUCKET}/{PREFIX}",
        "images": images,
        **counts,
        "newer": 0,
        "error_reasons": reasons,
    }


def test_s3_status_counts_a_prefix_past_one_listing_page(
    prefix: dict[str, object],
    s3_endpoint: S3Endpoint,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN the model identity as a digest only (nothing can be downloaded here)
    monkeypatch.setenv("DINOEMBED_MODEL_SHA256", MODEL_SHA)
    listed = s3_endpoint.client.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX)
    assert listed["IsTruncated"]  # more than one page
    code, doc = status([f"s3://{BUCKET}/{PREFIX}"], capsys)
    assert (code, doc) == (1, prefix)


def test_s3_status_shows_progress_on_a_terminal(
    prefix: dict[str, object],
    s3_endpoint: S3Endpoint,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DINOEMBED_MODEL_SHA256", MODEL_SHA)
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    code = main(["status", f"s3://{BUCKET}/{PREFIX}", "--json"])
    assert code == 1 and json.loads(capsys.readouterr().out) == prefix
    lines = terminal.getvalue().split("\n")
    assert "objects listed" in lines[0] and "sidecars read" in lines[1]
    listed = int(lines[0].rsplit("\r", 1)[-1].split()[0])
    assert listed == 2 * 540 - 60 + 4 + 2  # images, their sidecars, orphans, notes (x2)


def test_s3_status_of_a_missing_bucket_exits_two(
    s3_endpoint: S3Endpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["status", "s3://no-such-bucket-here/x/"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and "NoSuchBucket" in err
