"""The model store against a real local HTTP server and moto S3."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from dinoembed.common.defaults import DEFAULT_MODEL_SHA256, DEFAULT_MODEL_URL
from dinoembed.errors import ConfigError, ModelIntegrityError, ModelUnavailableError
from dinoembed.handler.model_fetch import fetchers_with_s3
from dinoembed.model.bundle import find_bundled
from dinoembed.model.fetchers import HttpFetcher
from dinoembed.model.store import HashingWriter, ModelSource, ModelStore
from dinoembed.settings import Settings
from tests.helpers import tmpfs
from tests.model_server import Script, serve

pytestmark = pytest.mark.reliability("model-fetch faults")

BODY = os.urandom(300_000)
SHA = hashlib.sha256(BODY).hexdigest()


def _store(cache: Path, attempts: int = 3, timeout: float = 5.0) -> ModelStore:
    http = HttpFetcher(attempts=attempts, backoff=0.0, timeout=timeout)
    return ModelStore(cache, fetchers={"http": http, "https": http})


def _source(url: str, sha: str = SHA, size: int | None = None) -> ModelSource:
    return ModelSource(url=url, sha256=sha, name="model", size=size)


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def test_first_resolve_downloads_second_uses_the_cache(tmp_path: Path) -> None:
    script = Script(BODY)
    with serve(script) as url:
        first = _store(tmp_path).resolve(_source(url))
        second = _store(tmp_path).resolve(_source(url))
    assert script.requests == 1
    assert (first.origin, second.origin) == ("download", "cache")
    assert first.path == second.path and first.path.read_bytes() == BODY
    assert first.sha256 == SHA


def test_wrong_sha256_is_refused_and_nothing_is_cached(tmp_path: Path) -> None:
    with serve(Script(BODY)) as url, pytest.raises(ModelIntegrityError, match="has sha256"):
        _store(tmp_path).resolve(_source(url, sha="0" * 64))
    assert _leftovers(tmp_path) == []


def test_wrong_size_is_refused(tmp_path: Path) -> None:
    with serve(Script(BODY)) as url, pytest.raises(ModelIntegrityError, match="expected 12 bytes"):
        _store(tmp_path).resolve(_source(url, size=12))
    assert _leftovers(tmp_path) == []


def test_connection_cut_mid_body_is_retried(tmp_path: Path) -> None:
    script = Script(BODY, steps=["cut", "ok"])
    with serve(script) as url:
        resolved = _store(tmp_path).resolve(_source(url))
    assert script.requests == 2
    assert resolved.path.read_bytes() == BODY


def test_connection_always_cut_is_a_clean_transient_error(tmp_path: Path) -> None:
    script = Script(BODY, steps=["cut"])
    with serve(script) as url, pytest.raises(ModelUnavailableError) as info:
        _store(tmp_path, attempts=3).resolve(_source(url))
    assert script.requests == 3
    assert "set DINOEMBED_MODEL_PATH to a local copy" in str(info.value)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("status", ["429", "503"])
def test_throttling_and_server_errors_are_retried(tmp_path: Path, status: str) -> None:
    script = Script(BODY, steps=[status, status, "ok"])
    with serve(script) as url:
        assert _store(tmp_path).resolve(_source(url)).path.read_bytes() == BODY
    assert script.requests == 3


def test_not_found_is_not_retried(tmp_path: Path) -> None:
    script = Script(BODY, steps=["404"])
    with serve(script) as url, pytest.raises(ModelUnavailableError, match="HTTP 404"):
        _store(tmp_path).resolve(_source(url))
    assert script.requests == 1


def test_offline_error_names_the_way_out(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError) as info:
        _store(tmp_path, attempts=1).resolve(_source("http://127.0.0.1:9/model.onnx"))
    message = str(info.value)
    assert message.startswith("cannot download model from http://127.0.0.1:9/model.onnx")
    assert message.endswith("set DINOEMBED_MODEL_PATH to a local copy")


def test_corrupted_cache_is_detected_and_fetched_again(tmp_path: Path) -> None:
    script = Script(BODY)
    with serve(script) as url:
        first = _store(tmp_path).resolve(_source(url))
        data = bytearray(first.path.read_bytes())
        data[1000] ^= 0xFF  # same size, different bytes
        first.path.write_bytes(bytes(data))
        again = _store(tmp_path).resolve(_source(url))
    assert script.requests == 2 and again.origin == "download"
    assert again.path.read_bytes() == BODY


def test_truncated_cache_is_detected_and_fetched_again(tmp_path: Path) -> None:
    script = Script(BODY)
    with serve(script) as url:
        first = _store(tmp_path).resolve(_source(url))
        first.path.write_bytes(BODY[:1000])
        again = _store(tmp_path).resolve(_source(url))
    assert script.requests == 2 and again.path.read_bytes() == BODY


@pytest.mark.parametrize("name", [f".{SHA}.onnx.abc123.tmp", f".{SHA}.abc123.part"])
def test_stale_partial_file_from_a_killed_process_is_removed(tmp_path: Path, name: str) -> None:
    # GIVEN what a killed download left behind (dinoembed 0.1 named it .part)
    models = tmp_path / "models"
    models.mkdir()
    stale = models / name
    stale.write_bytes(BODY[:10])
    with serve(Script(BODY)) as url:
        _store(tmp_path).resolve(_source(url))
    assert not stale.exists()
    assert sorted(p.name for p in models.iterdir() if p.suffix != ".lock") == [f"{SHA}.onnx"]


def test_stalled_body_times_out_and_is_retried(tmp_path: Path) -> None:
    script = Script(BODY, steps=["stall", "ok"], stall_seconds=1.5)
    with serve(script) as url:
        resolved = _store(tmp_path, attempts=2, timeout=0.3).resolve(_source(url))
    assert script.requests == 2 and resolved.path.read_bytes() == BODY


def test_stalled_body_every_time_is_a_clean_transient_error(tmp_path: Path) -> None:
    script = Script(BODY, steps=["stall"], stall_seconds=1.0)
    with serve(script) as url, pytest.raises(ModelUnavailableError, match="timed out"):
        _store(tmp_path, attempts=2, timeout=0.3).resolve(_source(url))
    assert _leftovers(tmp_path) == []


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 200 KiB tmpfs: the cache folder fills up halfway through the 300 KB model."""
    with tmpfs(tmp_path / "tiny-disk", "200k") as mount:
        yield mount


def test_disk_full_in_the_cache_is_a_clean_error_and_leaves_nothing(
    tiny_disk: Path,
) -> None:
    with serve(Script(BODY)) as url, pytest.raises(ModelUnavailableError) as info:
        _store(tiny_disk).resolve(_source(url))
    assert "No space left on device" in str(info.value)
    assert _leftovers(tiny_disk) == []


def test_disk_full_simulated_where_tmpfs_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = HashingWriter.write

    def write(self: HashingWriter, data: bytes, /) -> int:
        if self.size + len(data) > 100_000:
            raise OSError(28, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(HashingWriter, "write", write)
    with serve(Script(BODY)) as url, pytest.raises(ModelUnavailableError, match="No space left"):
        _store(tmp_path).resolve(_source(url))
    assert _leftovers(tmp_path) == []


def test_four_processes_cold_starting_at_once_download_once(tmp_path: Path) -> None:
    # GIVEN a slow server, so all processes are mid-resolve at the same time
    script = Script(BODY, delay_per_chunk=0.2)
    env = os.environ | {"DINOEMBED_CACHE_DIR": str(tmp_path), "DINOEMBED_MODEL_SHA256": SHA}
    with serve(script) as url:
        env["DINOEMBED_MODEL_URL"] = url
        cmd = [sys.executable, "-m", "dinoembed.cli", "model", "fetch"]
        procs = [
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(4)
        ]
        outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    # THEN the file was downloaded once, and both report the same verified path
    assert script.requests == 1
    origins = sorted(json.loads(out)["origin"] for out, _ in outputs)
    assert origins == ["cache", "cache", "cache", "download"]


def test_explicit_path_is_used_as_is_and_checked_only_when_asked(tmp_path: Path) -> None:
    model = tmp_path / "mine.onnx"
    model.write_bytes(BODY)
    store = _store(tmp_path / "cache")
    unchecked = store.resolve(ModelSource.from_settings(Settings(model_path=model)))
    assert (unchecked.origin, unchecked.sha256, unchecked.name) == ("path", SHA, "mine")
    checked = Settings(model_path=model, model_sha256="1" * 64)
    with pytest.raises(ModelIntegrityError, match="expected 1111"):
        store.resolve(ModelSource.from_settings(checked))
    with pytest.raises(ConfigError, match="model file not found"):
        store.resolve(ModelSource.from_settings(Settings(model_path=tmp_path / "missing.onnx")))


def test_default_source_is_the_pinned_dinov2_model() -> None:
    source = ModelSource.from_settings(Settings())
    assert source.url == DEFAULT_MODEL_URL
    assert source.sha256 == DEFAULT_MODEL_SHA256
    assert source.size == 86_644_121 and source.name == "dinov2_vits14"


def test_s3_model_url_is_fetched_with_the_given_client(tmp_path: Path) -> None:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="models")
        s3.put_object(Bucket="models", Key="dino/model.onnx", Body=BODY)
        store = ModelStore(tmp_path, fetchers=fetchers_with_s3(s3))
        resolved = store.resolve(_source("s3://models/dino/model.onnx"))
        assert resolved.path.read_bytes() == BODY
        with pytest.raises(ModelUnavailableError, match="cannot download model from s3://"):
            ModelStore(tmp_path / "other", fetchers=fetchers_with_s3(s3)).resolve(
                _source("s3://models/missing.onnx")
            )


def test_local_model_hash_is_remembered_until_the_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a local model resolved once (hashed and remembered in the cache folder)
    import dinoembed.model.store as model_store

    model = tmp_path / "model.onnx"
    model.write_bytes(BODY)
    store = _store(tmp_path / "cache")
    source = ModelSource.from_settings(Settings(model_path=model))
    assert store.resolve(source).sha256 == SHA
    hashed: list[Path] = []
    real = model_store.sha256_file

    def counting(path: Path) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(model_store, "sha256_file", counting)
    # WHEN it is resolved again unchanged THEN it is not rehashed
    assert store.resolve(source).sha256 == SHA and hashed == []
    # WHEN its bytes change (same size) THEN it is rehashed and the new digest reported
    changed = bytearray(BODY)
    changed[0] ^= 0xFF
    model.write_bytes(bytes(changed))
    assert store.resolve(source).sha256 == hashlib.sha256(changed).hexdigest()
    assert hashed == [model]


def test_downloaded_model_is_not_rehashed_on_later_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dinoembed.model.store as model_store

    with serve(Script(BODY)) as url:
        _store(tmp_path).resolve(_source(url))  # hashed while streaming
        hashed: list[Path] = []
        real = model_store.sha256_file

        def counting(path: Path) -> str:
            hashed.append(path)
            return real(path)

        monkeypatch.setattr(model_store, "sha256_file", counting)
        again = _store(tmp_path).resolve(_source(url))
    assert again.origin == "cache" and hashed == []


def bundle(folder: Path, model: Path, *, size: int | None = None) -> Path:
    """A package's model/ folder as infra/build_lambda.sh writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(model, folder / model.name)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    real = model.stat().st_size if size is None else size
    manifest = {"file": model.name, "sha256": digest, "size": real}
    (folder / "bundle.json").write_text(json.dumps(manifest))
    return folder


def test_a_bundled_model_comes_before_the_cache_and_any_download(
    tmp_path: Path, tiny_model: Path
) -> None:
    # GIVEN a bundle folder, and a model URL nothing answers
    folder = bundle(tmp_path / "model", tiny_model)
    settings = Settings(bundle_dir=folder, model_url="http://127.0.0.1:9/never.onnx")
    store = ModelStore(tmp_path / "cache")
    # WHEN resolved THEN it is the bundled file, with the digest recorded at build time
    resolved = store.resolve(ModelSource.from_settings(settings))
    assert resolved.origin == "bundled"
    assert resolved.path == folder / tiny_model.name
    assert resolved.sha256 == hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    assert not (tmp_path / "cache" / "models").exists()


def test_an_explicit_model_path_beats_the_bundle(tmp_path: Path, tiny_model: Path) -> None:
    folder = bundle(tmp_path / "model", tiny_model)
    other = tmp_path / "other.onnx"
    shutil.copy(tiny_model, other)
    settings = Settings(bundle_dir=folder, model_path=other)
    resolved = ModelStore(tmp_path / "cache").resolve(ModelSource.from_settings(settings))
    assert (resolved.origin, resolved.path) == ("path", other)


def test_no_bundle_folder_means_no_bundled_model(tmp_path: Path) -> None:
    assert find_bundled(tmp_path / "absent") is None
    assert find_bundled(tmp_path) is None


def test_a_bundle_whose_file_does_not_match_its_manifest_is_refused(
    tmp_path: Path, tiny_model: Path
) -> None:
    folder = bundle(tmp_path / "model", tiny_model, size=tiny_model.stat().st_size + 1)
    with pytest.raises(ModelIntegrityError, match="bytes, expected"):
        find_bundled(folder)


def test_an_explicit_sha256_that_the_bundle_does_not_have_is_refused(
    tmp_path: Path, tiny_model: Path
) -> None:
    folder = bundle(tmp_path / "model", tiny_model)
    settings = Settings(bundle_dir=folder, model_sha256="ab" * 32)
    with pytest.raises(ModelIntegrityError, match="DINOEMBED_MODEL_SHA256 asks for abab"):
        ModelStore(tmp_path / "cache").resolve(ModelSource.from_settings(settings))
