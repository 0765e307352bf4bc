"""One output convention: UTF-8 JSON, and every finished command says what it did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from dinoembed.cli.commands import main
from tests.test_watch_support import save_photo


@pytest.fixture
def accented(tmp_path: Path, photos: dict[str, Image.Image], tiny_model: Path) -> Path:
    """A folder of two distinct photos, one named with an accent, with sidecars."""
    root = tmp_path / "photos"
    save_photo(photos["coffee"], root / "café.jpg")
    save_photo(photos["rocket"], root / "rocket.jpg")
    assert main(["embed", str(root), "--write-sidecars", "--model", str(tiny_model)]) == 0
    return root


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().out


@pytest.mark.parametrize(
    "args",
    [
        ["dupes", "{root}", "--json", "--threshold", "-1"],
        ["similar", "{root}/rocket.jpg", "--in", "{root}", "--json", "--model", "{model}"],
        ["export", "{root}", "--format", "npy", "--out", "{root}/../café.jpg.npy"],
        ["embed", "{root}/café.jpg", "--model", "{model}"],
    ],
    ids=lambda a: a[0],
)
def test_json_output_is_utf8_not_escaped(
    args: list[str], accented: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, *(a.format(root=accented, model=tiny_model) for a in args))
    assert code == 0
    assert "café.jpg" in out and "\\u00e9" not in out
    assert json.loads(out.splitlines()[0])  # still one JSON document per line


def test_export_index_is_utf8(accented: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = accented.parent / "v.npy"
    assert run(capsys, "export", str(accented), "--format", "npy", "--out", str(out))[0] == 0
    text = out.with_suffix(".json").read_bytes().decode("utf-8")
    assert "café.jpg" in text and "\\u00e9" not in text


def test_folder_backfill_prints_a_json_summary(
    tmp_path: Path,
    photos: dict[str, Image.Image],
    tiny_model: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN a folder with two photos, one with a current sidecar, and one bad file
    root = tmp_path / "in"
    save_photo(photos["coffee"], root / "a.jpg")
    assert main(["embed", str(root / "a.jpg"), "--write-sidecars", "--model", str(tiny_model)]) == 0
    save_photo(photos["rocket"], root / "b.jpg")
    (root / "c.jpg").write_bytes(b"not a jpeg")
    # WHEN backfill runs
    code, out = run(capsys, "backfill", str(root), "--model", str(tiny_model))
    # THEN exit 1 (c.jpg failed) and one JSON line counting each file once
    assert code == 1
    summary = json.loads(out)
    assert summary["location"] == str(root.absolute())
    assert (summary["images"], summary["current"], summary["todo"]) == (3, 1, 2)
    assert (summary["embedded"], summary["errors"], summary["failed"]) == (1, 1, 0)


def test_dupes_without_groups_says_so(accented: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "dupes", str(accented), "--threshold", "1")
    assert code == 0
    assert out == (
        "2 images: 0 groups of identical files, 0 groups of similar images (cosine >= 1.0)\n"
    )
    code, out = run(capsys, "dupes", str(accented), "--threshold", "1", "--json")
    assert json.loads(out)["groups"] == []


def test_similar_top_k_0_prints_an_empty_answer(
    accented: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    query = str(accented / "rocket.jpg")
    base = ["similar", query, "--in", str(accented), "--model", str(tiny_model), "--top-k", "0"]
    code, out = run(capsys, *base)
    assert code == 0 and out.startswith("no similar images in ")
    code, out = run(capsys, *base, "--json")
    assert code == 0 and json.loads(out)["results"] == []
