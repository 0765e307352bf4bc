"""``dinoembed embed FILE`` starts its model's session before the settings are read
(dinoembed.cli.early): the early reading agrees with what the settings resolve, reads
nothing it is unsure of, and its session is used only when it is the one needed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinoembed.cli import early
from dinoembed.cli.commands import build_parser, make_settings
from dinoembed.common.defaults import DEFAULT_MODEL_SHA256
from dinoembed.model.engine import start_session
from dinoembed.model.loader import inference_layout
from dinoembed.model.store import ModelSource, ModelStore
from tests.helpers import python_stdout

OTHER_SHA = "ab" * 32


@pytest.fixture
def place(tmp_path: Path, tiny_model: Path) -> dict[str, Path]:
    """An image, a folder, a model file, and models cached where three caches keep them."""
    image = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), "teal").save(image)
    (tmp_path / "folder").mkdir()
    paths = {"image": image, "folder": tmp_path / "folder", "model": tiny_model}
    for name, sha in (("cache", DEFAULT_MODEL_SHA256), ("cache2", DEFAULT_MODEL_SHA256)):
        paths[name] = tmp_path / name
        (paths[name] / "models").mkdir(parents=True)
        shutil.copy(tiny_model, paths[name] / "models" / f"{sha}.onnx")
    shutil.copy(tiny_model, paths["cache"] / "models" / f"{OTHER_SHA}.onnx")
    xdg = tmp_path / "xdg" / "dinoembed" / "models"
    xdg.mkdir(parents=True)
    shutil.copy(tiny_model, xdg / f"{DEFAULT_MODEL_SHA256}.onnx")
    paths["xdg"] = tmp_path / "xdg"
    return paths


def resolved_by_the_settings(argv: list[str]) -> tuple[Path, int]:
    """The reference: the real parser, pydantic-settings over os.environ, the command's
    one-image layout, and the model store's own naming of a cached model."""
    settings = make_settings(build_parser().parse_args(argv)).or_defaults(streams=1)
    path = settings.model_path or ModelStore(settings.cache_dir).cached_path(
        ModelSource.from_settings(settings)
    )
    return path, inference_layout(settings)[1]


READ = [
    (["embed", "{image}"], {"DINOEMBED_CACHE_DIR": "{cache}"}),
    (["embed", "{image}", "--cache-dir", "{cache2}"], {"DINOEMBED_CACHE_DIR": "{cache}"}),
    (["embed", "--model", "{model}", "{image}"], {}),
    (["embed", "--model={model}", "{image}", "--threads", "3"], {}),
    (["embed", "{image}", "--threads", "4", "--streams", "2"], {"DINOEMBED_CACHE_DIR": "{cache}"}),
    (["embed", "{image}"], {"DINOEMBED_CACHE_DIR": "{cache}", "DINOEMBED_THREADS": "3"}),
    (["embed", "{image}"], {"DINOEMBED_CACHE_DIR": "{cache}", "DINOEMBED_STREAMS": "2"}),
    (["embed", "{image}"], {"DINOEMBED_MODEL_PATH": "{model}", "DINOEMBED_THREADS": ""}),
    (["embed", "{image}"], {"DINOEMBED_CACHE_DIR": "{cache}", "DINOEMBED_MODEL_SHA256": "AB" * 32}),
    (["embed", "{image}"], {"XDG_CACHE_HOME": "{xdg}"}),
    (["embed", "--", "{image}"], {"XDG_CACHE_HOME": "{xdg}"}),
    (["embed", "--write-sidecars", "--no-normalize", "{image}"], {"XDG_CACHE_HOME": "{xdg}"}),
]


@pytest.mark.parametrize(("argv", "env"), READ)
def test_the_early_reading_names_the_model_and_threads_the_settings_resolve(
    monkeypatch: pytest.MonkeyPatch,
    place: dict[str, Path],
    argv: list[str],
    env: dict[str, str],
) -> None:
    # GIVEN a plain `dinoembed embed FILE` command line and its environment
    argv = [a.format(**place) for a in argv]
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(**place))
    # WHEN the console script reads it before the settings exist
    found = early.embed_model(argv, os.environ)
    # THEN it names the very file and thread count the settings and the store resolve to
    assert found == resolved_by_the_settings(argv)


NOT_READ = [
    ["embed"],
    ["embed", "--help"],
    ["embed", "{image}", "{image}"],  # several images: the per-core layout
    ["embed", "{folder}"],
    ["embed", "{folder}/missing.jpg"],
    ["embed", "{image}", "--skip-current"],  # an option it does not know (may load nothing)
    ["embed", "{image}", "--output-suffix", ".x.json"],
    ["embed", "--mod", "{model}", "{image}"],  # an abbreviation argparse would accept
    ["embed", "{image}", "--model"],  # a usage error: the real parser says it
    ["embed", "{image}", "--threads", "0"],
    ["embed", "{image}", "--threads", "two"],
    ["embed", "{image}", "--model", "{folder}/missing.onnx"],
    ["-v", "embed", "{image}"],  # an option before the command
    ["similar", "{image}"],
]


@pytest.mark.parametrize("argv", NOT_READ)
def test_anything_but_a_plain_embed_of_one_file_starts_nothing(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    place: dict[str, Path],
    argv: list[str],
) -> None:
    # GIVEN a command line the early reading is not sure of (the pinned model cached)
    monkeypatch.setenv("DINOEMBED_CACHE_DIR", str(place["cache"]))
    # WHEN the console script would start a session THEN it starts none, silently
    assert early.start([a.format(**place) for a in argv]) is None
    assert early.take() is None
    assert capsys.readouterr() == ("", "")


def test_an_uncached_model_or_a_bundle_folder_starts_nothing(
    monkeypatch: pytest.MonkeyPatch, place: dict[str, Path], tmp_path: Path
) -> None:
    # GIVEN the pinned model not in the cache (the command will download it)
    monkeypatch.setenv("DINOEMBED_CACHE_DIR", str(tmp_path / "empty"))
    assert early.embed_model(["embed", str(place["image"])], os.environ) is None
    # AND a bundle folder, which the store would prefer to the cache
    monkeypatch.setenv("DINOEMBED_CACHE_DIR", str(place["cache"]))
    monkeypatch.setenv("DINOEMBED_BUNDLE_DIR", str(tmp_path))
    assert early.embed_model(["embed", str(place["image"])], os.environ) is None


def test_a_session_is_not_used_for_a_file_changed_after_it_started(
    tiny_model: Path, tmp_path: Path
) -> None:
    # GIVEN a session started from a model file
    model = tmp_path / "m.onnx"
    shutil.copy(tiny_model, model)
    pending = start_session(model, 1)
    assert pending.serves(model, 1)
    assert not pending.serves(model, 2)
    # WHEN the file is replaced (as re-fetching a cached model that failed its check does)
    replacement = tmp_path / "m.part"
    shutil.copy(tiny_model, replacement)
    replacement.replace(model)
    # THEN the session, made from the old file, is no longer the one for that path
    assert not pending.serves(model, 1)
    pending.future.result()
    # AND a file changed in place is not the one it read either
    pending = start_session(model, 1)
    pending.future.result()
    os.utime(model, ns=(0, 0))
    assert not pending.serves(model, 1)


COUNT_SESSIONS = """
import json, sys
from dinoembed.model import engine
made = []
create = engine.create_session
def counted(path, threads=None):
    made.append({"settings imported": "pydantic_settings" in sys.modules, "threads": threads})
    return create(path, threads)
engine.create_session = counted
import dinoembed.cli
code = dinoembed.cli.main(sys.argv[1:])
print(json.dumps({"code": code, "sessions": made}))
"""


def run_console(*argv: str, env: dict[str, str] | None = None) -> tuple[dict[str, object], str]:
    out = python_stdout(COUNT_SESSIONS, *argv, env=env)
    *results, report = out.splitlines()
    return json.loads(report), "\n".join(results)


def test_embed_file_creates_one_session_before_the_settings_import(
    place: dict[str, Path], tiny_model: Path
) -> None:
    # WHEN `dinoembed embed --model M FILE` runs in a fresh process
    report, results = run_console("embed", "--model", str(tiny_model), str(place["image"]))
    # THEN it embedded the image with one session, started before pydantic-settings imported
    assert report["code"] == 0
    assert json.loads(results)["status"] == "success"
    assert report["sessions"] == [{"settings imported": False, "threads": early_threads()}]


def early_threads() -> int:
    from dinoembed.model.engine import available_cpus

    return available_cpus()


def test_embedding_through_the_early_session_matches_a_fresh_pipeline(
    place: dict[str, Path], tiny_model: Path
) -> None:
    # GIVEN the embedding of one image by the console script (its early session)
    report, results = run_console("embed", "--model", str(tiny_model), str(place["image"]))
    assert report["code"] == 0
    # THEN it is the vector the Python API computes with a session of its own
    import dinoembed

    (reference,) = dinoembed.Embedder(model_path=str(tiny_model)).embed([place["image"]])
    assert reference.embedding is not None
    vector = np.array(json.loads(results)["embedding"]["embedding"])
    np.testing.assert_allclose(vector, reference.embedding.embedding, rtol=1e-5, atol=1e-6)


def test_a_misread_costs_a_second_session_never_a_wrong_one(
    place: dict[str, Path], tiny_model: Path, tmp_path: Path
) -> None:
    # GIVEN a variable the early reading does not know, spelt in lower case, which
    # pydantic-settings reads too: the settings' model is not the one read early
    env = {**os.environ, "DINOEMBED_CACHE_DIR": str(place["cache"])}
    env["dinoembed_model_path"] = str(tiny_model)
    # WHEN `dinoembed embed FILE` runs
    report, results = run_console("embed", str(place["image"]), env=env)
    # THEN the early session (for the cached file) was left unused and the settings'
    # model got its own: the result names the model the settings chose
    assert report["code"] == 0
    assert len(report["sessions"]) == 2  # type: ignore[arg-type]
    digest = hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    assert json.loads(results)["model"]["sha256"] == digest


def test_a_broken_model_still_fails_with_its_one_line_error(
    place: dict[str, Path], tmp_path: Path
) -> None:
    # GIVEN a --model that is not an ONNX file
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    # WHEN the console script embeds one image with it (the early session fails)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dinoembed.cli",
            "embed",
            "--model",
            str(broken),
            str(place["image"]),
        ],
        capture_output=True,
        text=True,
    )
    # THEN it says why in one line, prints no result, and exits 2 (a configuration error)
    assert done.returncode == 2
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("dinoembed: error: cannot load ONNX model broken.onnx: ")


def test_the_console_script_s_name_means_one_function_whatever_imported_first() -> None:
    # GIVEN the command modules imported (as every in-process test of the CLI does)
    import dinoembed.cli
    import dinoembed.cli.commands

    # THEN `dinoembed.cli.main` is still the console script's function, not a module
    # (a submodule named `main` would replace it on import)
    assert callable(dinoembed.cli.main)
    assert dinoembed.cli.main.__module__ == "dinoembed.cli"
