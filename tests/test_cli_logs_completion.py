"""--log-format json (JSON lines on stderr) and `dinoembed completion bash`."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image

from dinoembed.cli.commands import build_parser
from dinoembed.cli.completion import bash_script
from dinoembed.common.logs import JsonFormatter
from tests.helpers import encode


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DINOEMBED_")}
    return subprocess.run(
        [sys.executable, "-m", "dinoembed.cli", *map(str, args)],
        env=clean | (env or {}),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_watch_logs_json_lines_with_their_facts(
    tmp_path: Path, tiny_model: Path, photos: dict[str, Image.Image], how: str
) -> None:
    # GIVEN a folder with a good and a broken image
    (tmp_path / "cat.jpg").write_bytes(encode(photos["chelsea"].resize((48, 32)), "JPEG"))
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    flag = ["--log-format", "json"] if how == "flag" else []
    env = {"DINOEMBED_LOG_FORMAT": "json"} if how == "environment" else {}
    # WHEN watch --once runs with JSON logs
    done = run("watch", tmp_path, "--once", "--model", tiny_model, *flag, env=env)
    assert done.returncode == 1  # bad.jpg failed
    # THEN every stderr line is one JSON object with time, level, logger, message
    records = [json.loads(line) for line in done.stderr.splitlines()]
    assert records
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record)
        assert datetime.fromisoformat(record["time"]).tzinfo is not None
    # and the per-image lines carry their facts as fields
    by_path = {r["path"]: r for r in records if "path" in r}
    assert by_path[str(tmp_path / "cat.jpg")]["status"] == "success"
    bad = by_path[str(tmp_path / "bad.jpg")]
    assert (bad["level"], bad["status"]) == ("WARNING", "error") and bad["error"].startswith(
        "not an image"
    )
    [final] = [r for r in records if r["message"].startswith("stopped: ")]
    assert (final["totals"]["embedded"], final["totals"]["errors"]) == (1, 1)


def test_a_command_error_is_a_json_line_too(tmp_path: Path) -> None:
    done = run("embed", tmp_path / "missing", "--log-format", "json")
    assert done.returncode == 2
    [record] = [json.loads(line) for line in done.stderr.splitlines()]
    assert record["level"] == "ERROR"
    assert record["message"] == f"no such file or folder: {tmp_path / 'missing'}"


def test_json_formatter_keeps_extras_exceptions_and_unicode() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "x.y", logging.ERROR, __file__, 1, "é %s", ("ü",), sys.exc_info()
        )
    record.path = Path("/tmp/ç.jpg")
    line = JsonFormatter().format(record)
    assert "\n" not in line and "é ü" in line  # one line, UTF-8 rather than \\u escapes
    parsed = json.loads(line)
    assert parsed["message"] == "é ü" and parsed["logger"] == "x.y" and parsed["level"] == "ERROR"
    assert parsed["path"] == "/tmp/ç.jpg"
    assert parsed["exception"].splitlines()[-1] == "ValueError: boom"


# completion


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    done = run("completion", "bash")
    assert done.returncode == 0, done.stderr
    path = tmp_path_factory.mktemp("completion") / "dinoembed.bash"
    path.write_text(done.stdout)
    return path


BASH = shutil.which("bash")
needs_bash = pytest.mark.skipif(BASH is None, reason="bash is not installed")


@needs_bash
def test_completion_script_is_valid_bash(script: Path) -> None:
    assert BASH is not None
    done = subprocess.run([BASH, "-n", str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def complete(script: Path, words: list[str]) -> list[str]:
    """What the completion function offers for ``words`` (the last one being completed)."""
    assert BASH is not None
    quoted = " ".join(f"'{w}'" for w in words)
    program = (
        f"source '{script}'\n"
        f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; COMPREPLY=()\n"
        "_dinoembed\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run([BASH, "-c", program], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return [w for w in done.stdout.splitlines() if w]


@needs_bash
@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["dinoembed", "em"], ["embed"]),
        (["dinoembed", "embed", "--wr"], ["--write-sidecars"]),
        (["dinoembed", "model", "st"], ["standin"]),
        (["dinoembed", "--log-format", "json", "wa"], ["watch"]),  # a flag's value is skipped
        (["dinoembed", "embed", "--model", "m.onnx", "--sk"], ["--skip-current"]),
        (["dinoembed", "embed", "--preprocess", ""], ["center-crop", "squash"]),
        (["dinoembed", "model", "fetch", "--ca"], ["--cache-dir"]),
        (["dinoembed", "similar", "--top"], ["--top-k"]),
        (["dinoembed", "embed", "pho"], []),  # not a flag: left to file name completion
    ],
)
def test_completion_offers_the_right_words(
    script: Path, words: list[str], expected: list[str]
) -> None:
    assert complete(script, words) == expected


@needs_bash
def test_completion_offers_every_command_and_each_ones_flags(script: Path) -> None:
    # independent reference: the parser's own subcommands and option strings
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert isinstance(commands, dict)
    assert set(commands) <= set(complete(script, ["dinoembed", ""]))
    for name in ("embed", "watch", "status", "dupes"):
        flags = {f for action in commands[name]._actions for f in action.option_strings}
        assert set(complete(script, ["dinoembed", name, "-"])) == flags


def test_the_script_is_made_from_the_parser_it_is_given() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="toy")
    parser.add_subparsers(dest="command").add_parser("frobnicate").add_argument("--zap")
    text = bash_script(parser, prog="toy")
    assert "frobnicate" in text and "--zap" in text and text.rstrip().endswith("_dinoembed toy")
