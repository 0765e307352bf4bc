"""Input conveniences: --files-from and '-', --skip-current, --include/--exclude,
--cache-dir/--output-suffix as flags, and the warning for sub-folders embed skipped."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from dinoembed.cli.commands import main
from dinoembed.pipeline import Pipeline
from dinoembed.results.schema import EmbeddingResult
from dinoembed.results.sidecars import read_sidecar
from dinoembed.settings import Settings
from tests.helpers import encode

SUFFIX = ".dinov2.json"


@pytest.fixture
def tree(tmp_path: Path, photos: dict[str, Image.Image]) -> Path:
    """photos/{astronaut.jpg, coffee.png, sub/chelsea.jpg, raw/rocket.jpg, raw/deep/flower.png}"""
    root = tmp_path / "photos"
    for name, photo, fmt in [
        ("astronaut.jpg", "astronaut", "JPEG"),
        ("coffee.png", "coffee", "PNG"),
        ("sub/chelsea.jpg", "chelsea", "JPEG"),
        ("raw/rocket.jpg", "rocket", "JPEG"),
        ("raw/deep/flower.png", "flower", "PNG"),
    ]:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(photos[photo].resize((48, 48)), fmt))
    return root


def embed(
    capsys: pytest.CaptureFixture[str], *args: str | Path
) -> tuple[int, list[EmbeddingResult]]:
    capsys.readouterr()
    code = main(["embed", *map(str, args)])
    out = capsys.readouterr().out
    return code, [EmbeddingResult.model_validate_json(line) for line in out.splitlines()]


def run_stdin(stdin: bytes, *args: str | Path) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DINOEMBED_")}
    return subprocess.run(
        [sys.executable, "-m", "dinoembed.cli", "embed", *map(str, args)],
        input=stdin,
        env=env,
        capture_output=True,
        timeout=300,
        check=False,
    )


# --files-from and '-'


def test_files_from_embeds_the_listed_paths_in_list_order(
    tree: Path, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listed = [tree / "raw/rocket.jpg", tree / "astronaut.jpg", tree / "sub/chelsea.jpg"]
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{p}\n" for p in listed) + "\n")  # a blank line is skipped
    code, results = embed(capsys, "--files-from", lst, "--model", tiny_model)
    assert code == 0
    assert [r.file_path for r in results] == [str(p) for p in listed]
    assert all(r.ok for r in results)


@pytest.mark.parametrize("how", [["-"], ["--files-from", "-"]], ids=["dash", "files-from-dash"])
def test_paths_from_standard_input(tree: Path, tiny_model: Path, how: list[str]) -> None:
    # GIVEN paths on stdin, as `find` prints them (bytes; one name not ASCII)
    odd = tree / "café kopie.jpg"
    (tree / "coffee.png").rename(odd)
    lines = [tree / "astronaut.jpg", odd]
    stdin = b"".join(os.fsencode(p) + b"\n" for p in lines)
    done = run_stdin(stdin, *how, "--model", tiny_model)
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert [r["status"] for r in out] == ["success", "success"]
    assert out[0]["file_path"] == str(lines[0])
    assert out[1]["file_path"] == str(odd)


def test_command_line_paths_come_first_then_the_list(tree: Path, tiny_model: Path) -> None:
    done = run_stdin(
        f"{tree / 'coffee.png'}\n".encode(), tree / "astronaut.jpg", "-", "--model", tiny_model
    )
    assert done.returncode == 0, done.stderr
    paths = [json.loads(line)["file_path"] for line in done.stdout.decode().splitlines()]
    assert paths == [str(tree / "astronaut.jpg"), str(tree / "coffee.png")]


def test_a_listed_path_that_is_missing_is_an_error_line_not_the_end(
    tree: Path, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lst = tmp_path / "list.txt"
    lst.write_text(f"{tree / 'gone.jpg'}\n{tree / 'coffee.png'}\n")
    code, results = embed(capsys, "--files-from", lst, "--model", tiny_model)
    assert code == 1
    assert [(r.status, r.error) for r in results] == [
        ("error", "file not found"),
        ("success", None),
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--files-from", "{tmp}/nope.txt"], "--files-from {tmp}/nope.txt: No such file"),
        ([], "nothing to embed"),
    ],
)
def test_bad_lists_are_argument_errors(
    tmp_path: Path,
    tiny_model: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    argv = [a.format(tmp=tmp_path) for a in args]
    assert main(["embed", *argv, "--model", str(tiny_model)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"dinoembed: error: {message.format(tmp=tmp_path)}" in captured.err


# --skip-current


def test_skip_current_prints_current_sidecars_and_embeds_the_rest(
    tree: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN sidecars for the top folder, then one image changed and one new image
    assert embed(capsys, tree, "--write-sidecars", "--model", tiny_model)[0] == 0
    astronaut, coffee = tree / "astronaut.jpg", tree / "coffee.png"
    kept = (tree / (astronaut.name + SUFFIX)).read_bytes()
    stamp = (tree / (astronaut.name + SUFFIX)).stat().st_mtime_ns
    st = coffee.stat()
    os.utime(coffee, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: no longer current
    Image.new("RGB", (40, 40), "red").save(tree / "new.png")
    # WHEN embedding again with --skip-current
    code, results = embed(capsys, tree, "--skip-current", "--write-sidecars", "--model", tiny_model)
    # THEN one line per input in order; the current one is its sidecar, untouched
    assert code == 0
    assert [Path(r.file_path).name for r in results] == ["astronaut.jpg", "coffee.png", "new.png"]
    assert results[0] == EmbeddingResult.model_validate_json(kept)
    assert (tree / (astronaut.name + SUFFIX)).read_bytes() == kept
    assert (tree / (astronaut.name + SUFFIX)).stat().st_mtime_ns == stamp
    # and the stale and missing ones were embedded (their sidecars record them as they are)
    for image, result in zip([coffee, tree / "new.png"], results[1:], strict=True):
        assert result.ok and result.source.mtime == image.stat().st_mtime
        assert read_sidecar(image.with_name(image.name + SUFFIX)) == result


def test_skip_current_names_a_copied_image_not_the_original(
    tree: Path, tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    assert embed(capsys, tree, "--write-sidecars", "--model", tiny_model)[0] == 0
    copy = shutil.copytree(tree, tmp_path / "copy", copy_function=shutil.copy2)
    code, results = embed(capsys, copy, "--skip-current", "--write-sidecars", "--model", tiny_model)
    assert code == 0
    originals = [read_sidecar(tree / (n + SUFFIX)) for n in ("astronaut.jpg", "coffee.png")]
    for result, original in zip(results, originals, strict=True):
        assert original is not None and Path(result.file_path).parent == copy
        assert result.embedding == original.embedding  # not embedded again
        assert read_sidecar(Path(result.file_path + SUFFIX)) == result  # pointed at the copy


def test_skip_current_prints_a_current_error_sidecar_and_exits_1(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert embed(capsys, bad, "--write-sidecars", "--model", tiny_model)[0] == 1
    code, results = embed(capsys, bad, "--skip-current", "--model", tiny_model)
    assert code == 1
    assert [r.status for r in results] == ["error"]
    assert results[0] == read_sidecar(tmp_path / ("bad.jpg" + SUFFIX))


# --include / --exclude


@pytest.mark.parametrize(
    ("globs", "expected"),
    [
        (
            [],
            [
                "astronaut.jpg",
                "coffee.png",
                "raw/rocket.jpg",  # a folder's files before its sub-folders (sorted walk)
                "raw/deep/flower.png",
                "sub/chelsea.jpg",
            ],
        ),
        (["--include", "*.png"], ["coffee.png", "raw/deep/flower.png"]),
        (["--exclude", "raw/*"], ["astronaut.jpg", "coffee.png", "sub/chelsea.jpg"]),
        (["--include", "*.jpg", "--exclude", "raw/*", "--exclude", "sub/*"], ["astronaut.jpg"]),
        (
            ["--include", "sub/*", "--include", "raw/deep/*"],
            ["raw/deep/flower.png", "sub/chelsea.jpg"],
        ),
    ],
)
def test_include_and_exclude_select_images_by_relative_path(
    tree: Path,
    tiny_model: Path,
    capsys: pytest.CaptureFixture[str],
    globs: list[str],
    expected: list[str],
) -> None:
    code, results = embed(capsys, "-r", tree, *globs, "--model", tiny_model)
    assert code == 0
    assert [Path(r.file_path).relative_to(tree).as_posix() for r in results] == expected


def test_globs_filter_folders_only_not_files_named_explicitly(
    tree: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, results = embed(capsys, tree / "raw/rocket.jpg", "--exclude", "*", "--model", tiny_model)
    assert code == 0 and [Path(r.file_path).name for r in results] == ["rocket.jpg"]


def test_watch_once_and_collections_follow_the_globs(
    tree: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = ["--model", str(tiny_model)]
    # WHEN watch --once runs with an exclude
    assert main(["watch", str(tree), "--once", "--exclude", "raw/*", *model]) == 0
    # THEN only the selected images got sidecars
    made = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*" + SUFFIX))
    assert made == [f"{n}{SUFFIX}" for n in ("astronaut.jpg", "coffee.png", "sub/chelsea.jpg")]
    # and status counts (and dupes reads) the same selection
    capsys.readouterr()
    assert main(["status", str(tree), "--json", "--exclude", "raw/*", *model]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["images"], status["current"], status["missing"]) == (3, 3, 0)
    assert main(["status", str(tree), "--json", *model]) == 1
    assert json.loads(capsys.readouterr().out)["missing"] == 2
    assert main(["dupes", str(tree), "--json", "--include", "sub/*", "--threshold", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 1


def test_globs_are_refused_for_s3_locations(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dupes", "s3://bucket/prefix", "--include", "*.jpg"]) == 2
    assert "--include/--exclude apply to folders" in capsys.readouterr().err


# sub-folders embed skipped


def test_embed_without_r_warns_once_how_many_sub_folders_it_skipped(
    tree: Path,
    tiny_model: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="dinoembed.cli")
    embed(capsys, tree, "--model", tiny_model)
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("dinoembed.cli")]
    assert warnings == [f"skipped 2 sub-folders of {tree} (use -r to descend)"]
    caplog.clear()
    embed(capsys, "-r", tree, "--model", tiny_model)
    embed(capsys, tree / "sub", "--model", tiny_model)  # no sub-folders: nothing to say
    assert [r for r in caplog.records if "sub-folder" in r.getMessage()] == []


# --cache-dir and --output-suffix


def test_output_suffix_flag_names_the_sidecars_everywhere(
    tree: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suffix = ["--output-suffix", ".emb.json"]
    assert embed(capsys, tree, "--write-sidecars", *suffix, "--model", tiny_model)[0] == 0
    assert sorted(p.name for p in tree.glob("*.json")) == [
        "astronaut.jpg.emb.json",
        "coffee.png.emb.json",
    ]
    assert (
        main(["status", str(tree), "--no-recursive", "--json", *suffix, "--model", str(tiny_model)])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["current"] == 2
    code, results = embed(capsys, tree, "--skip-current", *suffix, "--model", tiny_model)
    assert code == 0
    assert results[0] == read_sidecar(tree / "astronaut.jpg.emb.json")


def test_cache_dir_flag_holds_the_collection_index(
    tree: Path, tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["watch", str(tree), "--once", "--model", str(tiny_model)]) == 0
    cache = tmp_path / "my-cache"
    assert main(["dupes", str(tree), "--json", "--cache-dir", str(cache)]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 5
    assert [p for p in cache.rglob("*") if p.is_file()]  # the index was kept there


def test_one_image_to_embed_runs_on_every_thread_and_more_run_side_by_side(
    tree: Path,
    tiny_model: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dinoembed.cli import wiring

    built: list[int] = []
    real = wiring.pipeline

    def recording(
        settings: Settings, client: object = None, *, background: bool = False
    ) -> Pipeline:
        made = real(settings, client, background=background)
        built.append(made.streams)
        return made

    monkeypatch.setattr(wiring, "pipeline", recording)
    one = ("--model", tiny_model, "--threads", "2")
    # GIVEN one image, then a folder, then one image with --streams
    assert embed(capsys, tree / "astronaut.jpg", *one)[0] == 0
    assert embed(capsys, tree, *one)[0] == 0
    assert embed(capsys, tree / "astronaut.jpg", *one, "--streams", "2")[0] == 0
    # AND a folder with all but one image current: one left to embed
    assert embed(capsys, tree, *one, "--write-sidecars")[0] == 0
    (tree / "astronaut.jpg.dinov2.json").unlink()
    assert embed(capsys, tree, *one, "--skip-current", "--write-sidecars")[0] == 0
    # THEN one image runs alone on both threads; more run one per thread unless told
    assert built == [1, 2, 2, 2, 1]
