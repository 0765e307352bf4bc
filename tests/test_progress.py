"""The progress line appears only on a terminal and only for many images."""

from __future__ import annotations

import io

from dinoembed.common.progress import Progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_shown_on_a_terminal_for_many_images() -> None:
    stream = FakeTerminal()
    with Progress(25, stream=stream, every=0.0) as progress:
        for _ in range(25):
            progress.advance()
    text = stream.getvalue()
    assert "\r25/25 images" in text and text.endswith("\n")


def test_progress_is_silent_when_not_a_terminal_or_few_images() -> None:
    pipe, few = io.StringIO(), FakeTerminal()
    for stream, total in ((pipe, 100), (few, 3)):
        with Progress(total, stream=stream, every=0.0) as progress:
            progress.advance(total)
    assert pipe.getvalue() == "" and few.getvalue() == ""
