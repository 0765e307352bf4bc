"""docs/use.md's "Example session" is run, command by command, and its output compared
with the doc's, so the doc cannot drift from the tool again (issue 20).

The commands are the ``$ `` lines of the first ``console`` block under "## Example
session"; the lines after each are its expected stdout (stderr, the log lines, is left
out, as the doc says). The session runs in a temporary folder shown as ``/tmp/demo``,
with real photos made here (scikit-image samples) and the tiny stand-in model. In an
expected line ``…`` stands for any text (shortened digests). To rewrite the block from
a fresh run: ``UPDATE_DOCS=1 pytest tests/test_docs_session.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.conftest import sample_photos

DOC = Path(__file__).parent.parent / "docs" / "use.md"
SHOWN_AS = "/tmp/demo"
MARK = "@@dinoembed-docs-command@@"


def _block(text: str) -> tuple[int, int]:
    """Start and end offsets of the session's console block (inside the fences)."""
    section = text.index("## Example session")
    start = text.index("```console\n", section) + len("```console\n")
    return start, text.index("```\n", start)


def _commands(block: str) -> list[tuple[str, list[str]]]:
    commands: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        else:
            commands[-1][1].append(line)
    return commands


def _photos(root: Path) -> None:
    photos = sample_photos()
    folder = root / "photos"
    folder.mkdir()
    photos["astronaut"].save(folder / "astronaut.jpg", quality=90)
    photos["chelsea"].save(folder / "chelsea.jpg", quality=90)
    photos["chelsea"].resize((150, 100)).save(folder / "chelsea-thumb.png")
    photos["coffee"].save(folder / "coffee.jpg", quality=90)
    (folder / "coffee-copy.jpg").write_bytes((folder / "coffee.jpg").read_bytes())
    photos["rocket"].save(folder / "rocket.jpg", quality=90)
    (folder / "broken.jpg").write_bytes(b"this is no picture")
    crop = photos["chelsea"].crop((40, 20, 400, 280))
    crop.save(root / "query.webp", quality=80)
    assert isinstance(crop, Image.Image)
    # fixed ages, a minute apart in the order above (the keep reason shows the oldest's)
    start = 1_767_225_600  # 2026-01-01 00:00 UTC
    order = ["astronaut.jpg", "chelsea.jpg", "chelsea-thumb.png", "coffee.jpg"]
    order += ["coffee-copy.jpg", "rocket.jpg", "broken.jpg"]
    for minute, name in enumerate(order):
        os.utime(folder / name, (start + 60 * minute, start + 60 * minute))


def _run(root: Path, commands: list[str]) -> list[list[str]]:
    """Each command's stdout lines, the session run in one shell (exports carry over)."""
    script = "".join(f"echo {MARK}\n{command}\n" for command in commands)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DINOEMBED_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["XDG_CACHE_HOME"] = str(root / ".cache")
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = done.stdout.replace(str(root), SHOWN_AS)
    return [chunk.strip("\n").splitlines() for chunk in out.split(MARK + "\n")[1:]]


def _matches(expected: str, actual: str) -> bool:
    pattern = ".*?".join(re.escape(part) for part in expected.split("…"))
    return re.fullmatch(pattern, actual) is not None


def test_the_example_session_in_docs_use_md_runs_as_shown(tmp_path: Path) -> None:
    text = DOC.read_text()
    start, end = _block(text)
    commands = _commands(text[start:end])
    assert len(commands) >= 8
    root = tmp_path / "demo"
    root.mkdir()
    _photos(root)
    outputs = _run(root, [command for command, _ in commands])
    assert len(outputs) == len(commands)
    if os.environ.get("UPDATE_DOCS"):
        block = "".join(
            f"$ {command}\n" + "".join(f"{line}\n" for line in got)
            for (command, _), got in zip(commands, outputs, strict=True)
        )
        DOC.write_text(text[:start] + block + text[end:])
        return
    for (command, expected), got in zip(commands, outputs, strict=True):
        assert len(got) == len(expected), (command, got)
        for want, line in zip(expected, got, strict=True):
            assert _matches(want, line), (command, want, line)
