"""No traceback reaches a user, and arguments are checked before any model is loaded.

Every subcommand runs as a subprocess (as a user runs it) against bad paths,
unwritable outputs and a closed stdout; each must print one ``dinoembed: error:``
line and exit with its documented status. The model URL points at a local server
that counts requests, so "checked before work" is asserted by counting downloads.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from dinoembed.cli.commands import main
from dinoembed.model.store import sha256_file
from tests.model_server import Script, serve
from tests.test_cli_exit_status import unprivileged
from tests.test_watch_support import save_photo

EXIT_ERROR, EXIT_BROKEN_PIPE = 2, 141


@pytest.fixture(scope="module")
def coll(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A folder of three photos with their sidecars (made by the tiny stand-in)."""
    from tests.conftest import sample_photos

    photos: dict[str, Image.Image] = sample_photos()
    root = tmp_path_factory.mktemp("coll")
    for name in ("chelsea", "coffee", "rocket"):
        save_photo(photos[name], root / f"{name}.jpg")
    assert main(["embed", str(root), "--write-sidecars", "--model", str(tiny_model)]) == 0
    return root


@pytest.fixture
def counting_server() -> Iterator[tuple[Script, str]]:
    """A model URL that answers 503 to every request, counting them."""
    script = Script(body=b"", steps=["503"])
    with serve(script) as url:
        yield script, url


def env_with(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DINOEMBED_")}
    return env | extra


def run(
    args: list[str], env: dict[str, str] | None = None, wrap: bool = False
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "dinoembed.cli", *args]
    return subprocess.run(
        unprivileged(cmd) if wrap else cmd,
        env=env or env_with(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("dinoembed: error: ")]


def assert_one_error(done: subprocess.CompletedProcess[str], code: int, fragment: str) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == code, done.stderr
    errors = error_lines(done.stderr)
    assert len(errors) == 1, done.stderr
    assert fragment in errors[0], errors[0]


# (arguments, fragment of the error line); {coll}, {model}, {tmp} are filled in.
BAD = [
    (["embed", "{tmp}/missing"], "no such file or folder: {tmp}/missing"),
    (["embed", "{coll}", "--model", "{tmp}"], "--model {tmp}: not a file"),
    (["embed", "{coll}", "--model", "{tmp}/none.onnx"], "--model {tmp}/none.onnx: does not exist"),
    (["watch", "--once", "{tmp}/missing"], "{tmp}/missing: not a folder"),
    (["model", "fetch", "--model", "{tmp}/none.onnx"], "--model {tmp}/none.onnx: does not exist"),
    (["model", "info", "--model", "{tmp}/none.onnx"], "--model {tmp}/none.onnx: does not exist"),
    (["model", "standin", "{tmp}/no/x.onnx", "--tiny"], "the folder {tmp}/no does not exist"),
    (["model", "standin", "{tmp}", "--tiny"], "OUT {tmp}: is a folder"),
    (["model", "quantize", "{tmp}/none.onnx", "{tmp}/q.onnx"], "model file not found"),
    (["model", "quantize", "{model}", "{tmp}"], "OUT {tmp}: is a folder"),
    (["similar", "{tmp}/nope.jpg", "--in", "{coll}"], "{tmp}/nope.jpg: no such image"),
    (["similar", "{coll}/chelsea.jpg", "--in", "{tmp}/missing"], "{tmp}/missing: not a folder"),
    (["similar", "{coll}/chelsea.jpg", "--in", "{coll}", "--top-k", "-1"], "--top-k -1"),
    (["dupes", "{tmp}/missing"], "{tmp}/missing: not a folder"),
    (["backfill", "{tmp}/missing"], "{tmp}/missing: not a folder"),
    (["export", "{tmp}/missing", "--format", "npy", "--out", "{tmp}/x.npy"], "not a folder"),
    (["export", "{coll}", "--format", "npy", "--out", "/nonexistent/x.npy"], "does not exist"),
    (["export", "{coll}", "--format", "npy", "--out", "{tmp}"], "--out {tmp}: is a folder"),
    (["status", "{tmp}/missing"], "{tmp}/missing: not a folder"),
    (["cluster", "{tmp}/missing"], "{tmp}/missing: not a folder"),
    (["cluster", "{coll}", "--k", "0"], "--k 0: must be between 1"),
    (["report", "{tmp}/missing", "--out", "{tmp}/r.html"], "{tmp}/missing: not a folder"),
    (["report", "{coll}", "--out", "/nonexistent/r.html"], "the folder /nonexistent does not"),
    (["report", "{coll}", "--out", "{tmp}"], "--out {tmp}: is a folder"),
]


@pytest.mark.parametrize(("args", "fragment"), BAD, ids=lambda v: " ".join(v)[:60])
def test_bad_arguments_give_one_error_line_before_any_download(
    args: list[str],
    fragment: str,
    coll: Path,
    tiny_model: Path,
    tmp_path: Path,
    counting_server: tuple[Script, str],
) -> None:
    # GIVEN a model URL whose every request is counted
    script, url = counting_server
    fill = {"coll": str(coll), "model": str(tiny_model), "tmp": str(tmp_path)}
    # WHEN the command runs with a bad path or value
    done = run([a.format(**fill) for a in args], env_with(DINOEMBED_MODEL_URL=url))
    # THEN one error line, exit 2, and the model was never asked for
    assert_one_error(done, EXIT_ERROR, fragment.format(**fill))
    assert script.requests == 0


def test_export_into_a_read_only_folder(coll: Path, tmp_path: Path) -> None:
    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o555)
    try:
        done = run(
            ["export", str(coll), "--format", "npy", "--out", str(target / "v.npy")], wrap=True
        )
    finally:
        target.chmod(0o755)
    assert_one_error(done, EXIT_ERROR, str(target / "v.npy"))
    assert list(target.iterdir()) == []


def test_similar_answers_from_the_query_images_sidecar_without_a_model(
    coll: Path, tiny_model: Path, counting_server: tuple[Script, str]
) -> None:
    # GIVEN a collection whose query image has a current sidecar, made by the configured
    # model, which is not downloaded yet (its URL counts requests)
    script, url = counting_server
    env = env_with(DINOEMBED_MODEL_URL=url, DINOEMBED_MODEL_SHA256=sha256_file(tiny_model))
    # WHEN similar runs with that image as the query
    done = run(["similar", str(coll / "chelsea.jpg"), "--in", str(coll)], env)
    # THEN it answers, leaving the query out, without asking for the model
    assert done.returncode == 0, done.stderr
    paths = [line.split("\t", 1)[1] for line in done.stdout.splitlines()]
    assert sorted(Path(p).name for p in paths) == ["coffee.jpg", "rocket.jpg"]
    assert script.requests == 0


def test_similar_with_a_changed_query_image_needs_the_model(
    coll: Path, tiny_model: Path, tmp_path: Path, counting_server: tuple[Script, str]
) -> None:
    # GIVEN a copy of the collection whose query image changed after its sidecar was written
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(coll, copy)
    query = copy / "chelsea.jpg"
    os.utime(query, (1_000_000_000, 1_000_000_000))
    script, url = counting_server
    # WHEN similar runs: the sidecar no longer describes the image, so the model is needed
    env = env_with(DINOEMBED_MODEL_URL=url, DINOEMBED_MODEL_SHA256=sha256_file(tiny_model))
    done = run(["similar", str(query), "--in", str(copy)], env)
    # THEN it tried to obtain the model (and says it could not), never a traceback
    assert script.requests > 0
    assert_one_error(done, EXIT_ERROR, "")


CLOSED_PIPE = [
    ["embed", "{coll}", "--model", "{model}"],
    ["similar", "{coll}/chelsea.jpg", "--in", "{coll}", "--model", "{model}"],
    ["similar", "{coll}/chelsea.jpg", "--in", "{coll}", "--json", "--model", "{model}"],
    ["dupes", "{coll}", "--json", "--threshold", "-1"],
    ["export", "{coll}", "--format", "npy", "--out", "{tmp}/v.npy"],
    ["model", "info", "--model", "{model}"],
    ["model", "standin", "{tmp}/s.onnx", "--tiny"],
    ["status", "{coll}", "--json", "--model", "{model}"],
    ["cluster", "{coll}", "--json"],
    ["report", "{coll}", "--out", "{tmp}/r.html"],
    ["completion", "bash"],
]


@pytest.mark.parametrize("args", CLOSED_PIPE, ids=lambda v: " ".join(v[:2]))
def test_a_closed_stdout_gives_one_error_line_and_exit_141(
    args: list[str], coll: Path, tiny_model: Path, tmp_path: Path
) -> None:
    fill = {"coll": str(coll), "model": str(tiny_model), "tmp": str(tmp_path)}
    cmd = [sys.executable, "-m", "dinoembed.cli", *(a.format(**fill) for a in args)]
    # GIVEN a reader that goes away before the first line (`| head -0`)
    proc = subprocess.Popen(
        cmd, env=env_with(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    # WHEN the command writes its results
    stderr = proc.stderr.read()
    code = proc.wait(timeout=120)
    proc.stderr.close()
    # THEN exit 141 with one error line saying so, and no traceback
    done = subprocess.CompletedProcess(cmd, code, "", stderr)
    assert_one_error(done, EXIT_BROKEN_PIPE, "broken pipe")
