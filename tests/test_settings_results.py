"""Settings from the environment, the result schema, sidecar naming and atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from dinoembed.common.atomic import is_temp_file, write_atomic
from dinoembed.results.schema import Embedding, EmbeddingResult, ModelInfo, Neighbour
from dinoembed.results.sidecars import (
    is_sidecar,
    parse_result,
    read_sidecar,
    sidecar_name,
    write_sidecar,
)
from dinoembed.settings import Settings

MODEL = ModelInfo(name="m", sha256="a" * 64, preprocess="center-crop", input_size=224)


def test_every_option_reads_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "DINOEMBED_MODEL_PATH": "/models/m.onnx",
        "DINOEMBED_MODEL_URL": "s3://bucket/m.onnx",
        "DINOEMBED_MODEL_SHA256": "B" * 64,
        "DINOEMBED_CACHE_DIR": "/var/cache/x",
        "DINOEMBED_NORMALIZE": "0",
        "DINOEMBED_PREPROCESS": "squash",
        "DINOEMBED_OUTPUT_SUFFIX": ".emb.json",
        "DINOEMBED_BATCH_SIZE": "4",
        "DINOEMBED_THREADS": "3",
        "DINOEMBED_MAX_PIXELS": "1000",
        "DINOEMBED_MAX_BYTES": "2000",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = Settings()
    assert s.model_path == Path("/models/m.onnx") and s.model_url == "s3://bucket/m.onnx"
    assert s.model_sha256 == "b" * 64 and s.sha256_is_explicit
    assert s.cache_dir == Path("/var/cache/x") and s.normalize is False
    assert (s.preprocess, s.output_suffix, s.batch_size) == ("squash", ".emb.json", 4)
    assert (s.threads, s.max_pixels, s.max_bytes) == (3, 1000, 2000)
    assert Settings(batch_size=9).batch_size == 9  # an explicit argument wins


def test_cache_dir_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert Settings().cache_dir == tmp_path / "dinoembed"
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "fn")
    assert Settings().cache_dir == Path("/tmp/dinoembed")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model_sha256", "abc"),
        ("model_url", "ftp://x/m.onnx"),
        ("preprocess", "stretch"),
        ("batch_size", 0),
        ("output_suffix", ""),
    ],
)
def test_bad_settings_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings.model_validate({field: value})


def test_result_schema_forbids_unknown_fields_and_round_trips() -> None:
    result = EmbeddingResult(file_path="/x.jpg", status="error", error="not an image", model=MODEL)
    data = result.model_dump()
    assert data["schema_version"] == 1 and data["embedding"] is None
    assert set(data) == {
        "schema_version",
        "file_path",
        "status",
        "embedding",
        "error",
        "model",
        "source",
        "created_at",
        "neighbours",
    }
    assert EmbeddingResult.model_validate_json(result.to_json()) == result
    with pytest.raises(ValidationError):
        EmbeddingResult.model_validate(data | {"surprise": 1})


def test_readers_ignore_fields_a_newer_version_adds_at_any_depth() -> None:
    # GIVEN a sidecar as a later version might write it: new fields at the top and nested
    result = EmbeddingResult(
        file_path="/x.jpg",
        status="success",
        embedding=Embedding(embedding=[0.6, 0.8], embedding_dim=2, normalized=True),
        model=MODEL,
    )
    doc = json.loads(result.to_json())
    doc["tags"] = ["cat"]
    doc["model"]["quantized"] = False
    doc["source"]["exif"] = {"Make": "Apple"}
    doc["embedding"]["dtype"] = "float32"
    # WHEN it is read THEN the known fields come back and the unknown ones are ignored
    assert parse_result(json.dumps(doc).encode()) == result
    # AND a writer still emits exactly the schema (the optional neighbours only when known)
    assert set(json.loads(result.to_bytes())) == set(EmbeddingResult.model_fields) - {"neighbours"}


def test_neighbours_are_written_when_known_and_read_back() -> None:
    # GIVEN a result with the duplicates recorded as it landed
    result = EmbeddingResult(
        file_path="s3://b/photos/cat.jpg",
        status="success",
        embedding=Embedding(embedding=[0.6, 0.8], embedding_dim=2, normalized=True),
        model=MODEL,
        neighbours=[Neighbour(key="photos/dog.jpg", score=0.981)],
    )
    # WHEN written and read back
    doc = json.loads(result.to_bytes())
    # THEN the sidecar carries them (SPEC section 4) and a reader gets them back
    assert doc["neighbours"] == [{"key": "photos/dog.jpg", "score": 0.981}]
    assert parse_result(result.to_bytes()) == result


def test_a_reader_refuses_what_is_not_a_result() -> None:
    assert parse_result(b'{"hello": "world"}') is None
    assert parse_result(b"not json") is None
    assert parse_result(b'{"schema_version": 0, "file_path": "x"}') is None


def test_sidecar_naming() -> None:
    assert sidecar_name("photos/cat.jpg", ".dinov2.json") == "photos/cat.jpg.dinov2.json"
    assert is_sidecar("photos/cat.jpg.dinov2.json", ".dinov2.json")
    assert not is_sidecar("photos/cat.jpg", ".dinov2.json")


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a.jpg.dinov2.json"
    result = EmbeddingResult(file_path="/a.jpg", status="error", error="x", model=MODEL)
    write_sidecar(result, target)
    assert read_sidecar(target) == result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg.dinov2.json"]


def test_failed_atomic_write_keeps_the_old_file_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "a.json"
    target.write_text("old")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("dinoembed.common.atomic.os.fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, b"new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_temp_files_are_recognisable(tmp_path: Path) -> None:
    assert is_temp_file(".cat.jpg.dinov2.json.x1y2.tmp")
    assert not is_temp_file("cat.jpg") and not is_temp_file("cat.tmp")


def test_unreadable_sidecar_reads_as_missing(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("{half")
    assert read_sidecar(bad) is None and read_sidecar(tmp_path / "none.json") is None


def test_a_front_ends_defaults_never_override_what_the_user_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN streams and preprocess unset, then set by option, then by the environment
    assert Settings().or_defaults(streams=1, preprocess="squash").streams == 1
    assert Settings().or_defaults(preprocess="squash").preprocess == "squash"
    assert Settings(streams=3).or_defaults(streams=1).streams == 3
    monkeypatch.setenv("DINOEMBED_STREAMS", "2")
    monkeypatch.setenv("DINOEMBED_PREPROCESS", "squash")
    both = Settings().or_defaults(streams=1, preprocess="center-crop")
    assert (both.streams, both.preprocess) == (2, "squash")
