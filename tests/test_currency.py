"""The one currency rule (SPEC section 4): when is a sidecar left alone, when rewritten?

Checked here on the rule itself; tests/test_lambda_handler.py and
tests/test_watch_daemon.py check that both front ends follow it.
"""

from __future__ import annotations

import pytest

from dinoembed.results.schema import (
    SCHEMA_VERSION,
    Embedding,
    EmbeddingResult,
    ModelInfo,
    SourceInfo,
)
from dinoembed.results.sidecars import (
    Recipe,
    Verdict,
    image_name,
    image_path,
    judge,
    sidecar_name,
    sidecar_path,
)

MODEL = ModelInfo(name="m", sha256="a" * 64, preprocess="center-crop", input_size=224)
RECIPE = Recipe(MODEL, normalize=True)
LOCAL = SourceInfo(size=100, mtime=1700000000.5)
OBJECT = SourceInfo(size=100, etag='"abc"')


def result(
    source: SourceInfo, *, model: ModelInfo = MODEL, normalized: bool = True
) -> EmbeddingResult:
    embedding = Embedding(embedding=[1.0, 0.0], embedding_dim=2, normalized=normalized)
    return EmbeddingResult(
        file_path="/x.jpg", status="success", embedding=embedding, model=model, source=source
    )


def test_a_sidecar_of_this_image_model_and_normalisation_is_current() -> None:
    assert judge(result(LOCAL), LOCAL, RECIPE) is Verdict.CURRENT
    assert judge(result(OBJECT), OBJECT, RECIPE) is Verdict.CURRENT


def test_no_sidecar_is_missing() -> None:
    assert judge(None, LOCAL, RECIPE) is Verdict.MISSING
    assert Verdict.MISSING.needs_writing and Verdict.STALE.needs_writing
    assert not Verdict.CURRENT.needs_writing and not Verdict.NEWER.needs_writing


@pytest.mark.parametrize(
    ("existing", "image"),
    [
        (result(LOCAL), SourceInfo(size=101, mtime=LOCAL.mtime)),  # the file grew
        (result(LOCAL), SourceInfo(size=100, mtime=1700000009.0)),  # touched / rewritten
        (result(OBJECT), SourceInfo(size=100, etag='"def"')),  # overwritten in S3
        (
            result(SourceInfo(etag='"abc"', version_id="v1")),
            SourceInfo(etag='"abc"', version_id="v2"),  # a new version with the same bytes
        ),
        (result(LOCAL, model=MODEL.model_copy(update={"sha256": "b" * 64})), LOCAL),
        (result(LOCAL, model=MODEL.model_copy(update={"preprocess": "squash"})), LOCAL),
        (result(LOCAL, normalized=False), LOCAL),  # DINOEMBED_NORMALIZE changed
    ],
    ids=["size", "mtime", "etag", "version", "model", "preprocess", "normalize"],
)
def test_anything_else_is_stale(existing: EmbeddingResult, image: SourceInfo) -> None:
    assert judge(existing, image, RECIPE) is Verdict.STALE


def test_an_error_result_does_not_depend_on_normalisation() -> None:
    error = EmbeddingResult(file_path="/x", status="error", error="not an image", model=MODEL)
    error = error.model_copy(update={"source": LOCAL})
    assert judge(error, LOCAL, Recipe(MODEL, normalize=False)) is Verdict.CURRENT


def test_an_older_local_sidecar_without_mtime_counts_when_newer_than_the_image() -> None:
    old = result(SourceInfo(size=100))
    mtime = 1700000000.5
    assert judge(old, LOCAL, RECIPE, sidecar_mtime=mtime + 1) is Verdict.CURRENT
    assert judge(old, LOCAL, RECIPE, sidecar_mtime=mtime - 1) is Verdict.STALE
    assert judge(old, LOCAL, RECIPE) is Verdict.STALE


def test_a_sidecar_of_a_newer_schema_is_never_overwritten() -> None:
    newer = result(SourceInfo(size=1)).model_copy(update={"schema_version": SCHEMA_VERSION + 1})
    assert judge(newer, LOCAL, RECIPE) is Verdict.NEWER


@pytest.mark.parametrize(
    ("image", "sidecar"),
    [
        ("photos/cat.jpg", "photos/cat.jpg.dinov2.json"),
        ("red flower.JPG", "red flower.JPG.dinov2.json"),
        ("a.dinov2.json.png", "a.dinov2.json.png.dinov2.json"),
    ],
)
def test_sidecar_naming_both_ways(image: str, sidecar: str) -> None:
    assert sidecar_name(image, ".dinov2.json") == sidecar
    assert image_name(sidecar, ".dinov2.json") == image
    from pathlib import Path

    assert sidecar_path(Path("/d") / image, ".dinov2.json") == Path("/d") / sidecar
    assert image_path(Path("/d") / sidecar, ".dinov2.json") == Path("/d") / image


@pytest.mark.parametrize("name", ["cat.jpg", ".dinov2.json", "photos/.dinov2.json"])
def test_what_is_not_a_sidecar_name_has_no_image(name: str) -> None:
    assert image_name(name, ".dinov2.json") is None
