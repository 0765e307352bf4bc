"""--version, help for every argument, -v after the subcommand, errors naming their origin."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from dinoembed.cli.commands import _all_subparsers, build_parser, main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"dinoembed {version('dinoembed')}\n"


def test_every_argument_of_every_command_has_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands = _all_subparsers(sub)
    assert len(commands) >= 10
    for command in commands:
        for action in command._actions:
            assert action.help, f"{command.prog}: {action.dest} has no help"


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_before_or_after_the_subcommand(
    where: str, tiny_model: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    (tmp_path / "a.jpg").write_bytes(b"not an image")
    args = ["embed", str(tmp_path / "a.jpg"), "--model", str(tiny_model)]
    argv = ["-v", *args] if where == "before" else [*args, "-v"]
    done = subprocess.run(
        [sys.executable, "-m", "dinoembed.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr  # not an image
    assert " INFO dinoembed.pipeline: model tiny" in done.stderr


@pytest.mark.parametrize(
    ("args", "env", "origin"),
    [
        (["--batch-size", "0"], {}, "--batch-size (the flag)"),
        ([], {"DINOEMBED_BATCH_SIZE": "0"}, "DINOEMBED_BATCH_SIZE (the environment)"),
    ],
)
def test_a_bad_setting_names_its_flag_or_variable(
    args: list[str],
    env: dict[str, str],
    origin: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "a.jpg").write_bytes(b"x")
    assert main(["embed", str(tmp_path / "a.jpg"), *args]) == 2
    assert capsys.readouterr().err.startswith(f"dinoembed: error: {origin}: ")


@pytest.mark.parametrize("flag", [["--no-normalize"], ["--batch-size", "4"]])
def test_similar_does_not_offer_flags_that_do_nothing_there(
    flag: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # similar embeds one query at most (no batches) and ranks by cosine (the query vector
    # is normalised whatever the flag says): such flags are refused, not silently ignored
    with pytest.raises(SystemExit) as done:
        main(["similar", "q.jpg", "--in", str(tmp_path), *flag])
    assert done.value.code == 2
    assert f"unrecognized arguments: {flag[0]}" in capsys.readouterr().err


def test_similar_offers_the_flags_it_uses() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = {f for a in sub.choices["similar"]._actions for f in a.option_strings}
    expected = {"--in", "--top-k", "--min-score", "--json", "--model", "--preprocess"}
    expected |= {"--threads", "--cache-dir", "--output-suffix", "--no-recursive"}
    expected |= {"--include", "--exclude", "-v", "--verbose", "--log-format", "-h", "--help"}
    expected |= {"--paths", "--null"}  # paths only (issue 20)
    expected |= {"--index"}  # an s3:// collection answered by its vector index
    assert flags == expected
